"""Does a checkpoint belong to the run being resumed? Configuration and classes compared.

``--resume`` continues a run with the recipe and data it was started with. A different recipe
(another run's folder, a changed ``--set``) or a changed class list would continue silently
with labels or hyper-parameters the weights were not trained for, or die in a size-mismatch
traceback; both fail here instead, with every difference named.

Keys that say where the data is, how it is loaded, how long to train, how often to log and
on which hardware may change: resuming on another machine, for more epochs, or in another
parallel mode is what ``--resume`` is for (:data:`MAY_CHANGE`). Everything else must match.
"""

from __future__ import annotations

from pathlib import Path

from verydeep.config import Config, config_from_dict, config_to_dict
from verydeep.errors import CheckpointError, UsageError
from verydeep.train.schedules import LRSchedule

MAY_CHANGE = frozenset({
    "description", "recipe",
    # where the data lives (the class list is compared instead) and how it is loaded
    "data.root", "data.train_dir", "data.val_dir", "data.val_labels", "data.val_synsets", "data.synset_names",
    "data.index_cache", "data.stats_file", "data.workers", "data.prefetch_factor", "data.pin_memory",
    "data.persistent_workers", "data.decode",
    # how long, how often, on what; what to do about non-finite losses
    "train.epochs", "train.max_iterations", "train.log_every", "train.plot", "train.tensorboard",
    "train.checkpoint_every_steps", "train.val_every_steps", "train.val_batch_size", "train.device",
    "train.amp", "train.channels_last", "train.compile", "train.cudnn_benchmark", "train.micro_batch_size",
    "train.nonfinite", "train.max_skipped_share",
})
MAY_CHANGE_SECTIONS = ("parallel.",)  # any parallel mode resumes from any other
SHOWN = 6  # differences named in the message


def _flat(config: dict) -> dict:
    out = {}
    for section, values in config.items():
        if isinstance(values, dict):
            out.update({f"{section}.{key}": value for key, value in values.items()})
        else:
            out[section] = values
    return out


def _normalized(saved: dict) -> dict:
    """The checkpoint's config with today's defaults for keys added since it was written."""
    try:
        return config_to_dict(config_from_dict(saved))
    except (UsageError, ValueError, TypeError):
        return saved  # keys this version does not know: compared as written, and named


def config_differences(saved: dict, current: Config) -> list[str]:
    """``key: checkpoint value -> value now`` for each key that must not change but did."""
    before, now = _flat(_normalized(saved)), _flat(config_to_dict(current))
    missing = object()
    out = []
    for key in sorted(before.keys() | now.keys()):
        if key in MAY_CHANGE or key.startswith(MAY_CHANGE_SECTIONS):
            continue
        a, b = before.get(key, missing), now.get(key, missing)
        if a != b:
            out.append(f"{key}: {'(absent)' if a is missing else repr(a)} -> {'(absent)' if b is missing else repr(b)}")
    return out


def _some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def class_differences(saved: list[str], current: list[str]) -> str | None:
    """What changed in the class list (count, names, order), or None."""
    if saved == current:
        return None
    gone = [c for c in saved if c not in set(current)]
    new = [c for c in current if c not in set(saved)]
    parts = [f"{len(saved)} classes in the checkpoint, {len(current)} in the data"] if len(saved) != len(current) else []
    parts += [f"not in the data: {_some(gone)}"] if gone else []
    parts += [f"new in the data: {_some(new)}"] if new else []
    if not parts:
        moved = [f"{a} at index {i} is now {b}" for i, (a, b) in enumerate(zip(saved, current)) if a != b]
        parts = [f"same classes, another order: {_some(moved)}"]
    return "; ".join(parts)


def check_resumable(path: Path, saved_config: dict, saved_classes: list[str], cfg: Config,
                    classes: list[str]) -> None:
    """CheckpointError naming what differs, when ``path`` is not this run's checkpoint."""
    problems = config_differences(saved_config, cfg)
    shown = problems[:SHOWN] + ([f"{len(problems) - SHOWN} more"] if len(problems) > SHOWN else [])
    classes_changed = class_differences(saved_classes, classes) if saved_classes else None
    if classes_changed:
        shown.insert(0, f"the training classes changed ({classes_changed})")
    if shown:
        raise CheckpointError(
            f"--resume: {path} does not fit this run: {'; '.join(shown)}. Resume with the run's own recipe "
            f"(--config {path.parent / 'config.yaml'}) and data, or start a new run in another --out "
            f"(--set model.weights={path} starts from its weights)")


def schedule_change(saved_config: dict, cfg: Config, step: int, steps_per_epoch: int) -> str | None:
    """What a changed length (``train.epochs``, ``train.max_iterations``) does to the resumed run's
    LR schedule, in a sentence; None when the length did not change. A cosine schedule is
    stretched or squeezed to the new length, so the LR at the resumed step jumps; the plateau
    rule and step schedules only end the run elsewhere."""
    try:
        saved = config_from_dict(saved_config)
    except (UsageError, ValueError, TypeError):
        return None  # keys this version does not know: check_resumable names them
    before, now = saved.train, cfg.train
    if (before.epochs, before.max_iterations) == (now.epochs, now.max_iterations):
        return None
    length = (f"train.epochs {before.epochs} -> {now.epochs}" if before.epochs != now.epochs else
              f"train.max_iterations {before.max_iterations} -> {now.max_iterations}")
    old, new = (LRSchedule(cfg.schedule, cfg.optim.lr, steps_per_epoch, c.epochs, c.max_iterations)
                for c in (before, now))
    text = f"resumed with {length}: the run now ends after {new.total_steps} steps instead of {old.total_steps}"
    if cfg.schedule.name != "cosine":
        return f"{text}; the {cfg.schedule.name} LR schedule does not depend on the run's length"
    how = "stretched" if new.total_steps > old.total_steps else "squeezed"
    pace = "more slowly" if how == "stretched" else "faster"
    lr = (f"the LR at step {step} jumps from {old.lr(step):.3g} to {new.lr(step):.3g}" if old.lr(step) != new.lr(step)
          else f"the LR at step {step} is {new.lr(step):.3g} either way, and decays {pace} from there")
    return (f"{text}; the cosine LR schedule is {how} to the new length: {lr} (a run trained that long from the "
            f"start would differ from this one)")
