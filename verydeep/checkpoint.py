"""Checkpoint and weights files: the one module that writes, finds, checks and reads them.

Two formats, one reader (:func:`load`) and one writer (:func:`save`):

- ``.pt`` (``torch.save``; training checkpoints ``last.pt``/``best.pt``, or any net's weights)
  holds one dict::

      model        the full, unsharded state dict (torchvision keys), whatever the parallel mode
      ema          the moving average of the weights (``train.ema_decay``; model keys) or None
      spec         the net's VGGSpec as a dict
      config       the run's configuration (its ``data`` section is the input convention:
                   normalize, mean, std, crop_size, scale_min/scale_max = S)
      classes      wnids in class-index order; class_names: wnid -> name
      preprocessing the input convention of a net without a config (an exported net), else absent
      meta         other metadata of an exported net (e.g. its source), else absent
      train        training checkpoints only: everything a resume needs and nothing evaluation
                   reads: optimizer (data-parallel runs only, else None), schedule, scaler, rng,
                   the TrainState fields (epoch, step, batch_in_epoch, best_top1_error,
                   bad_files, stopped_because, plateau_stopped, skipped_steps), finished,
                   ema_updates, world_size, parallel_mode, metrics_bytes (metrics.jsonl's length)

  Files of verydeep 0.1 kept the training state at the top level (23 keys; weights files
  ``{model, spec, meta}``); :func:`load` reads them into the same :class:`Checkpoint`.
- ``.safetensors`` (``verydeep export``): the weights, and in the header's metadata the spec,
  classes, class names and preprocessing as JSON, with a SHA-256 over the tensors AND that
  JSON (:data:`FILE_DIGEST_KEY`), so a changed mean is found like a changed weight.

What a load checks, in order, before anything is built from a file: the zip container's CRC-32s
(``torch.save`` writes them, PyTorch's reader does not check them) or the safetensors digest;
``torch.load(weights_only=True)`` (tensors and plain containers, never code); the metadata's
types, ranges and finiteness (:func:`check_spec`, :func:`check_preprocessing`); every weight
finite (``finite=False`` skips that, for inspection only). :func:`build_model` then compares
the spec's parameter shapes, taken on the meta device, with the tensors' before allocating the
net. Every failure is a :class:`~verydeep.errors.CheckpointError` (exit code 4) whose one line
names the file and what is wrong.

Non-finite weights: refused for every use, resume included: a net with NaN/inf weights
evaluates to nonsense and resumes into the same divergence, so such a file on disk (a
diverged run, or damage) is named and refused; ``load(path, finite=False)`` still reads it
for inspection.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import pickle
import re
import shutil
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from verydeep.atomic_write import plain_file_mode
from verydeep.data.config import NORMALIZATIONS
from verydeep.errors import CheckpointError, CheckpointNotFoundError, OutputError
from verydeep.models.vgg import VGG, VGGSpec
from verydeep.models.weights import caffe_bgr_to_rgb, clean_state_dict, infer_spec, model_state_dict

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"  # temporary files of an atomic write: .<name>.<random>.tmp beside the file
ZIP_MAGIC = b"PK\x03\x04"
# What a run folder stands for where a file is expected, in order of preference.
RUN_FOLDER_FILES = ("best.pt", "last.pt")
# safetensors metadata: "verydeep" holds the JSON; FILE_DIGEST_KEY the SHA-256 of tensors + JSON.
META_KEY = "verydeep"
FILE_DIGEST_KEY = "verydeep_file_sha256"
TENSORS_DIGEST_KEY = "verydeep_sha256"  # verydeep 0.1's files: the SHA-256 of the tensors only
# The input convention: the DataConfig fields that say how a net's input was made.
PREPROCESSING_KEYS = ("normalize", "mean", "std", "stats_file", "crop_size", "scale_min", "scale_max")
# The top-level keys of a .pt file; in verydeep 0.1's flat layout everything else was training state.
MODEL_KEYS = ("model", "ema", "spec", "config", "classes", "class_names", "preprocessing", "meta")


@dataclass
class Checkpoint:
    """A checked file: weights, what they are (spec, input convention, classes), and for a
    training checkpoint the state to resume from (``train``, the layout in the module docstring)."""

    path: Path
    weights: dict[str, torch.Tensor]
    spec: dict | None = None  # VGGSpec fields; None: a foreign state dict (the spec is inferred)
    config: dict | None = None  # the run's configuration (training checkpoints)
    preprocessing: dict | None = None  # the input convention of an exported net (no config)
    classes: list[str] | None = None
    class_names: dict[str, str] = field(default_factory=dict)
    ema: dict[str, torch.Tensor] | None = None
    train: dict | None = None
    extra: dict = field(default_factory=dict)  # other metadata an export recorded (e.g. its source)

    @property
    def input_convention(self) -> dict | None:
        """The data settings the net was trained with: the config's ``data`` section, else the
        exported ``preprocessing``; None for a bare state dict."""
        data = (self.config or {}).get("data")
        return data if isinstance(data, dict) and data else self.preprocessing

    @property
    def finished(self) -> bool:
        """The run had stopped (plateau, epochs, iteration cap) when this was written."""
        return bool(self.train and self.train.get("finished"))


# ----------------------------------------------------------------------------- finding


def resolve(path: str | Path) -> Path:
    """A file as given, or a run folder's ``best.pt`` (``last.pt`` before the run has validated
    once): the one rule behind ``--checkpoint``, ``model.init_from`` and ``model.weights``."""
    path = Path(path)
    if not path.is_dir():
        return path
    for name in RUN_FOLDER_FILES:
        if (path / name).is_file():
            if name != RUN_FOLDER_FILES[0]:
                log.warning("%s has no %s (no validation finished yet?): using %s", path, RUN_FOLDER_FILES[0], name)
            return path / name
    raise CheckpointNotFoundError(f"run folder {path} holds no {' or '.join(RUN_FOLDER_FILES)}")


# ----------------------------------------------------------------------------- writing


def _write_failure(path: Path, e: Exception) -> OutputError:
    """The one-line error of a write the system refused (disk full, read-only, ...)."""
    if isinstance(e, OSError) and e.strerror:
        return OutputError(e.errno, f"cannot write checkpoint {path}: {e.strerror}")
    # torch.save reports a failed write as a RuntimeError ("PytorchStreamWriter failed writing
    # file ..."), without the errno: say how much room the disk has left.
    try:
        free = f"; {shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free on its disk"
    except OSError:
        free = ""
    reason = str(e).split(". ")[0].splitlines()[0]
    return OutputError(errno.EIO, f"cannot write checkpoint {path}: {reason}{free}")


def write_atomically(path: str | Path, write: Callable[[Path], None]) -> Path:
    """``write(temporary path)`` beside ``path``, fsynced, then renamed over it: a crash at any
    point leaves either the old file or the new one. The file gets the mode a plain ``open``
    would give it (0644 under the usual umask), not ``mkstemp``'s 0600."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    except OSError as e:
        raise _write_failure(path, e) from None
    try:
        os.close(fd)
        write(Path(tmp))
        os.chmod(tmp, plain_file_mode())  # after the write: safetensors replaces the file it is given
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, (OSError, RuntimeError)) and not isinstance(e, OutputError):
            raise _write_failure(path, e) from None
        raise
    return path


