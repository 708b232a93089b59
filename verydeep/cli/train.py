"""``verydeep train``, ``verydeep plot`` and ``verydeep demo``."""

from __future__ import annotations

import argparse
from pathlib import Path

def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a VGG from a recipe (a packaged one by name, or a YAML file)")
    p.add_argument("--config", required=True,
                   help="recipe: a packaged name (verydeep recipes lists them, e.g. paper_A_S256) or a YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=0.001 (repeatable)")
    p.add_argument("--data", help="dataset folder with train/ and val/ (sets data.root)")
    p.add_argument("--out", help="run directory (default: runs/<recipe name>)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.set_defaults(func=run_train)

    p = sub.add_parser("plot", help="draw a run's loss, LR and error curves to a PNG")
    p.add_argument("run_dir")
    p.add_argument("--out", help="PNG path (default RUN_DIR/curves.png)")
    p.set_defaults(func=run_plot)

    p = sub.add_parser("demo", help="generate the demo data, train a narrow VGG on it, evaluate it")
    p.add_argument("--out", default="runs/demo", help="run directory")
    p.add_argument("--data", default="data/demo", help="where the demo dataset lives (made if missing)")
    p.add_argument("--config", default="demo", help="recipe name or YAML file (default: the demo recipe)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--resume", action="store_true")
    p.set_defaults(func=run_demo)


def _overrides(args) -> list[str]:
    extra = [f"data.root={args.data}"] if getattr(args, "data", None) else []
    return [*extra, *args.overrides]


def run_train(args: argparse.Namespace) -> int:
    from verydeep.config import load_config
    from verydeep.train.loop import train

    cfg = load_config(args.config, _overrides(args))
    out = args.out or str(Path("runs") / Path(args.config).stem)
    result = train(cfg, out, resume=args.resume)
    if result.is_main:  # one summary line per run, not one per torchrun process
        print(f"{result.stopped_because}; best val top-1 error: "
              f"{'n/a' if result.best_top1_error is None else f'{result.best_top1_error:.2f}%'}; run: {result.run_dir}")
    return 0


def run_plot(args: argparse.Namespace) -> int:
    from verydeep.train.plot import plot_run

    print(plot_run(args.run_dir, args.out))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from verydeep.demo import run_demo as demo

    return demo(out=args.out, data=args.data, config=args.config, overrides=args.overrides, resume=args.resume)
