"""Run metrics: ``metrics.jsonl`` (one JSON object per line), TensorBoard, the training loss meter."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)


class MetricsLog:
    """Appends records to RUN_DIR/metrics.jsonl (flushed per line) and mirrors scalars to
    TensorBoard. Only rank 0 constructs one with ``enabled=True``."""

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._file = open(self.path, "a", buffering=1) if enabled else None
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
            except ImportError as e:  # tensorboard is a dependency; keep training if it breaks
                log.warning("TensorBoard disabled: %s", e)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        self._file.write(json.dumps(record) + "\n")
        if self._tb is not None:
            kind = record.get("kind", "train")
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch", "time"):
                    self._tb.add_scalar(f"{kind}/{key}", value, record.get("step", 0))

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self._tb is not None:
            self._tb.add_scalar(tag, value, step)

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class TrainMeter:
    """One epoch's training figures: the mean loss since the last report, and images/s since
    the epoch began. Losses are summed on the device, so a step costs no host sync; a report
    reads the sum once."""

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device)
        self.losses = 0
        self.images = 0
        self.t0 = time.perf_counter()

    def add(self, loss: torch.Tensor | None, images: int) -> None:
        """One step's loss (None: a skipped step, which counts only its images)."""
        if loss is not None:
            self.loss_sum += loss.detach()
            self.losses += 1
        self.images += images

    def report(self) -> tuple[float, float]:
        """(mean loss since the last report, images/s since the epoch began); starts a new loss window."""
        mean = (self.loss_sum / max(1, self.losses)).item()
        self.loss_sum.zero_()
        self.losses = 0
        return mean, self.images / (time.perf_counter() - self.t0)


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                # a run killed mid-line leaves a partial last line; anything else is corruption
                if n == len(path.read_text().splitlines()):
                    continue
                raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
    return out
