"""Training: the loop, optimisers and schedules, checkpoints, metrics and plots."""

__all__ = ["train", "TrainResult", "NonFiniteLossError"]


def __getattr__(name):  # lazy: importing a submodule (e.g. checkpoint) does not load the engine
    if name in __all__:
        from verydeep.train import engine

        return getattr(engine, name)
    raise AttributeError(name)
