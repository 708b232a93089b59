"""``curves.png``: a run's loss, learning rate and validation error against epochs.

Three panels over a shared epoch axis (fractional: step / steps per epoch, so epoch 1, the
first, ends at 1; epochs are numbered from 1 as in the log and metrics.jsonl): training and
validation loss; the learning rate; validation top-1 and top-5 error, with the moving average
of the weights (EMA) when the run kept one. The checkpoint ``best.pt`` holds is marked in the
error and loss panels. The title says net, recipe and data (from the run's ``config.yaml``).

The LR axis is logarithmic for step-wise schedules (the plateau rule, step, multistep: each
drop one equal step down) and linear for continuous ones (warmup, cosine), whose last steps
would otherwise stretch a log axis over many decades on their way to 0.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from verydeep.train.metrics import read_metrics

# An LR curve with at most this many distinct values is step-wise: drawn on a log axis.
STEPWISE_LR_VALUES = 12


def steps_per_epoch(records: list[dict]) -> float | None:
    """Optimiser steps per epoch, from the end-of-epoch records (a completed epoch e, numbered
    from 1, ends at step e x steps per epoch; an epoch cut short by the iteration cap ends
    earlier). Files written before epochs were numbered from 1 hold an epoch 0: read as such."""
    ends = [r for r in records if r.get("kind") == "epoch" and r.get("step")]
    first = 0 if any(r["epoch"] == 0 for r in ends) else 1
    per_epoch = [r["step"] / (r["epoch"] + 1 - first) for r in ends]
    return max(per_epoch) if per_epoch else None


def best_record(val: list[dict]) -> dict | None:
    """The validation ``best.pt`` was written at: the first lowest end-of-epoch top-1 error."""
    ends = [r for r in val if r.get("tag", "epoch") == "epoch"]
    return min(ends, key=lambda r: r["val_top1_error"]) if ends else None


def lr_axis_scale(lrs: list[float]) -> str:
    """"log" for a step-wise schedule (a few values, all > 0), else "linear"."""
    return "log" if lrs and min(lrs) > 0 and len(set(lrs)) <= STEPWISE_LR_VALUES else "linear"


def _width(width: float) -> str:
    return f"1/{round(1 / width)}" if width < 1 and abs(1 / width - round(1 / width)) < 1e-6 else f"{width:g}"


def run_title(run_dir: Path) -> str:
    """"net, recipe, data" from the run's config.yaml (the folder's name without one)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return run_dir.name
    cfg = yaml.safe_load(path.read_text()) or {}
    model, data = cfg.get("model") or {}, cfg.get("data") or {}
    net = str(model.get("name", "?"))
    if model.get("width", 1.0) != 1.0:
        net += f" at width {_width(model['width'])}"
    scales = f"S={data.get('scale_min')}" + (f"-{data['scale_max']}" if data.get("scale_max") != data.get("scale_min")
                                             else "")
    recipe = cfg.get("recipe") or "none (defaults and --set)"
    return f"{net}  |  recipe {recipe}  |  data {data.get('root') or data.get('train_dir') or '?'} ({scales})"


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw the run's curves to ``out`` (default ``RUN_DIR/curves.png``); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    # a window whose every step was skipped (non-finite loss) has no loss to draw
    train = [r for r in records if r.get("kind") == "train" and r.get("loss") is not None]
    val = [r for r in records if r.get("kind") == "val"]
    per_epoch = steps_per_epoch(records)
    unit = "epoch" if per_epoch else "step"

    def x(rs: list[dict]) -> list[float]:
        return [r["step"] / per_epoch if per_epoch else r["step"] for r in rs]

    best = best_record(val)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    _loss_panel(axes[0], train, val, best, x)
    _lr_panel(axes[1], train, x)
    _error_panel(axes[2], val, best, x)
    for a in axes:
        a.set_xlabel(unit)
        a.grid(alpha=0.3)
    fig.suptitle(run_title(run_dir))
    fig.tight_layout()
    out = Path(out) if out else run_dir / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _loss_panel(ax, train, val, best, x) -> None:
    if train:
        ax.plot(x(train), [r["loss"] for r in train], lw=1, label="train (mean since the last point)")
    if val:
        ax.plot(x(val), [r["val_loss"] for r in val], "o-", ms=3, label="val")
    if best:
        ax.plot(x([best]), [best["val_loss"]], "*", ms=14, color="tab:red", label="best.pt")
    ax.set(title="loss", ylabel="cross-entropy")
    if train or val:
        ax.legend(fontsize=8)


def _lr_panel(ax, train, x) -> None:
    lrs = [r["lr"] for r in train]
    if lrs:
        ax.plot(x(train), lrs)
        if lr_axis_scale(lrs) == "log":
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.set(title="learning rate", ylabel="LR")


def _error_panel(ax, val, best, x) -> None:
    if val:
        ax.plot(x(val), [r["val_top1_error"] for r in val], "o-", ms=3, label="top-1")
        ax.plot(x(val), [r["val_top5_error"] for r in val], "s-", ms=3, label="top-5")
        ema = [r for r in val if "ema_val_top1_error" in r]
        if ema:
            ax.plot(x(ema), [r["ema_val_top1_error"] for r in ema], "--", label="top-1, EMA of the weights")
    if best:
        ax.plot(x([best]), [best["val_top1_error"]], "*", ms=14, color="tab:red",
                label=f"best.pt: {best['val_top1_error']:.2f}% (epoch {best['epoch']})")
        ax.annotate(f"{best['val_top1_error']:.2f}%", (x([best])[0], best["val_top1_error"]),
                    textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set(title="validation error (single centre crop)", ylabel="error (%)")
    if val:
        ax.legend(fontsize=8)
