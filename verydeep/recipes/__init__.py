"""The recipes: one YAML file per training setting (the paper's nets and scales, the modern
variants, the demo). Found by name (``verydeep train --config paper_A_S256``) through
``importlib.resources``, so they work from an installed package as from a checkout."""
