"""Cache files that say whether they were changed: JSON with a SHA-256 of its own content.

The file index and the training-set statistics are cached as JSON beside each other
(``verydeep.data.index_cache``, ``verydeep.data.stats``). A cache is a convenience, never a
source of truth: :func:`read_checked_json` returns its content only when the checksum it
carries matches, and the reader then checks the values themselves (names inside their
folder, finite numbers of the right shape). Anything else is ``InvalidCache``, and the
caller rebuilds the cache, saying which file it did not trust.

The checksum catches damage and hand edits; it is no signature (whoever can write the file
can recompute it), which is why the readers also check every value they use.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from verydeep.atomic_write import write_text_atomic

CHECKSUM_KEY = "sha256"


class InvalidCache(ValueError):
    """A cache file that is damaged, edited, or holds values its reader cannot use."""


def _digest(payload: dict) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def write_checked_json(path: str | Path, payload: dict, indent: int | None = None) -> Path:
    """``payload`` and its checksum to ``path`` (one atomic rename)."""
    if CHECKSUM_KEY in payload:
        raise ValueError(f"{CHECKSUM_KEY!r} is the checksum's key; a cache payload cannot use it")
    text = json.dumps({**payload, CHECKSUM_KEY: _digest(payload)}, indent=indent)
    return write_text_atomic(path, text + "\n")


def read_checked_json(path: str | Path) -> dict:
    """The payload of a file written by :func:`write_checked_json`; FileNotFoundError when there
    is none, InvalidCache when it is not valid JSON or its checksum does not match."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except ValueError as e:
        raise InvalidCache(f"not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise InvalidCache("not a JSON object")
    stored = data.pop(CHECKSUM_KEY, None)
    if stored is None:
        raise InvalidCache("no checksum (written by an older verydeep, or by hand)")
    if stored != _digest(data):
        raise InvalidCache("its checksum does not match its content (damaged or edited)")
    return data


def finite_vector(value: Any, length: int, key: str) -> list[float]:
    """``value`` as ``length`` finite floats; InvalidCache naming ``key`` otherwise."""
    if (not isinstance(value, list) or len(value) != length
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise InvalidCache(f"{key} must be {length} numbers, got {value!r}")
    if not all(math.isfinite(v) for v in value):
        raise InvalidCache(f"{key} holds a non-finite value: {value!r}")
    return [float(v) for v in value]


def relative_name(name: Any, key: str, *, single: bool = False) -> str:
    """``name`` when it is a relative path that stays inside its folder (one component when
    ``single``); InvalidCache naming ``key`` otherwise."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise InvalidCache(f"{key}: {name!r} is not a file name")
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts) or (single and len(parts) > 1):
        raise InvalidCache(f"{key}: {name!r} leaves its folder or is not a plain name")
    return name