def remove_orphan_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files of writes a killed process never finished (``.last.pt.*.tmp``).
    Only while no process writes into ``folder``: the run folder's lock holder calls it."""
    removed = []
    for tmp in Path(folder).glob(f".*.pt.*{TMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def save(path: str | Path, weights: dict[str, torch.Tensor], *, spec: dict | None = None,
         config: dict | None = None, classes: list[str] | None = None, class_names: dict[str, str] | None = None,
         preprocessing: dict | None = None, ema: dict[str, torch.Tensor] | None = None, train: dict | None = None,
         extra: dict | None = None) -> Path:
    """Write a checkpoint atomically: ``.safetensors`` (weights + metadata, digest over both;
    no ``config``, ``ema`` or ``train``) or anything else as ``.pt`` (the layout above)."""
    path = Path(path)
    weights = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    if path.suffix == ".safetensors":
        if config is not None or ema is not None or train is not None:
            raise ValueError("a .safetensors file holds one set of weights and their metadata only")
        from safetensors.torch import save_file

        # allow_nan=False: a NaN in the metadata is refused here rather than found on load
        text = json.dumps({"spec": spec, "classes": classes, "class_names": class_names or {},
                           "preprocessing": preprocessing, **(extra or {})}, allow_nan=False)
        metadata = {META_KEY: text, FILE_DIGEST_KEY: file_sha256(weights, text)}
        return write_atomically(path, lambda tmp: save_file(weights, str(tmp), metadata=metadata))
    obj = {"model": weights, "ema": ema, "spec": spec, "config": config, "classes": classes,
           "class_names": class_names or {}, **({"preprocessing": preprocessing} if preprocessing else {}),
           **({"train": train} if train is not None else {}), **({"meta": extra} if extra else {})}
    return write_atomically(path, lambda tmp: _torch_save(obj, tmp))


