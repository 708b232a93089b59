"""Run metrics: ``metrics.jsonl`` (one JSON object per line), TensorBoard, progress display."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from tqdm import tqdm

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


class Progress:
    """A tqdm bar on a terminal, plain log lines otherwise (files, CI); silent off rank 0."""

    def __init__(self, total: int, desc: str, enabled: bool = True, initial: int = 0, every: int = 10) -> None:
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.every = max(1, every)
        self.n = initial
        self.total = total
        self.desc = desc
        self._bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False) if self.tty else None

    def update(self, **postfix) -> None:
        self.n += 1
        if self._bar is not None:
            self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(1)
        elif self.enabled and (self.n % self.every == 0 or self.n == self.total):
            text = " ".join(f"{k}={v}" for k, v in postfix.items())
            print(f"{self.desc} {self.n}/{self.total} {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
