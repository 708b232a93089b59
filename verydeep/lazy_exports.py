"""Package names loaded on first use (PEP 562), so importing a light module of a package
(its ``config``, its registry) does not load torch through the package's ``__init__``: the
commands that need no tensors (``verydeep recipes``, path errors) answer at once."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]], namespace: dict
                 ) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps a module to the names the
    package takes from it; a name is imported when first asked for, then kept in ``namespace``
    (the package's globals)."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *where})

    return __getattr__, __dir__
