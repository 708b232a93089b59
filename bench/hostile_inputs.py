"""A hostile and clumsy-user battery: bad inputs to every command, each judged GOOD or BAD.

Run from the repository root (a few minutes on 2 busy cores)::

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/hostile_inputs.py --out DIR [--jobs 2] [--only WORD]

It makes its own tiny data set (3 classes of small JPEGs), trains a tiny net for one epoch
(``verydeep train --config demo`` with tiny overrides), exports it to safetensors and saves
its posteriors (``eval --save-posteriors``), then runs each bad input as its own process
``python -m verydeep ...`` with a time limit. A result is GOOD when the command exits with
the README's code for that kind of failure (or 0 where the input is acceptable, e.g. a
warning and a skipped link), prints no Python traceback, its last stderr line names what
``must`` says (the bad file, key or value) and no planted payload ran; BAD otherwise (a
traceback, exit 1, a wrong code, a hang, a silent wrong result). The table goes to stdout
and ``DIR/hostile_results.json``; the exit status is the number of BAD results (capped at 100).

Read-only outputs: a folder with mode 0555, or ``/sys`` when running as root (root ignores
the mode bits; creating a file in sysfs is refused with "Permission denied").
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

EXIT = {"usage": 2, "data": 3, "ckpt": 4, "diverged": 5, "run": 6, "io": 7}
TINY = ["model.name=A", "model.width=0.0625", "model.fc_features=16", "model.dropout=0.0",
        "data.scale_min=32", "data.scale_max=40", "data.crop_size=32", "data.eval_scale=32",
        "data.eval_crop=32", "data.workers=0", "train.batch_size=6", "train.epochs=1",
        "train.log_every=1", "train.tensorboard=false", "train.device=cpu"]
CLASSES = [f"n{c:08d}" for c in range(3)]


@dataclass
class Case:
    name: str
    argv: list[str]
    codes: tuple[int, ...]
    must: str | None = None  # a text the last stderr line must hold (case-insensitive)
    payload: Path | None = None  # a file a planted payload would create: it must not exist
    result: dict = field(default_factory=dict)


def write_images(root: Path, classes=3, per_class=(4, 2), seed=0) -> Path:
    """train/ and val/ with class folders of small JPEGs (class = dominant channel)."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val"), per_class):
        for c in range(classes):
            d = root / split / CLASSES[c]
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = int(rng.integers(36, 60)), int(rng.integers(36, 60))
                img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
                img[..., c % 3] += np.uint8(150)
                Image.fromarray(img).save(d / f"img_{i}.JPEG", quality=90)
    return root


def vd(*args: str) -> list[str]:
    return [sys.executable, "-m", "verydeep", *args]


def run(argv: list[str], timeout: float, cwd: Path) -> tuple[int | None, str, str, float]:
    t0 = time.monotonic()
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                           stdin=subprocess.DEVNULL)
        return p.returncode, p.stdout, p.stderr, time.monotonic() - t0
    except subprocess.TimeoutExpired as e:
        return None, str(e.stdout or ""), str(e.stderr or ""), time.monotonic() - t0


