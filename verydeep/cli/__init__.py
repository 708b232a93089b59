"""The ``verydeep`` command: one thin layer over the package's functions."""
