"""``verydeep train``, ``verydeep plot`` and ``verydeep demo``."""

from __future__ import annotations

import argparse
from pathlib import Path

from verydeep.cli.vocabulary import add_data, add_out, add_training, training_overrides


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a VGG from a recipe (a packaged one by name, or a YAML file)")
    add_training(p)
    add_data(p, help="data.root: dataset folder (train/ and val/, or ImageNet's layouts)")
    add_out(p, "the run (config, checkpoints, metrics, curves)", default_text="runs/<recipe name>")
    _add_run_folder_modes(p)
    p.set_defaults(func=run_train)

    p = sub.add_parser("plot", help="draw a run's loss, LR and error curves (curves.png)")
    p.add_argument("run_dir", metavar="RUN", help="run folder (reads its metrics.jsonl and config.yaml)")
    add_out(p, "curves.png", default_text="the run folder")
    p.set_defaults(func=run_plot)

    p = sub.add_parser("demo", help="generate the demo data, train a narrow VGG on it, evaluate it")
    add_training(p, config_default="demo")
    add_data(p, default="data/demo", help="where the demo dataset lives (made if missing; default: %(default)s)")
    add_out(p, "the run, as train does, and its eval.json", default="runs/demo")
    _add_run_folder_modes(p)
    p.set_defaults(func=run_demo)


def _add_run_folder_modes(p: argparse.ArgumentParser) -> None:
    """What to do with a run already in --out besides --resume (verydeep.train.run_folder)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--auto-resume", action="store_true",
                   help="continue the run in --out if it has a last.pt, else start it (for job scripts rerun after "
                        "preemption); plain --resume fails when there is nothing to resume")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (deletes its checkpoints, metrics and curves); without "
                        "it, a folder that holds a run is refused")


def _overrides(args) -> list[str]:
    return training_overrides(args)


def run_train(args: argparse.Namespace) -> int:
    from verydeep.config import load_config
    from verydeep.train.loop import train

    cfg = load_config(args.config, _overrides(args))
    out = args.out or str(Path("runs") / Path(args.config).stem)
    resume = "auto" if args.auto_resume else args.resume
    result = train(cfg, out, resume=resume, overwrite=args.overwrite)
    if result.is_main:  # one summary line per run, not one per torchrun process
        print(f"{result.stopped_because}; best val top-1 error: "
              f"{'n/a' if result.best_top1_error is None else f'{result.best_top1_error:.2f}%'}; run: {result.run_dir}")
    return 0


def run_plot(args: argparse.Namespace) -> int:
    from verydeep.train.plot import plot_run

    out = None
    if args.out:
        out = Path(args.out) / "curves.png"
        out.parent.mkdir(parents=True, exist_ok=True)
    print(plot_run(args.run_dir, out))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from verydeep.demo import run_demo as demo

    return demo(out=args.out, data=args.data, config=args.config, overrides=_overrides(args),
                resume="auto" if args.auto_resume else args.resume, overwrite=args.overwrite)
