"""Training: the loop, optimisers and schedules, checkpoints, metrics and plots.

The entry point is :func:`verydeep.train.loop.train`: :mod:`~verydeep.train.setup` builds the
run, :mod:`~verydeep.train.step` takes one optimiser step, :mod:`~verydeep.train.state` is
where the run stands, :mod:`~verydeep.train.checkpoint` turns it into a checkpoint's ``train``
part and back (the file itself is :mod:`verydeep.checkpoint`'s). This package's ``__init__``
imports nothing, so the section config (``verydeep.train.config``) loads without the loop.
"""
