"""``make demo``: generate the embedded demo data, train a narrow VGG on it, evaluate it."""

from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)

# Images per evaluation batch: whole-image reads of the demo's ~100-px images are grouped by size,
# and a larger batch amortises the per-batch work of dense and multi-crop evaluation on a CPU.
EVAL_BATCH = 64


def run_demo(out: str = "runs/demo", data: str = "data/demo", config: str = "demo",
             overrides: list[str] | None = None, resume: bool | str = False, overwrite: bool = False) -> int:
    from verydeep.config import load_config
    from verydeep.models.registry import resolve

    data_dir = Path(data)
    cfg = load_config(config, [f"data.root={data_dir}", *(overrides or [])])
    resolve(cfg.model.name)  # a typo in the net's name: before minutes of making data
    if not (data_dir / "train").is_dir():
        from verydeep.data import make_demo_dataset

        t = time.perf_counter()
        make_demo_dataset(data_dir, seed=0)
        log.info("demo data written to %s in %.1fs", data_dir, time.perf_counter() - t)

    from verydeep.train.loop import train

    t = time.perf_counter()
    result = train(cfg, out, resume=resume, overwrite=overwrite)
    train_min = (time.perf_counter() - t) / 60
    print(f"\ntrained in {train_min:.1f} min: {result.stopped_because}; best val top-1 error "
          f"{result.best_top1_error:.2f}% (single centre crop, Q={cfg.data.eval_scale})")

    # The paper's test protocols on the best checkpoint, single- and multi-scale (Sec. 4).
    from verydeep.data import discover
    from verydeep.evaluate import PROTOCOLS, EvalOptions, RowSpec, evaluate_rows, load_eval_net, resolve_scales
    from verydeep.evaluate.report import format_table, report_header, write_report
    from verydeep.runtime import build_runtime

    t = time.perf_counter()
    net = load_eval_net(result.run_dir)
    splits = discover(cfg.data)
    rows = [RowSpec(protocol, tuple(resolve_scales(net.data, which)))
            for which in ("single", "multi") for protocol in PROTOCOLS]
    options = EvalOptions(batch_size=EVAL_BATCH, device=cfg.train.device, amp=cfg.train.amp)
    given = [str(result.run_dir)]
    runtime = build_runtime(cfg.train.device, cfg.train.amp, cfg.train.channels_last)
    header = report_header([net], given, data_root=cfg.data.root, images=len(splits.val),
                           scales=["single", "multi"], options=options, device=runtime.device)
    write_report(result.run_dir / "eval.json", header, [], complete=False, given=given)
    evaluation = evaluate_rows([net], cfg.data, splits.val, rows, classes=splits.classes, options=options,
                               runtime=runtime)
    eval_min = (time.perf_counter() - t) / 60
    print()
    print(format_table(evaluation.rows, title=f"demo val set: {len(splits.val)} images, best checkpoint",
                       flip=options.flip))
    write_report(result.run_dir / "eval.json", header, evaluation.rows, given=given)
    print(f"\nevaluated in {eval_min:.1f} min; table: {result.run_dir / 'eval.json'}")
    print(f"checkpoints: {result.run_dir / 'best.pt'}, {result.run_dir / 'last.pt'}")
    print(f"metrics: {result.run_dir / 'metrics.jsonl'}; curves: {result.run_dir / 'curves.png'}")
    return 0