class Payload:
    """A pickle that would create ``marker`` when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --- the fixtures: data, a trained run, an export, a store ----------------------------------

def setup(out: Path, timeout: float) -> dict:
    w = out / "work"
    if w.exists():
        shutil.rmtree(w)
    w.mkdir(parents=True)
    data = write_images(w / "data")
    run_dir = w / "run"
    argv = vd("train", "--config", "demo", "--data", str(data), "--out", str(run_dir),
              *[a for kv in TINY for a in ("--set", kv)])
    rc, _, err, _ = run(argv, timeout * 3, w)
    if rc != 0:
        sys.exit(f"setup: the tiny training failed ({rc}):\n{err[-3000:]}")
    rc, _, err, _ = run(vd("export", "--checkpoint", str(run_dir), "--out", str(w / "export"),
                           "--format", "safetensors"), timeout, w)
    if rc != 0:
        sys.exit(f"setup: export failed ({rc}):\n{err[-3000:]}")
    rc, _, err, _ = run(vd("eval", "--checkpoint", str(run_dir), "--data", str(data), "--protocol", "center",
                           "--scales", "32", "--save-posteriors", str(w / "store")), timeout, w)
    if rc != 0:
        sys.exit(f"setup: eval --save-posteriors failed ({rc}):\n{err[-3000:]}")
    ro = Path("/sys") if os.geteuid() == 0 else w / "readonly"
    if ro != Path("/sys"):
        ro.mkdir()
        ro.chmod(0o555)
    return {"w": w, "data": data, "run": run_dir, "best": run_dir / "best.pt", "last": run_dir / "last.pt",
            "st": w / "export" / "model.safetensors", "store": w / "store", "ro": ro}


# --- bad files -------------------------------------------------------------------------------

def bad_checkpoints(f: dict) -> list[tuple[str, Path, str | None]]:
    """(name, file, text the refusal must name) for damaged/forged checkpoint and weights files."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from verydeep import checkpoint as ck

    d = f["w"] / "ckpts"
    d.mkdir()
    best = f["best"].read_bytes()
    cases = []

    def add(name, path, data=None, must="__path__"):
        if data is not None:
            path.write_bytes(data)
        cases.append((name, path, path.name if must == "__path__" else must))

    add("pt zero-byte", d / "zero.pt", b"")
    add("pt truncated to half", d / "half.pt", best[: len(best) // 2])
    add("pt truncated by 10 bytes", d / "tail.pt", best[:-10])
    flipped = bytearray(best)
    flipped[len(best) // 2] ^= 0xFF
    add("pt one byte flipped", d / "flip.pt", bytes(flipped))
    add("pt random bytes", d / "random.pt", np.random.default_rng(0).bytes(4096))
    add("pt text file", d / "text.pt", b"hello, I am not a checkpoint\n")
    marker = f["w"] / "PAYLOAD_RAN"
    add("pt pickle bomb (os.system)", d / "bomb.pt", pickle.dumps({"model": Payload(marker)}))
    add("pt plain pickle of a dict", d / "plain.pt", pickle.dumps({"model": {"a": 1}}))
    zb = d / "zipbomb.pt"
    torch.save({"model": Payload(marker)}, zb)
    add("pt torch.save zip with a payload", zb)
    add("pt named .safetensors", d / "renamed.safetensors", best)
    add("safetensors named .pt", d / "renamed_st.pt", f["st"].read_bytes())
    st = f["st"].read_bytes()
    add("safetensors zero-byte", d / "zero.safetensors", b"")
    add("safetensors truncated", d / "trunc.safetensors", st[: len(st) // 2])
    add("safetensors header length 2**62", d / "hdr.safetensors", struct.pack("<Q", 2 ** 62) + st[8:])
    add("safetensors header not JSON", d / "hdrjson.safetensors", struct.pack("<Q", 8) + b"{notjson" + st[8:])
    add("torch.save of a tensor", d / "tensor.pt")
    torch.save(torch.zeros(3), d / "tensor.pt")
    add("torch.save of a list", d / "list.pt")
    torch.save([1, 2, 3], d / "list.pt")
    add("directory named x.pt", d / "dir.pt")
    (d / "dir.pt").mkdir()
    add("missing file", d / "missing.pt")
    add("run folder without checkpoints", d / "emptyrun")
    (d / "emptyrun").mkdir()

    # forged files: valid containers, bad contents (digests recomputed, as a forger would)
    ckpt = ck.load(f["best"])
    with safe_open(str(f["st"]), "pt") as h:
        weights = {k: h.get_tensor(k) for k in h.keys()}
        meta = json.loads(h.metadata()[ck.META_KEY])

    def forged(name, file, w=None, m=None, raw_meta=None, must="__path__"):
        w = weights if w is None else w
        text = raw_meta if raw_meta is not None else json.dumps(meta if m is None else m)
        save_file(w, str(d / file), metadata={ck.META_KEY: text, ck.FILE_DIGEST_KEY: ck.file_sha256(w, text)})
        add(name, d / file, must=must)

    def edit(path, value):
        m = json.loads(json.dumps(meta))
        node = m
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        return m

    first = next(iter(weights))
    forged("safetensors forged NaN preprocessing.mean", "nanmean.safetensors",
           raw_meta=json.dumps(edit(["preprocessing", "mean"], [float("nan")] * 3)), must="mean")
    forged("safetensors forged spec.width=64", "width64.safetensors", m=edit(["spec", "width"], 64), must="width")
    forged("safetensors forged spec.width=-1", "widthneg.safetensors", m=edit(["spec", "width"], -1), must="width")
    forged("safetensors forged spec.num_classes=10**9", "ncls.safetensors", m=edit(["spec", "num_classes"], 10 ** 9))
    forged("safetensors forged mean of length 2", "mean2.safetensors", m=edit(["preprocessing", "mean"], [0.5, 0.5]),
           must="mean")
    forged("safetensors forged std 0", "std0.safetensors", m=edit(["preprocessing", "std"], [0.0, 0.0, 0.0]),
           must="std")
    forged("safetensors forged metadata not JSON", "metajson.safetensors", raw_meta="{not json")
    forged("safetensors forged metadata a list", "metalist.safetensors", raw_meta="[1, 2]")
    forged("safetensors forged classes wrong count", "cls.safetensors", m=edit(["classes"], ["a", "b"]))
    forged("safetensors forged classes duplicated", "clsdup.safetensors", m=edit(["classes"], ["a", "a", "b"]))
    forged("safetensors forged wrong shape", "shape.safetensors",
           w={**weights, first: torch.zeros(weights[first].numel() + 1)}, must=first)
    forged("safetensors forged missing tensor", "missing.safetensors",
           w={k: v for k, v in weights.items() if k != first}, must=first)
    forged("safetensors forged extra tensor", "extra.safetensors", w={**weights, "bogus.weight": torch.zeros(2)},
           must="bogus")
    forged("safetensors forged NaN weight", "nanw.safetensors",
           w={**weights, first: torch.full_like(weights[first], float("nan"))}, must=first)
    forged("safetensors forged inf weight", "infw.safetensors",
           w={**weights, first: torch.full_like(weights[first], float("inf"))}, must=first)
    forged("safetensors forged int64 weights", "intw.safetensors",
           w={**weights, first: weights[first].long()}, must=first)
    plain = d / "edited.safetensors"
    save_file(weights, str(plain), metadata={ck.META_KEY: json.dumps(edit(["preprocessing", "mean"], [9, 9, 9])),
                                             ck.FILE_DIGEST_KEY: "0" * 64})
    add("safetensors metadata edited, digest stale", plain)
    nan_model = {k: (v.clone().fill_(float("nan")) if k == first else v) for k, v in ckpt.weights.items()}
    ck.save(d / "nanw.pt", nan_model, spec=ckpt.spec, config=ckpt.config, classes=ckpt.classes,
            class_names=ckpt.class_names)
    add("pt forged NaN weight (saved by verydeep)", d / "nanw.pt", must=first)
    torch.save({k: v.clone().fill_(float("inf")) for k, v in ckpt.weights.items()}, d / "infsd.pth")
    add("torchvision-style state dict, all inf", d / "infsd.pth")
    obj = torch.load(f["best"], weights_only=True)
    obj["spec"]["width"] = 64.0
    torch.save(obj, d / "specwidth.pt")
    add("pt forged spec.width=64", d / "specwidth.pt", must="width")
    obj = torch.load(f["best"], weights_only=True)
    obj["classes"] = "n00000000"
    torch.save(obj, d / "classes_str.pt")
    add("pt forged classes a string", d / "classes_str.pt", must="classes")
    return cases


def bad_stores(f: dict) -> list[tuple[str, Path, str | None]]:
    d = f["w"] / "stores"
    d.mkdir()
    good = f["store"]
    index = json.loads((good / "index.json").read_text())
    entry = next(iter(index["entries"]))
    arr = np.load(good / f"{entry}.npy")
    cases = []

    def store(name, folder, index_obj=None, index_text=None, array=None, array_bytes=None, drop=(), must="__path__"):
        p = d / folder
        shutil.copytree(good, p)
        if index_obj is not None:
            (p / "index.json").write_text(json.dumps(index_obj))
        if index_text is not None:
            (p / "index.json").write_text(index_text)
        if array is not None:
            np.save(p / f"{entry}.npy", array, allow_pickle=True)
        if array_bytes is not None:
            (p / f"{entry}.npy").write_bytes(array_bytes)
        for x in drop:
            (p / x).unlink()
        cases.append((name, p, folder if must == "__path__" else must))

    def idx(**kw):
        return {**json.loads(json.dumps(index)), **kw}

    store("store without index.json", "noindex", drop=("index.json",))
    store("store index not JSON", "badjson", index_text="{not json")
    store("store index a list", "indexlist", index_text="[]")
    store("store index zero-byte", "indexzero", index_text="")
    store("store index wrong format", "format", index_obj=idx(format="other/9"))
    store("store index without labels", "nolabels", index_obj={k: v for k, v in index.items() if k != "labels"})
    store("store label 99", "label99", index_obj=idx(labels=[99] + index["labels"][1:]))
    store("store label -5", "labelneg", index_obj=idx(labels=[-5] + index["labels"][1:]))
    store("store labels strings", "labelstr", index_obj=idx(labels=["a"] * len(index["labels"])))
    store("store images count wrong", "images", index_obj=idx(images=999))
    store("store dtype bogus", "dtype", index_obj=idx(dtype="float64"))
    store("store entry file escapes the folder", "escape",
          index_obj=idx(entries={entry: {**index["entries"][entry], "file": "../../../etc/passwd"}}))
    store("store entry file missing", "nofile", drop=(f"{entry}.npy",))
    store("store array wrong shape", "shape", array=arr[:, :2].copy())
    store("store array int64", "int64", array=arr.astype(np.int64))
    store("store array float64", "f64", array=arr.astype(np.float64))
    store("store array NaN", "nan", array=np.where(np.arange(arr.size).reshape(arr.shape) == 0, np.nan, arr)
          .astype(arr.dtype))
    store("store array inf", "inf", array=np.full_like(arr, np.inf))
    marker = f["w"] / "PAYLOAD_RAN"
    store("store array of objects (pickle payload)", "object",
          array=np.array([Payload(marker)] * arr.size, dtype=object).reshape(arr.shape))
    store("store array zero-byte", "npyzero", array_bytes=b"")
    raw = (good / f"{entry}.npy").read_bytes()
    store("store array truncated", "npytrunc", array_bytes=raw[: len(raw) - 20])
    store("store array is a text file", "npytext", array_bytes=b"1,2,3\n")
    other = d / "other_classes"
    shutil.copytree(good, other)
    (other / "index.json").write_text(json.dumps(idx(classes=["x", "y", "z"])))
    cases.append(("fuse stores of other classes", other, None))
    return cases


def damaged_data(f: dict) -> dict:
    d = f["w"] / "datasets"
    d.mkdir()
    out = {}
    (d / "empty").mkdir()
    out["empty"] = d / "empty"
    (d / "noclasses" / "train").mkdir(parents=True)
    (d / "noclasses" / "val").mkdir(parents=True)
    out["noclasses"] = d / "noclasses"
    (d / "afile").write_text("not a folder")
    out["afile"] = d / "afile"
    link = shutil.copytree(f["data"], d / "link")
    os.symlink(link / "train" / CLASSES[2], link / "train" / "n00000000a_link")
    os.symlink(link / "val" / CLASSES[2], link / "val" / "n00000000a_link")
    os.symlink(CLASSES[2], link / "train" / "a_first")  # sorts before every real class
    os.symlink(CLASSES[2], link / "val" / "a_first")
    out["link"] = link
    html = shutil.copytree(f["data"], d / "html")
    (html / "val" / CLASSES[0] / "page.jpg").write_text("<html><body>404 Not Found</body></html>")
    out["html"] = html
    zero = shutil.copytree(f["data"], d / "zeroimgs")
    for p in (zero / "val").rglob("*.JPEG"):
        p.write_bytes(b"")
    out["zeroimgs"] = zero
    onlytrain = shutil.copytree(f["data"], d / "onlytrain")
    shutil.rmtree(onlytrain / "val")
    out["onlytrain"] = onlytrain
    fileclass = shutil.copytree(f["data"], d / "fileclass")
    (fileclass / "val" / "n00000009").write_text("a file where a class folder is expected")
    out["fileclass"] = fileclass
    loop = shutil.copytree(f["data"], d / "loop")
    os.symlink("..", loop / "val" / CLASSES[0] / "up")
    out["loop"] = loop
    dangling = shutil.copytree(f["data"], d / "dangling")
    os.symlink("/nonexistent/where", dangling / "val" / "n00000005")
    out["dangling"] = dangling
    onecls = d / "oneclass"
    write_images(onecls, classes=1)
    out["oneclass"] = onecls
    (d / "html.jpg").write_text("<html>not an image</html>")
    (d / "zero.jpg").write_bytes(b"")
    (d / "trunc.jpg").write_bytes(next((f["data"] / "val" / CLASSES[0]).glob("*.JPEG")).read_bytes()[:100])
    out["d"] = d
    return out


# --- the battery -----------------------------------------------------------------------------

def cases(f: dict) -> list[Case]:
    U, D, K, R, IO = EXIT["usage"], EXIT["data"], EXIT["ckpt"], EXIT["run"], EXIT["io"]
    data, run_dir, w, ro = str(f["data"]), f["run"], f["w"], f["ro"]
    marker = w / "PAYLOAD_RAN"
    ev = ["eval", "--data", data, "--protocol", "center", "--scales", "32", "--device", "cpu"]
    tiny = [a for kv in TINY for a in ("--set", kv)]
    out: list[Case] = []

    def train(name, extra, codes, must=None, data_dir=data, out_dir=None, tiny_args=None):
        o = out_dir or str(w / "runs" / name.replace(" ", "_").replace("/", "_"))
        t = tiny if tiny_args is None else tiny_args
        if tiny_args is not None:  # a --set left without its value: drop its "--set" too
            t = [a for i, a in enumerate(t) if not (a == "--set" and (i + 1 == len(t) or t[i + 1] == "--set"))]
        out.append(Case(name, vd("train", "--config", "demo", "--data", str(data_dir), "--out", o, *t, *extra),
                        codes, must))

    for name, path, must in bad_checkpoints(f):
        out.append(Case(f"eval: {name}", vd(*ev, "--checkpoint", str(path)), (K,), must, marker))
    for name, path, must in bad_checkpoints_subset(f):
        out.append(Case(f"predict: {name}", vd("predict", "--checkpoint", str(path), "--device", "cpu",
                                              str(next((f["data"] / "val" / CLASSES[0]).glob("*.JPEG")))),
                        (K,), must, marker))
        out.append(Case(f"export: {name}", vd("export", "--checkpoint", str(path), "--format", "safetensors",
                                             "--out", str(w / "exp_bad")), (K,), must, marker))
        train(f"train --pretrained {name}", ["--pretrained", str(path)], (K,), must)

    for name, path, must in bad_stores(f):
        codes = (K, U) if "other classes" in name else (K,)
        argv = vd("fuse", str(f["store"]), str(path)) if "other classes" in name else vd("fuse", str(path))
        out.append(Case(f"fuse: {name}", argv, codes, must, marker))
    s = str(f["store"])
    out += [
        Case("fuse: one store (legitimate)", vd("fuse", s), (0,)),
        # a row the store does not hold: usage (2) or the store's "not matching" code (4, the project's choice)
        Case("fuse: #ROW out of range", vd("fuse", s + "#7"), (U, K), "7"),
        Case("fuse: #ROW negative", vd("fuse", s + "#-1"), (U, K), "-1"),
        Case("fuse: #ENTRY unknown", vd("fuse", s + "#net9-dense-Q1"), (U, K), "net9"),
        Case("fuse: missing store", vd("fuse", str(w / "nostore")), (K,), "nostore"),
        Case("fuse: a file as store", vd("fuse", str(f["best"])), (K,), "best.pt"),
        Case("fuse: no arguments", vd("fuse"), (U,)),
        Case("fuse: --json into /sys or a read-only folder", vd("fuse", s, "--json", str(ro / "f.json")), (IO,),
             "f.json"),
        Case("fuse: --json onto a folder", vd("fuse", s, "--json", str(w)), (IO,), str(w.name)),
    ]

    bad_values = [
        ("data.crop_size=100000", "crop_size"), ("data.crop_size=0", "crop_size"), ("data.crop_size=-32", "crop_size"),
        ("optim.lr=-1", "lr"), ("optim.lr=inf", "lr"), ("optim.lr=nan", "lr"), ("optim.lr=0", "lr"),
        ("optim.weight_decay=-1", "weight_decay"), ("optim.weight_decay=inf", "weight_decay"),
        ("foo.bar=1", "foo"), ("model.bogus=1", "bogus"), ("train.batch_size=abc", "batch_size"),
        ("train.batch_size=0", "batch_size"), ("train.batch_size=-3", "batch_size"), ("train.epochs=-1", "epochs"),
        ("train.epochs=1.5", "epochs"), ("model.name=Z", "Z"), ("model.width=0", "width"), ("model.width=-1", "width"),
        ("model.width=1e9", "width"), ("data.workers=-1", "workers"), ("model.dropout=1.5", "dropout"),
        ("train.max_iterations=-5", "max_iterations"), ("schedule.name=bogus", "bogus"), ("optim.name=bogus", "bogus"),
        ("data.scale_max=20", "scale"), ("data.scale_min=100000", "scale_min"), ("optim.momentum=-0.5", "momentum"),
        ("data.eval_scale=99999999", "eval_scale"), ("train", "train"), ("=1", "''"), ("model=3", "model"),
        ("train.device=cuda:99", "cuda"),
    ]
    for kv, must in bad_values:
        train(f"train --set {kv}", ["--set", kv], (U,), must)
    train("train --lr inf", ["--lr", "inf"], (U,), "inf")
    train("train --lr -0.1", ["--lr", "-0.1"], (U,), "-0.1")
    train("train --epochs 1.5", ["--epochs", "1.5"], (U,), "1.5")
    train("train -j -2", ["-j", "-2"], (U,), "-2")
    train("train --amp bogus", ["--amp", "bogus"], (U,), "bogus")
    train("train --device tpu", ["--device", "tpu"], (U,), "tpu", tiny_args=[a for a in tiny if a != "train.device=cpu"])
    recipes = w / "recipes"
    recipes.mkdir()
    (recipes / "bad.yaml").write_text("model: [unclosed\n")
    (recipes / "list.yaml").write_text("- 1\n- 2\n")
    (recipes / "empty.yaml").write_text("")
    (recipes / "binary.yaml").write_bytes(b"\xff\xfe\x00garbage")
    for cfg, must in [("../../../etc/passwd", "passwd"), ("/etc/passwd", "passwd"), ("no_such_recipe", "no_such_recipe"),
                      (str(recipes / "bad.yaml"), "bad.yaml"), (str(recipes / "list.yaml"), "list.yaml"),
                      (str(recipes / "binary.yaml"), "binary.yaml"),
                      (str(recipes), "recipes"), ("demo/../paper_A_S256", "demo")]:
        out.append(Case(f"train --config {Path(cfg).name if cfg.startswith('/work') or cfg.startswith(str(w)) else cfg}",
                        vd("train", "--config", cfg, "--data", data, "--out", str(w / "runs" / "cfg"), *tiny),
                        (U,), must))
    out.append(Case("train --config empty.yaml (the defaults: acceptable)",
                    vd("train", "--config", str(recipes / "empty.yaml"), "--data", data, "--out",
                       str(w / "runs" / "cfg_empty"), *tiny), (0, U)))
    for name in ("../../../etc/passwd", "/etc/passwd", "no_such", "demo.yaml/..", "..", "."):
        out.append(Case(f"recipes {name}", vd("recipes", name), (U,), name.strip("./") or None))

    for sc, must in [("99999999", "99999999"), ("0", "0"), ("-32", "-32"), ("abc", "abc"), ("", None), 
                     ("32/32", None), ("nan", "nan"), ("1e3", "1e3")]:
        argv = [a for a in ev if a not in ("--scales", "32")]
        out.append(Case(f"eval --scales {sc!r}", vd(*argv, "--scales", sc, "--checkpoint", str(run_dir)), (U,), must))
    argv = [a for a in ev if a not in ("--scales", "32")]
    out.append(Case("eval --scales '32,,' (empty items skipped: acceptable)",
                    vd(*argv, "--scales", "32,,", "--checkpoint", str(run_dir)), (0, U)))
    for extra, must in [(["--protocol", "bogus"], "bogus"), (["--limit", "-1"], "-1"), (["-b", "0"], "0"),
                        (["--crop-batch", "-4"], "-4"), (["--posteriors-dtype", "int8"], "int8"),
                        (["--device", "cuda:7"], "cuda"), (["-j", "-1"], "-1")]:
        out.append(Case(f"eval {' '.join(extra)}", vd(*ev, "--checkpoint", str(run_dir), *extra), (U,), must))

    bad = damaged_data(f)
    for key, codes, must in [("empty", (D,), "empty"), ("noclasses", (D,), "noclasses"), ("afile", (D,), "afile"),
                             ("onlytrain", (D,), "onlytrain"), ("zeroimgs", (D, 0), None),
                             ("link", (0,), None), ("html", (0,), None), ("fileclass", (0,), None),
                             ("loop", (0,), None), ("dangling", (0, D), None)]:
        out.append(Case(f"eval --data {key}", vd(*[a if a != data else str(bad[key]) for a in ev],
                                                 "--checkpoint", str(run_dir)), codes, must))
    out.append(Case("eval --data missing", vd(*[a if a != data else str(w / "nodata") for a in ev],
                                              "--checkpoint", str(run_dir)), (D,), "nodata"))
    for key, codes, must in [("empty", (D,), "empty"), ("noclasses", (D,), "noclasses"), ("afile", (D,), "afile"),
                             ("link", (0,), None), ("html", (0,), None), ("oneclass", (D, U, 0), None)]:
        train(f"train --data {key}", [], codes, must, data_dir=bad[key])
    train("train --data missing", [], (D,), "nodata", data_dir=w / "nodata")

    outfile = w / "a_file"
    outfile.write_text("x")
    train("train --out onto a file", [], (IO, R, U), "a_file", out_dir=str(outfile))
    train("train --out under a file", [], (IO, U), "a_file", out_dir=str(outfile / "run"))
    train("train --out under /sys or a read-only folder", [], (IO,), None, out_dir=str(ro / "run"))
    for extra, must in [(["--json", str(ro / "e.json")], "e.json"), (["--json", str(w)], w.name),
                        (["--json", str(outfile / "e.json")], "a_file"),
                        (["--save-posteriors", str(ro / "store")], "store"),
                        (["--save-posteriors", str(outfile)], "a_file"),
                        (["--per-image", str(w)], w.name), (["--per-class", str(ro / "c.csv")], "c.csv")]:
        out.append(Case(f"eval {extra[0]} {'read-only' if str(ro) in extra[1] else 'onto a folder' if extra[1] == str(w) else 'onto/under a file'}",
                        vd(*ev, "--checkpoint", str(run_dir), *extra), (IO,), must))
    out.append(Case("export --out onto a file", vd("export", "--checkpoint", str(run_dir), "--format", "safetensors",
                                                   "--out", str(outfile)), (IO,), "a_file"))
    out.append(Case("export --out read-only", vd("export", "--checkpoint", str(run_dir), "--format", "safetensors",
                                                 "--out", str(ro / "exp")), (IO,), None))
    out.append(Case("export --format bogus", vd("export", "--checkpoint", str(run_dir), "--format", "bogus",
                                                "--out", str(w / "exp2")), (U,), "bogus"))
    out.append(Case("export --crop-size 0", vd("export", "--checkpoint", str(run_dir), "--format", "safetensors",
                                               "--crop-size", "0", "--out", str(w / "exp3")), (U,), "0"))
    img = str(next((f["data"] / "val" / CLASSES[0]).glob("*.JPEG")))
    out.append(Case("predict --json onto a folder", vd("predict", "--checkpoint", str(run_dir), "--device", "cpu",
                                                       "--json", str(w), img), (IO,), w.name))

    for extra, codes, must in [(["--foo"], (U,), "--foo"), (["--nproc_per_node", "2"], (U,), "nproc_per_node"),
                               (["--data-path", data], (0,), None), (["--gpus", "1"], (U,), "gpus"),
                               (["--resume", str(run_dir), "--overwrite"], (U,), None),
                               (["--resume", str(run_dir), "--auto-resume"], (U,), None)]:
        train(f"train {' '.join(x if not x.startswith('/') else Path(x).name for x in extra)}", extra, codes, must)
    out += [
        Case("unknown command", vd("trian"), (U,), "trian"),
        Case("eval --lr (another command's flag)", vd(*ev, "--checkpoint", str(run_dir), "--lr", "0.1"), (U,), "--lr"),
        Case("eval without --checkpoint", vd(*ev), (U,), "checkpoint"),
        Case("predict without images", vd("predict", "--checkpoint", str(run_dir)), (U,), None),
    ]

    empty = w / "resume_empty"
    empty.mkdir()
    out += [
        Case("train --resume a folder with no run", vd("train", "--resume", str(empty)), (R,), empty.name),
        Case("train --resume a missing folder", vd("train", "--resume", str(w / "nowhere")), (R,), "nowhere"),
        Case("train --resume a file", vd("train", "--resume", str(outfile)), (R, U), "a_file"),
    ]
    other = shutil.copytree(run_dir, w / "resume_other")
    out.append(Case("train --resume with another recipe", vd("train", "--resume", str(other), "--config", "paper_A_S256",
                                                             "--data", data), (K, U), None))
    train("train into a folder holding a run", [], (R,), run_dir.name, out_dir=str(w / "resume_other2"))
    shutil.copytree(run_dir, w / "resume_other2")
    trunc = shutil.copytree(run_dir, w / "resume_trunc")
    (trunc / "last.pt").write_bytes((run_dir / "last.pt").read_bytes()[:1000])
    out.append(Case("train --resume with a truncated last.pt", vd("train", "--resume", str(trunc)), (K,), "last.pt"))
    cfg = shutil.copytree(run_dir, w / "resume_cfg")
    (cfg / "config.yaml").write_text("model: [unclosed\n")
    out.append(Case("train --resume with a damaged config.yaml", vd("train", "--resume", str(cfg)), (U, K), "config.yaml"))
    onlybest = shutil.copytree(run_dir, w / "resume_onlybest")
    (onlybest / "last.pt").unlink()
    out.append(Case("train --resume with best.pt but no last.pt", vd("train", "--resume", str(onlybest)), (R,),
                    "last.pt"))

    d = bad["d"]
    for name, path, codes, must in [("a folder", f["data"] / "val", (U, D), "val"), ("a missing file", d / "nope.jpg",
                                    (D,), "nope.jpg"), ("an HTML page named .jpg", d / "html.jpg", (D,), "html.jpg"),
                                    ("a zero-byte .jpg", d / "zero.jpg", (D,), "zero.jpg"),
                                    ("a truncated JPEG", d / "trunc.jpg", (D, 0), None)]:
        out.append(Case(f"predict {name}", vd("predict", "--checkpoint", str(run_dir), "--device", "cpu", str(path)),
                        codes, must))
    for k, codes in (("0", (U,)), ("-1", (U,)), ("99", (U, 0))):
        out.append(Case(f"predict --topk {k}", vd("predict", "--checkpoint", str(run_dir), "--device", "cpu",
                                                  "--topk", k, img), codes, None if codes == (U, 0) else k))
    out += [
        Case("reproduce --tables 9", vd("reproduce", "--data", data, "--out", str(w / "rep"), "--tables", "9",
                                        "--dry-run"), (U,), "9"),
        Case("reproduce --out onto a file", vd("reproduce", "--data", data, "--out", str(outfile), "--profile", "mini",
                                               "--dry-run"), (IO, U), "a_file"),
        Case("reproduce --images-per-s -5", vd("reproduce", "--data", data, "--out", str(w / "rep2"), "--dry-run",
                                               "--images-per-s", "-5"), (U,), "-5"),
        Case("reproduce --bench a damaged file", vd("reproduce", "--data", data, "--out", str(w / "rep3"), "--dry-run",
                                                    "--bench", str(recipes / "bad.yaml")), (U, D, K), "bad.yaml"),
    ]
    return out


def bad_checkpoints_subset(f: dict) -> list[tuple[str, Path, str | None]]:
    """A few of the damaged files, for predict, export and train --pretrained too."""
    d = f["w"] / "ckpts"
    picks = [("pt truncated", d / "half.pt", "half.pt"), ("pt pickle bomb", d / "bomb.pt", "bomb.pt"),
             ("safetensors forged spec.width=64", d / "width64.safetensors", "width"),
             ("pt forged NaN weight", d / "nanw.pt", None)]
    return picks


def judge(c: Case, rc, err: str) -> tuple[bool, str]:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    if rc is None:
        return False, "hang (timeout)"
    if c.payload is not None and c.payload.exists():
        return False, "a planted payload ran"
    if "Traceback (most recent call last)" in err:
        return False, "traceback"
    if rc not in c.codes:
        return False, f"exit {rc}, expected {'/'.join(map(str, c.codes))}"
    if rc != 0:
        if not last:
            return False, "no message"
        if c.must and c.must.lower() not in last.lower():
            return False, f"last line does not name {c.must!r}"
    return True, ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per command (default 120)")
    p.add_argument("--jobs", type=int, default=2, help="commands run at once (default 2)")
    p.add_argument("--only", default=None, help="run only the cases whose name holds this text")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path.cwd()), os.environ.get("PYTHONPATH")]))
    f = setup(a.out.resolve(), a.timeout)
    todo = [c for c in cases(f) if a.only is None or a.only in c.name]

    def one(c: Case) -> Case:
        rc, _, err, secs = run(c.argv, a.timeout, f["w"])
        good, why = judge(c, rc, err)
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        c.result = {"input": c.name, "argv": c.argv[2:], "exit": rc, "expected": list(c.codes),
                    "last_stderr_line": lines[-1] if lines else "", "verdict": "GOOD" if good else "BAD",
                    "why": why, "seconds": round(secs, 1)}
        if not good:
            c.result["stderr_tail"] = err[-2000:]
        return c

    with ThreadPoolExecutor(max(1, a.jobs)) as pool:
        done = list(pool.map(one, todo))
    bad = [c for c in done if c.result["verdict"] == "BAD"]
    for c in done:
        r = c.result
        print(f"{r['verdict']:4} {str(r['exit']):>4}  {r['input'][:60]:60}  {r['last_stderr_line'][:110]}"
              + (f"  [{r['why']}]" if r["why"] else ""))
    print(f"\n{len(done)} bad inputs tried, {len(bad)} BAD, {len(done) - len(bad)} GOOD")
    (a.out / "hostile_results.json").write_text(json.dumps(
        {"tried": len(done), "bad": len(bad), "results": [c.result for c in done]}, indent=1) + "\n")
    return min(len(bad), 100)


if __name__ == "__main__":
    sys.exit(main())
