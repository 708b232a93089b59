"""Loading weight files safely: no code runs, and damage is found before anything is used.

Every ``.pt`` load goes through :func:`load_torch_file`: the zip container ``torch.save``
writes carries a CRC-32 of each member (the pickle and every tensor's bytes), which PyTorch's
reader does not check; here they are checked first, so a flipped byte or a truncated copy
fails with the file named instead of loading wrong weights. Then ``torch.load(...,
weights_only=True)``: tensors and plain containers only.

``.safetensors`` files have no checksum of their own. The ones verydeep writes carry a SHA-256
of their tensors in their metadata (:func:`tensors_sha256`), checked by
:func:`load_safetensors_file`; foreign ones are checked for truncation only.

Every failure is a :class:`~verydeep.errors.CheckpointError` (exit code 4) whose one line names
the file and says what is wrong, never PyTorch's advice to load with ``weights_only=False``.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import warnings
import zipfile
import zlib
from pathlib import Path

import torch

from verydeep.errors import CheckpointError, CheckpointNotFoundError

ZIP_MAGIC = b"PK\x03\x04"
DIGEST_KEY = "verydeep_sha256"  # safetensors metadata: SHA-256 of the tensors (tensors_sha256)


def verify_torch_zip(path: Path) -> bool:
    """Check every member's CRC-32 of a zip-format ``.pt`` file; False for a file that is not a
    zip (PyTorch's legacy format, or not a checkpoint at all: torch.load says which)."""
    with open(path, "rb") as f:
        if f.read(4) != ZIP_MAGIC:
            return False
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except zipfile.BadZipFile:
        raise CheckpointError(f"{path}: truncated or damaged checkpoint (no readable zip directory); copy it "
                              f"again or use another checkpoint") from None
    except (zlib.error, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: damaged checkpoint ({e}); copy it again or use another checkpoint") from None
    if bad is not None:
        raise CheckpointError(f"{path}: damaged checkpoint: {bad} fails its CRC check (the file changed "
                              f"after it was written); copy it again or use another checkpoint")
    return True


def _refusal(path: Path, error: Exception, is_zip: bool) -> CheckpointError:
    """The one-line error of a file ``torch.load(weights_only=True)`` would not read."""
    text = str(error)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return CheckpointError(f"refused to load {path}: it holds Python objects other than tensors and plain "
                               f"containers ({found.group(1)}), and verydeep never unpickles code; convert it to "
                               f"safetensors in a trusted environment")
    detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n|$)", text)
    if detail and (is_zip or _starts_with_pickle(path)):
        return CheckpointError(f"refused to load {path}: a pickle the safe loader does not accept "
                               f"({detail.group(1)}); verydeep never unpickles arbitrary objects")
    if not is_zip:
        return CheckpointError(f"{path}: not a PyTorch checkpoint (damaged, or another format)")
    first = text.split(". ")[0].splitlines()[0] if text else type(error).__name__
    return CheckpointError(f"{path}: damaged or truncated checkpoint ({first})")


def _starts_with_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"  # the PROTO opcode that opens every pickle since protocol 2


def load_torch_file(path: str | Path) -> object:
    """``torch.load(path, weights_only=True)`` on CPU, after :func:`verify_torch_zip`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    is_zip = verify_torch_zip(path)
    try:
        with warnings.catch_warnings():
            # PyTorch's note on a legacy file's pickle protocol: the outcome below says enough.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise _refusal(path, e, is_zip) from None


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict: each tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_safetensors_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a ``.safetensors`` file; its recorded SHA-256 checked when present."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: damaged or truncated safetensors file ({e})") from None
    expected = metadata.get(DIGEST_KEY)
    if expected and tensors_sha256(state) != expected:
        raise CheckpointError(f"{path}: damaged weights file: its tensors do not match the SHA-256 recorded "
                              f"when it was written; copy it again or export it again")
    return state, metadata
