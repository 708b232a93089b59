"""Run configuration: one dataclass per concern, composed here; YAML in, YAML out.

A recipe (``verydeep/recipes/*.yaml``, found by name or as a path) names only what differs from the defaults, which live in the
section dataclasses (``verydeep.models.config``, ``verydeep.data.config``,
``verydeep.training_config``, ``verydeep.parallel.config``). Every value can be overridden with
``--set section.key=value`` (the value is parsed as YAML). Unknown keys and wrong types are
rejected with the key named.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import logging
import re
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from verydeep.data.config import DataConfig
from verydeep.errors import UsageError
from verydeep.models.config import ModelConfig
from verydeep.parallel.config import ParallelConfig
from verydeep.training_config import OptimConfig, ScheduleConfig, TrainConfig


RECIPES_PACKAGE = "verydeep.recipes"  # one YAML per recipe, shipped inside the package


class ConfigError(UsageError):
    """A bad recipe or override; the message names the key."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    # Free text: which paper setting the recipe reproduces (section, table).
    description: str = ""
    # The recipe's name (a packaged recipe's, or a YAML file's stem), set by load_config: runs,
    # plots and reports say which recipe they come from. Informational only.
    recipe: str = ""


def _check(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} does not fit {tp}")
    if origin is list:
        (inner,) = typing.get_args(tp)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_check(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads 1e-3 (no dot) as a string; accept what float() accepts
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if is_dataclass(tp):
        return _build(tp, value, key)
    raise ConfigError(f"{key}: unsupported config type {tp}")


def _build(cls: type, data: Any, prefix: str = "") -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"unknown config key {where!r}; known keys here: {', '.join(sorted(names))}")
    kwargs = {k: _check(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{prefix or 'config'}: {e}") from None


def apply_override(data: dict, assignment: str) -> None:
    """``section.key=value`` into a nested dict; the value is parsed as YAML."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like section.key=value")
    dotted, raw = assignment.split("=", 1)
    parts = dotted.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {dotted!r}: cannot parse value {raw!r}: {e}") from None


def list_recipes() -> dict[str, str]:
    """Packaged recipe name -> the first sentence of its description."""
    out = {}
    for entry in sorted(importlib.resources.files(RECIPES_PACKAGE).iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            data = yaml.safe_load(entry.read_text()) or {}
            text = " ".join(str(data.get("description", "")).split())
            out[entry.name[: -len(".yaml")]] = re.split(r"\.\s+(?=[A-Z])", text)[0].rstrip(".")
    return out


def packaged_recipe(name: str):
    """The packaged recipe ``name`` (with or without ``.yaml``). Only the names
    :func:`list_recipes` lists are found: a path (``../../etc/passwd``) never leaves the
    recipes. The error lists them."""
    stem = str(name).removesuffix(".yaml")
    recipes = list_recipes()
    if stem not in recipes:
        raise ConfigError(f"no packaged recipe named {name!r}; packaged: {', '.join(recipes)}")
    return importlib.resources.files(RECIPES_PACKAGE) / f"{stem}.yaml"


def find_recipe(name_or_path: str | Path):
    """A recipe file: an existing path, or the name of a packaged recipe (with or without
    ``.yaml``). The error lists the packaged recipes."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.parent == Path(".") and str(name_or_path).removesuffix(".yaml") in list_recipes():
        return packaged_recipe(str(name_or_path))
    raise ConfigError(f"recipe not found: {name_or_path} (neither a file nor a packaged recipe; "
                      f"packaged: {', '.join(list_recipes())})")


def load_config(recipe: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The run configuration: a recipe (file or packaged name), then ``--set`` overrides."""
    data: dict = {}
    if recipe is not None:
        path = find_recipe(recipe)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not a text file (not UTF-8: {e.reason} at byte {e.start})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a recipe must be a mapping of sections")
        if not data:
            logging.getLogger(__name__).warning("%s is empty: every setting is the default", path)
    if recipe is not None:
        data.setdefault("recipe", Path(str(recipe)).name.removesuffix(".yaml"))
    for item in overrides:
        apply_override(data, item)
    try:
        return _build(Config, data)
    except ConfigError as e:
        raise ConfigError(f"{recipe}: {e}" if recipe else str(e)) from None


def config_from_dict(data: dict) -> Config:
    return _build(Config, data)


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
