"""The chain planner: which runs the reproduction needs, in dependency order, and where each
stands (finished, interrupted, not started), so the command can be re-run after any crash.

A run's dependency is the net its recipe starts from (``model.init_from`` or
``model.weights``, e.g. ``runs/paper_A_S256/best.pt``): the folder name there is the run it
waits for, and the plan points the link at that run's ``best.pt`` under the output folder.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from verydeep.checkpoint import load
from verydeep.config import Config, load_config
from verydeep.reproduce.profiles import PAPER_CHAIN, Profile, column_of, net_of

DONE, INTERRUPTED, NEW = "finished", "interrupted: resume", "to train"
LINKS = ("init_from", "weights")  # model keys through which a recipe starts from another net


@dataclass
class PlannedRun:
    name: str  # the recipe's name, also the run folder's under the output folder
    net: str  # the paper's letter: A, A-LRN, B, C, D, E
    column: str  # the paper's training scale: S256, S384 or multiscale
    run_dir: Path
    depends_on: str | None  # the run whose best.pt this one starts from
    link: str | None  # "model.init_from" or "model.weights"
    overrides: list[str] = field(default_factory=list)  # on top of the recipe, in order
    status: str = NEW

    def config(self) -> Config:
        return load_config(self.name, self.overrides)


def recipe_dependency(cfg: Config) -> tuple[str | None, str | None]:
    """(run the recipe starts from, the model key naming it), or (None, None) from scratch."""
    for key in LINKS:
        path = getattr(cfg.model, key)
        if path:
            return Path(path).parent.name, f"model.{key}"
    return None, None


def run_status(run_dir: Path) -> str:
    """Finished (its last.pt says so), interrupted (a last.pt to resume) or not started."""
    last = run_dir / "last.pt"
    if not last.is_file():
        return NEW
    # the one checked read: a damaged or diverged last.pt is a one-line error here, not at its resume
    return DONE if load(last).finished else INTERRUPTED


def dependency_order(names: Sequence[str], depends: dict[str, str | None]) -> list[str]:
    """``names`` with every run after the one it starts from, otherwise in the given order."""
    order: list[str] = []
    placed: set[str] = set()

    def place(name: str, path: tuple[str, ...]) -> None:
        if name in placed:
            return
        if name in path:
            raise ValueError(f"the recipes start from each other in a cycle: {' -> '.join(path + (name,))}")
        parent = depends.get(name)
        if parent is not None:
            if parent not in depends:
                raise ValueError(f"{name} starts from {parent}, which is not a run of the chain")
            place(parent, path + (name,))
        placed.add(name)
        order.append(name)

    for name in names:
        place(name, ())
    return order


def needed_runs(wanted: Iterable[str], depends: dict[str, str | None]) -> set[str]:
    """``wanted`` and every run they start from, transitively."""
    out: set[str] = set()
    for name in wanted:
        while name is not None and name not in out:
            out.add(name)
            name = depends.get(name)
    return out


def plan_chain(profile: Profile, data_root: str | Path, out_dir: str | Path, wanted: Iterable[str] | None = None,
               chain: Sequence[str] = PAPER_CHAIN) -> list[PlannedRun]:
    """The runs to train for ``wanted`` (default: the whole chain), in dependency order, each
    with its overrides (the profile's, ``data.root``, the link to its parent's ``best.pt``)
    and its status."""
    out_dir = Path(out_dir)
    recipes = {name: load_config(name) for name in chain}
    depends = {name: recipe_dependency(cfg)[0] for name, cfg in recipes.items()}
    keep = needed_runs(chain if wanted is None else wanted, depends)
    plan = []
    for name in dependency_order([n for n in chain if n in keep], depends):
        parent, link = recipe_dependency(recipes[name])
        overrides = [*profile.run_overrides(name, recipes[name]), f"data.root={data_root}"]
        if parent is not None:
            overrides.append(f"{link}={out_dir / parent / 'best.pt'}")
        run = PlannedRun(name=name, net=net_of(name), column=column_of(name), run_dir=out_dir / name,
                         depends_on=parent, link=link, overrides=overrides)
        run.status = run_status(run.run_dir)
        plan.append(run)
    return plan
