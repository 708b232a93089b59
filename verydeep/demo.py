"""``make demo``: generate the embedded demo data, train a narrow VGG on it, evaluate it."""

from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)


def run_demo(out: str = "runs/demo", data: str = "data/demo", config: str | None = None,
             overrides: list[str] | None = None, resume: bool = False) -> int:
    from verydeep.config import load_config
    from verydeep.data import make_demo_dataset
    from verydeep.train import train

    data_dir = Path(data)
    if not (data_dir / "train").is_dir():
        t = time.perf_counter()
        make_demo_dataset(data_dir, seed=0)
        log.info("demo data written to %s in %.1fs", data_dir, time.perf_counter() - t)
    if config is None:
        config = str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    cfg = load_config(config, [f"data.root={data_dir}", *(overrides or [])])
    t = time.perf_counter()
    result = train(cfg, out, resume=resume)
    minutes = (time.perf_counter() - t) / 60
    print(f"\ntrained in {minutes:.1f} min: {result.stopped_because}")
    print(f"best val top-1 error {result.best_top1_error:.2f}% (single crop, Q={cfg.data.eval_scale})")
    print(f"checkpoints: {result.run_dir / 'best.pt'}, {result.run_dir / 'last.pt'}")
    print(f"metrics: {result.run_dir / 'metrics.jsonl'}; curves: {result.run_dir / 'curves.png'}")
    return 0
