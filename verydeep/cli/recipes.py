"""``verydeep recipes``: the packaged recipes, a line each; or one recipe in full."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recipes", help="list the packaged recipes (train --config NAME), or print one")
    p.add_argument("name", nargs="?", help="a packaged recipe to print in full")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from verydeep.config import list_recipes, packaged_recipe

    if args.name:
        print(packaged_recipe(args.name).read_text(), end="")
        return 0
    recipes = list_recipes()
    width = max(map(len, recipes))
    for name, description in recipes.items():
        print(f"{name:<{width}}  {description}")
    return 0
