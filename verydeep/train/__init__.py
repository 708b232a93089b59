"""Training: the loop, optimisers and schedules, checkpoints, metrics and plots.

The entry point is :func:`verydeep.train.engine.train`. This package's ``__init__`` imports
nothing, so the section config (``verydeep.train.config``) loads without the loop.
"""
