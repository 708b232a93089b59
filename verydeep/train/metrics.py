"""Run metrics: ``metrics.jsonl`` (one JSON object per line), TensorBoard, the training loss meter."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)


# metrics.jsonl key -> (TensorBoard series, tag). A series is a sub-folder of RUN_DIR/tensorboard
# (a "run" in TensorBoard's UI): equal tags of different series share one chart, so train and
# val loss are drawn together under "loss", as are val and EMA errors under "top1_error".
TENSORBOARD_TAGS = {
    ("train", "loss"): ("train", "loss"),
    ("train", "images_per_s"): ("train", "images_per_s"),
    ("train", "skipped"): ("train", "skipped_steps"),
    ("val", "val_loss"): ("val", "loss"),
    ("val", "val_top1_error"): ("val", "top1_error"),
    ("val", "val_top5_error"): ("val", "top5_error"),
    ("val", "val_bad_images"): ("val", "bad_images"),
    ("val", "val_nonfinite_images"): ("val", "nonfinite_images"),
    ("val", "ema_val_loss"): ("val_ema", "loss"),
    ("val", "ema_val_top1_error"): ("val_ema", "top1_error"),
    ("val", "ema_val_top5_error"): ("val_ema", "top5_error"),
    ("epoch", "bad_files"): ("train", "bad_files"),
}


class MetricsLog:
    """Appends records to RUN_DIR/metrics.jsonl (flushed per line) and mirrors their figures to
    TensorBoard (:data:`TENSORBOARD_TAGS`; the LR once, per step, through :meth:`scalar`).
    Only rank 0 constructs one with ``enabled=True``."""

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._file = open(self.path, "a", buffering=1) if enabled else None
        self._tb_dir = Path(run_dir) / "tensorboard" if enabled and tensorboard else None
        self._writers: dict = {}

    def _writer(self, series: str):
        if self._tb_dir is None:
            return None
        if series not in self._writers:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # tensorboard is a dependency; keep training if it breaks
                log.warning("TensorBoard disabled: %s", e)
                self._tb_dir = None
                return None
            self._writers[series] = SummaryWriter(log_dir=str(self._tb_dir / series))
        return self._writers[series]

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        self._file.write(json.dumps(record) + "\n")
        if self._tb_dir is None:
            return
        kind = record.get("kind", "train")
        for key, value in record.items():
            target = TENSORBOARD_TAGS.get((kind, key))
            if target and isinstance(value, (int, float)) and (writer := self._writer(target[0])):
                writer.add_scalar(target[1], value, record.get("step", 0))

    def scalar(self, tag: str, value: float, step: int, series: str = "train") -> None:
        """One figure straight to TensorBoard (e.g. the LR at every step), not to metrics.jsonl."""
        if writer := self._writer(series):
            writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


class TrainMeter:
    """One epoch's training figures: the mean loss since the last report, images/s since the
    epoch began, and the steps not applied (a non-finite loss or gradient dropped the update,
    or the update left non-finite weights: their status, ``verydeep.train.nonfinite``).

    A step costs no host sync: losses and statuses stay on the device, the applied steps'
    losses summed there, and are kept for the next read-back, which fetches the whole window
    at once."""

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device)
        self.losses = 0  # applied steps' losses in the sum, counted as they are read back
        self.images = 0
        self.t0 = time.perf_counter()
        self._unread: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (step, loss, status) not yet read back
        self.epoch_loss_sum, self.epoch_losses = 0.0, 0  # every report's window, for the epoch's line

    def add(self, step: int, loss: torch.Tensor, images: int, status: torch.Tensor | None = None) -> None:
        """Step ``step``'s batch-mean loss, its status (0: applied; None: unchecked, taken as
        applied unless the loss is non-finite) and its images."""
        loss = loss.detach()
        if status is None:
            status = (~torch.isfinite(loss)).to(loss.dtype)
        applied = (status == 0) & torch.isfinite(loss)
        self.loss_sum += torch.where(applied, loss, 0.0)
        self._unread.append((step, loss, status))
        self.images += images

    def take_skipped(self) -> list[tuple[int, float, int]]:
        """(step, loss, status) of the steps not applied among those added since the last
        call: one host read."""
        if not self._unread:
            return []
        values = torch.stack([torch.stack([loss.double(), status.double().to(loss.device)])
                              for _, loss, status in self._unread]).tolist()
        skipped = [(step, loss, int(status)) for (step, _, _), (loss, status) in zip(self._unread, values)
                   if status]
        self.losses += len(values) - len(skipped)
        self._unread = []
        return skipped

    def report(self) -> tuple[float | None, float, list[tuple[int, float, int]]]:
        """(mean loss of the applied steps since the last report, None if every one was
        skipped; images/s since the epoch began; the steps not applied, not taken yet); starts
        a new loss window."""
        skipped = self.take_skipped()
        total = self.loss_sum.item() if self.losses else 0.0
        mean = total / self.losses if self.losses else None
        self.epoch_loss_sum += total
        self.epoch_losses += self.losses
        self.loss_sum.zero_()
        self.losses = 0
        return mean, self.images / (time.perf_counter() - self.t0), skipped

    def epoch_figures(self) -> tuple[float | None, float, float]:
        """(mean finite loss over the windows reported this epoch, None if none; images/s and
        seconds since the epoch began): the epoch's line in the log."""
        seconds = time.perf_counter() - self.t0
        loss = self.epoch_loss_sum / self.epoch_losses if self.epoch_losses else None
        return loss, self.images / seconds, seconds


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
