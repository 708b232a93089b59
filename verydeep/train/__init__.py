"""Training: the loop, optimisers and schedules, checkpoints, metrics and plots.

The entry point is :func:`verydeep.train.loop.train`: :mod:`~verydeep.train.setup` builds the
run, :mod:`~verydeep.train.step` takes one optimiser step, :mod:`~verydeep.train.state` is
where the run stands, :mod:`~verydeep.train.checkpoint` writes and reads it. This package's
``__init__`` imports nothing, so the section config (``verydeep.train.config``) loads without
the loop.
"""
