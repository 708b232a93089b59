"""``verydeep reproduce``: the paper's chain of nets trained in dependency order, the evaluations
of its Tables 3-6, and a report with our numbers next to the paper's.

- :mod:`~verydeep.reproduce.profiles`: what to run: ``imagenet`` (the paper's recipes as they
  are) and ``mini`` (the same chain narrowed and shrunk for a CPU, every departure named).
- :mod:`~verydeep.reproduce.chain`: the chain planner: which runs, in which order, which are
  finished, interrupted or still to start.
- :mod:`~verydeep.reproduce.estimate`: GPU-hours per run from measured throughput.
- :mod:`~verydeep.reproduce.tables`: the paper's tables (its numbers, their layout) and the
  evaluations that fill them; :mod:`~verydeep.reproduce.findings`: the paper's findings,
  checked on our numbers.
- :mod:`~verydeep.reproduce.runner`: trains and evaluates what the plan says;
  :mod:`~verydeep.reproduce.report`: report.md, report.json and the figure.

Training goes through :func:`verydeep.train.loop.train` and evaluation through
:func:`verydeep.evaluate.evaluate_rows`, the functions behind ``verydeep train`` and
``verydeep eval``.
"""
