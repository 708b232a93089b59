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


def run_folder_and_recipe(args: argparse.Namespace) -> tuple[Path, str | Path]:
    """The run folder (``--resume RUN_DIR`` or ``--out``) and the recipe to load.

    A resumed run continues with its own ``config.yaml`` (the recipe and every override of its
    first start), plus the overrides given now; ``--config``, if given, must name the run's
    recipe. ``--resume FILE`` (torchvision's spelling, a checkpoint) stands for its folder."""
    from verydeep.errors import RunFolderError, UsageError

    given = None if args.resume in (True, False) else Path(args.resume)
    if given is not None and given.is_file():
        if given.name != "last.pt":
            raise UsageError(f"--resume {given}: a run continues from its folder's last.pt; give the run folder "
                             f"(--resume {given.parent}), or start from these weights with --set model.weights={given}")
        given = given.parent
    if given is not None and args.out and Path(args.out) != given:
        raise UsageError(f"--resume {given} and --out {args.out}: two run folders; give one")
    out = given or (Path(args.out) if args.out else None)
    if out is None and args.config is not None:
        out = Path("runs") / Path(args.config).stem
    if out is None:
        raise UsageError("no recipe: give --config RECIPE (`verydeep recipes` lists them), or --resume RUN_DIR "
                         "to continue a run")
    stored = out / "config.yaml"
    if stored.is_file() and (args.resume or (args.auto_resume and (out / "last.pt").is_file())):
        _check_same_recipe(args.config, stored)
        return out, stored
    if args.config is None:
        if args.resume:
            raise RunFolderError(f"--resume: nothing to resume in {out} (no config.yaml); give the run folder "
                                 f"of an earlier `verydeep train`, or start one with --config RECIPE")
        raise UsageError(f"no recipe for a new run in {out}: give --config RECIPE (`verydeep recipes` lists them)")
    return out, args.config


def _check_same_recipe(config: str | None, stored: Path) -> None:
    """UsageError when ``--config`` names another recipe than the run in ``stored`` was trained with."""
    import yaml

    from verydeep.errors import UsageError

    if config is None:
        return
    recipe = (yaml.safe_load(stored.read_text()) or {}).get("recipe") or ""
    name = Path(config).name.removesuffix(".yaml")
    if recipe and name != recipe:
        raise UsageError(f"--config {config}: {stored.parent} was trained with the recipe {recipe!r}; drop --config "
                         f"to continue it with its own {stored}")


def run_train(args: argparse.Namespace) -> int:
    from verydeep.config import load_config
    from verydeep.train.start_check import check_start

    out, recipe = run_folder_and_recipe(args)
    cfg = load_config(recipe, _overrides(args))
    splits = check_start(cfg)  # a typo in the net or the data path: answered before torch loads

    from verydeep.train.loop import train

    resume = "auto" if args.auto_resume else bool(args.resume)
    result = train(cfg, out, resume=resume, overwrite=args.overwrite, splits=splits)
    if result.is_main:  # one summary line per run, not one per torchrun process
        print(f"{result.stopped_because}; best val top-1 error: "
              f"{'n/a' if result.best_top1_error is None else f'{result.best_top1_error:.2f}%'}; run: {result.run_dir}")
    return 0


def run_plot(args: argparse.Namespace) -> int:
    if not (Path(args.run_dir) / "metrics.jsonl").is_file():  # answered before torch and matplotlib load
        raise FileNotFoundError(f"no metrics.jsonl in {args.run_dir}")
    from verydeep.train.plot import plot_run

    out = None
    if args.out:
        out = Path(args.out) / "curves.png"
        out.parent.mkdir(parents=True, exist_ok=True)
    print(plot_run(args.run_dir, out))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from verydeep.demo import run_demo as demo

    out = args.out if args.resume in (True, False) else args.resume  # --resume RUN_DIR: the run to continue
    return demo(out=out, data=args.data, config=args.config, overrides=_overrides(args),
                resume="auto" if args.auto_resume else bool(args.resume), overwrite=args.overwrite)
