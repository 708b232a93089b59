"""Training: the loop, optimisers and schedules, checkpoints, metrics and plots.

The entry point is :func:`verydeep.train.loop.train`: :mod:`~verydeep.train.setup` builds the
run, :mod:`~verydeep.train.step` takes one optimiser step, :mod:`~verydeep.train.state` is
where the run stands, :mod:`~verydeep.train.checkpoint` turns it into a checkpoint's ``train``
part and back (the file itself is :mod:`verydeep.checkpoint`'s). Its sections of the run
configuration (``optim``, ``schedule``, ``train``) live in :mod:`verydeep.training_config`:
this package takes the whole configuration, so they cannot live inside it without a cycle
between the packages.
"""