def save_weights(model: VGG, path: str | Path, *, classes: list[str] | None = None,
                 class_names: dict[str, str] | None = None, preprocessing: dict | None = None,
                 extra: dict | None = None) -> Path:
    """A net's weights and spec (+ what it predicts, how its input is made) as ``.safetensors``
    or ``.pt``: :func:`load_model` rebuilds it."""
    return save(path, model_state_dict(model), spec=model.spec.to_dict(), classes=classes, class_names=class_names,
                preprocessing=preprocessing, extra=extra)


def _torch_save(obj: dict, tmp: Path) -> None:
    with open(tmp, "wb") as f:
        torch.save(obj, f)


# ----------------------------------------------------------------------------- integrity


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
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, KeyError, IndexError,
            TypeError, AttributeError, OverflowError) as e:  # the unpickler's errors on bytes that are no pickle
        raise _refusal(path, e, is_zip) from None


def file_sha256(state: dict[str, torch.Tensor], metadata: str | None = None) -> str:
    """SHA-256 of a state dict (each tensor's name, dtype, shape and bytes, in name order), then
    of ``metadata`` (the JSON stored beside it) when given."""
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    if metadata is not None:
        digest.update(metadata.encode())
    return digest.hexdigest()


def load_safetensors_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a ``.safetensors`` file, its recorded SHA-256 checked when present
    (over tensors and metadata; verydeep 0.1's files: over the tensors)."""
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
    if FILE_DIGEST_KEY in metadata:
        ok = file_sha256(state, metadata.get(META_KEY, "")) == metadata[FILE_DIGEST_KEY]
    else:
        ok = TENSORS_DIGEST_KEY not in metadata or file_sha256(state) == metadata[TENSORS_DIGEST_KEY]
    if not ok:
        raise CheckpointError(f"{path}: damaged weights file: its tensors or metadata do not match the SHA-256 "
                              f"recorded when it was written; copy it again or export it again")
    return state, metadata


# ----------------------------------------------------------------------------- metadata checks


def _bad(path: Path, what: str, value, expected: str) -> CheckpointError:
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return CheckpointError(f"{path}: {what}={shown} in its metadata: expected {expected}; not a file verydeep "
                           f"wrote, or a damaged one")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_spec(spec, path: Path) -> VGGSpec | None:
    """The VGGSpec a file's metadata describes, its types, ranges and finiteness checked."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise _bad(path, "spec", spec, "a dict of VGGSpec fields")
    known = {f.name for f in fields(VGGSpec)}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise _bad(path, "spec." + unknown[0], spec[unknown[0]], f"only the fields {', '.join(sorted(known))}")
    checks = {"config": (lambda v: isinstance(v, str), "a configuration name"),
              "batch_norm": (lambda v: isinstance(v, bool), "true or false"),
              "num_classes": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
              "width": (lambda v: _is_finite_number(v) and v > 0, "a finite number > 0"),
              "fc_features": (lambda v: v is None or (_is_int(v) and v >= 1), "null or an integer >= 1"),
              "head_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
              "dropout": (lambda v: _is_finite_number(v) and 0 <= v < 1, "a number in [0, 1)")}
    for key, (ok, expected) in checks.items():
        if key in spec and not ok(spec[key]):
            raise _bad(path, f"spec.{key}", spec[key], expected)
    try:
        return VGGSpec(**spec)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its spec does not describe a VGG: {e}") from None


def check_preprocessing(values, path: Path, where: str) -> None:
    """The input convention's fields present in ``values`` have the right type, range and are finite."""
    if values is None:
        return
    if not isinstance(values, dict):
        raise _bad(path, where, values, "a dict")
    checks = {"normalize": (lambda v: v in NORMALIZATIONS, f"one of {', '.join(NORMALIZATIONS)}"),
              "mean": (lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(map(_is_finite_number, v)),
                       "3 finite numbers"),
              "std": (lambda v: isinstance(v, (list, tuple)) and len(v) == 3
                      and all(_is_finite_number(x) and x > 0 for x in v), "3 finite numbers > 0"),
              "stats_file": (lambda v: v is None or isinstance(v, str), "null or a file name"),
              "crop_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
              "scale_min": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
              "scale_max": (lambda v: _is_int(v) and v >= 1, "an integer >= 1")}
    for key, (ok, expected) in checks.items():
        if key in values and not ok(values[key]):
            raise _bad(path, f"{where}.{key}", values[key], expected)


def _check_names(ckpt: Checkpoint) -> None:
    classes = ckpt.classes
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise _bad(ckpt.path, "classes", ckpt.classes, "a list of class ids")
    if classes is not None and len(set(classes)) != len(classes):
        raise _bad(ckpt.path, "classes", ckpt.classes, "a list of distinct class ids")
    if not (isinstance(ckpt.class_names, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in ckpt.class_names.items())):
        raise _bad(ckpt.path, "class_names", ckpt.class_names, "a dict of class id -> name")


def first_nonfinite(state: dict[str, torch.Tensor] | None) -> str | None:
    """The name of the first floating-point tensor holding NaN or inf, in key order; None if none."""
    for name, t in (state or {}).items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


# ----------------------------------------------------------------------------- reading


def _state_dict(obj, path: Path, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: its {what} is a {type(obj).__name__}, not a state dict")
    bad = next((k for k, v in obj.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(f"{path}: {what} entry {bad!r} is not a tensor; not a VGG state dict")
    return clean_state_dict(obj)


def _from_torch_dict(obj: dict, path: Path) -> Checkpoint:
    """A ``.pt`` dict of any layout this version reads: ours (nested ``train``), verydeep 0.1's
    (flat training state, or ``{model, spec, meta}``), or a foreign state dict (torchvision's,
    or ``{state_dict: ...}``)."""
    key = next((k for k in ("model", "state_dict", "model_state_dict") if isinstance(obj.get(k), dict)), None)
    if key is None:
        return Checkpoint(path=path, weights=_state_dict(obj, path, "state dict"))
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
    train = obj.get("train")
    if train is None and "step" in obj:  # verydeep 0.1: the training state at the top level
        train = {k: v for k, v in obj.items() if k not in MODEL_KEYS}
    ema = obj.get("ema")
    return Checkpoint(path=path, weights=_state_dict(obj[key], path, key),
                      spec=obj.get("spec"), config=obj.get("config"),
                      preprocessing=obj.get("preprocessing", meta.get("preprocessing")),
                      classes=obj.get("classes", meta.get("classes")),
                      class_names=obj.get("class_names") or meta.get("class_names") or {},
                      ema=_state_dict(ema, path, "ema") if ema is not None else None,
                      train=train if isinstance(train, dict) else None,
                      extra={k: v for k, v in meta.items() if k not in MODEL_KEYS})


def _from_safetensors(path: Path) -> Checkpoint:
    state, metadata = load_safetensors_file(path)
    try:
        meta = json.loads(metadata.get(META_KEY) or "{}")
    except ValueError:
        raise _bad(path, META_KEY, metadata.get(META_KEY, "")[:40], "JSON") from None
    if not isinstance(meta, dict):
        raise _bad(path, META_KEY, meta, "a JSON object")
    return Checkpoint(path=path, weights=clean_state_dict(state), spec=meta.get("spec"),
                      preprocessing=meta.get("preprocessing"), classes=meta.get("classes"),
                      class_names=meta.get("class_names") or {},
                      extra={k: v for k, v in meta.items() if k not in MODEL_KEYS})


def load(path: str | Path, *, finite: bool = True) -> Checkpoint:
    """The checked checkpoint at ``path`` (a file, or a run folder: :func:`resolve`).

    ``finite``: refuse weights (and EMA weights) holding NaN or inf, naming the first such
    tensor; False only to inspect a file (tests, tools), never to evaluate or train from it."""
    path = resolve(path)
    if path.suffix == ".safetensors":
        ckpt = _from_safetensors(path)
    else:
        obj = load_torch_file(path)
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path}: not a verydeep checkpoint (holds a {type(obj).__name__})")
        ckpt = _from_torch_dict(obj, path)
    check_spec(ckpt.spec, path)
    check_preprocessing(ckpt.preprocessing, path, "preprocessing")
    if ckpt.config is not None and not isinstance(ckpt.config, dict):
        raise _bad(path, "config", ckpt.config, "a dict")
    check_preprocessing((ckpt.config or {}).get("data"), path, "config.data")
    _check_names(ckpt)
    if finite:
        for what, state in (("weight", ckpt.weights), ("EMA weight", ckpt.ema)):
            bad = first_nonfinite(state)
            if bad is not None:
                raise CheckpointError(f"{path}: {what} {bad} holds NaN or inf values (the run diverged before "
                                      f"this was written): use an earlier checkpoint, or train again with a "
                                      f"lower optim.lr")
    return ckpt


# ----------------------------------------------------------------------------- the net


def check_shapes(spec: VGGSpec, state: dict[str, torch.Tensor], path: Path) -> None:
    """The net ``spec`` describes has exactly ``state``'s tensor names and shapes; checked on
    the meta device, so a spec that does not fit its tensors allocates nothing."""
    with torch.device("meta"):
        reference = VGG(spec).state_dict()
    expected = {k: tuple(v.shape) for k, v in reference.items()}
    for name in sorted(set(expected) | set(state)):
        got = tuple(state[name].shape) if name in state else None
        if got != expected.get(name):
            detail = (f"{name} is missing" if got is None else f"unexpected tensor {name}" if name not in expected
                      else f"{name} has shape {list(got)}, the spec needs {list(expected[name])}")
            raise CheckpointError(f"{path}: weights do not fit {spec}: {detail}")
    for name, t in state.items():  # integer weights would be cast silently (0.37 -> 0) by load_state_dict
        if reference[name].is_floating_point() and not t.is_floating_point():
            raise CheckpointError(f"{path}: weights do not fit {spec}: {name} is {t.dtype}, not floating point")


def build_model(ckpt: Checkpoint, *, ema: bool = False, caffe_bgr: bool = False,
                dropout: float | None = None) -> VGG:
    """The net a checkpoint describes, with its weights (``ema``: its moving average) loaded;
    built only once the spec's shapes are known to match the tensors."""
    state = ckpt.weights
    if ema:
        if ckpt.path.suffix == ".safetensors":
            raise CheckpointError(f"{ckpt.path}: an exported file holds one set of weights; --ema needs a training "
                                  f"checkpoint")
        if ckpt.ema is None:
            raise CheckpointError(f"{ckpt.path} holds no EMA weights (its run was trained without train.ema_decay)")
        state = ckpt.ema
    try:
        spec = check_spec(ckpt.spec, ckpt.path) or infer_spec(state)
    except ValueError as e:
        raise CheckpointError(f"{ckpt.path}: {e}") from None
    if dropout is not None:
        spec = VGGSpec(**{**spec.to_dict(), "dropout": dropout})
    check_shapes(spec, state, ckpt.path)
    model = VGG(spec)
    model.load_state_dict(caffe_bgr_to_rgb(state) if caffe_bgr else state, strict=True)
    return model


def load_model(path: str | Path, *, caffe_bgr: bool = False, dropout: float | None = None) -> VGG:
    """Build the net described by a weights file (or run folder) and load its weights."""
    return build_model(load(path), caffe_bgr=caffe_bgr, dropout=dropout)
