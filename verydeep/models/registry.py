"""Names -> configurations. Accepts the paper's letters and the usual names."""

from __future__ import annotations

from verydeep.models.configurations import CONFIGURATIONS

# Canonical name per configuration (torchvision's where one exists).
CANONICAL: dict[str, str] = {
    "A": "vgg11",
    "A-LRN": "vgg11_lrn",
    "B": "vgg13",
    "C": "vgg16_c",
    "D": "vgg16",
    "E": "vgg19",
}

_ALIASES: dict[str, str] = {
    "vgg16_c1": "C",
    "vgg16c": "C",
    "vgg16_conv1": "C",
    "a_lrn": "A-LRN",
    "alrn": "A-LRN",
}


def _lookup() -> dict[str, str]:
    table = {name: cfg for cfg, name in CANONICAL.items()}
    table.update(_ALIASES)
    for cfg in CONFIGURATIONS:
        table[cfg.lower()] = cfg
    return table


def resolve(name: str) -> tuple[str, bool]:
    """``name`` -> (configuration letter, batch norm implied by the name)."""
    key = name.strip().lower().replace(" ", "")
    bn = False
    if key.endswith("_bn") or key.endswith("-bn"):
        key, bn = key[:-3], True
    table = _lookup()
    if key not in table:
        raise ValueError(
            f"unknown model name {name!r}; known: {', '.join(list_models())} "
            f"(or a paper letter {', '.join(CONFIGURATIONS)}, with _bn for batch norm)"
        )
    return table[key], bn


def list_models() -> list[str]:
    return [n + suffix for n in CANONICAL.values() for suffix in ("", "_bn")]
