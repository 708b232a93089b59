"""PNG of a run's curves: training loss, learning rate, val top-1/top-5 error."""

from __future__ import annotations

from pathlib import Path

from verydeep.train.metrics import read_metrics


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, label="train")
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="val")
    ax.set(title="loss", xlabel="step")
    ax.legend()
    ax = axes[1]
    if train:
        ax.plot([r["step"] for r in train], [r["lr"] for r in train])
        if all(r["lr"] > 0 for r in train):
            ax.set_yscale("log")
    ax.set(title="learning rate", xlabel="step")
    ax = axes[2]
    if val:
        steps = [r["step"] for r in val]
        ax.plot(steps, [r["val_top1_error"] for r in val], "o-", label="top-1")
        ax.plot(steps, [r["val_top5_error"] for r in val], "s-", label="top-5")
        ax.legend()
    ax.set(title="val error (%)", xlabel="step")
    for a in axes:
        a.grid(alpha=0.3)
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = Path(out) if out else run_dir / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
