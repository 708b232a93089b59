"""Stage 2 holds a chunk of images, not the stored arrays: the peak resident memory a fusion adds
stays far below the size of what it reads.

``python -m tests.evaluate.test_fusion_memory IMAGES CLASSES ENTRIES [DTYPE]`` prints the figure
for any size (docs/evaluation.md quotes 50,000 x 1,000).
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from verydeep.evaluate.posterior_store import Entry, PosteriorStore
from verydeep.evaluate.scoring import CHUNK

MEASURE = """
import json, sys
from verydeep.evaluate.store_fusion import fuse_stores

def status(key):  # kB, from the kernel's account of this process
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))

fuse_stores([sys.argv[2]], chunk=int(sys.argv[3]))  # warm-up on a tiny store: the libraries' one-time allocations
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) restarts from the current RSS
before = status("VmRSS")
fuse_stores([sys.argv[1]], chunk=int(sys.argv[3]))
print(json.dumps({"before_kib": before, "after_kib": status("VmHWM")}))
"""


def write_store(folder: Path, images: int, classes: int, entries: int, dtype: str = "float32") -> int:
    """A store of random posteriors, one row fusing two nets over ``entries`` entries; its bytes."""
    rng = np.random.default_rng(0)
    samples = [(f"img{i}.JPEG", int(rng.integers(classes))) for i in range(images)]
    store = PosteriorStore.create(folder, classes=[f"c{k}" for k in range(classes)], class_names={},
                                  samples=samples, num_classes=classes, nets=["a", "b"], dtype=dtype)
    names = []
    for e in range(entries):
        entry = Entry(e % 2, "dense", 32 + e)
        store.add(entry)
        names.append(entry.name)
        for start in range(0, images, 4096):
            rows = np.arange(start, min(start + 4096, images))
            p = rng.random((len(rows), classes), dtype=np.float32)
            store.write(entry.name, rows, torch.from_numpy(p / p.sum(1, keepdims=True)))
    store.index["rows"] = [{"row": {"protocol": "dense", "scales": [32]},
                            "nets": [[n for n in names if n.startswith(f"net{j}")] for j in range(min(2, entries))]}]
    store.write_index()
    return images * classes * entries * np.dtype(dtype).itemsize


def measure(images: int, classes: int, entries: int, dtype: str = "float32", chunk: int = CHUNK) -> dict:
    """Peak RSS a fresh process adds while fusing a store of that size, and the store's size (MiB)."""
    with tempfile.TemporaryDirectory() as tmp:
        size = write_store(Path(tmp) / "big", images, classes, entries, dtype)
        write_store(Path(tmp) / "tiny", 8, classes, 2, dtype)
        out = subprocess.run([sys.executable, "-c", MEASURE, str(Path(tmp) / "big"), str(Path(tmp) / "tiny"),
                              str(chunk)],
                             capture_output=True, text=True, timeout=600, check=True)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    return {"added_mib": (figures["after_kib"] - figures["before_kib"]) / 1024, "store_mib": size / 2**20}


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's peak-RSS reset")
def test_fusion_memory_is_a_chunk_not_the_store():
    figures = measure(2_000, 2_000, 2, chunk=64)
    # docs/evaluation.md's bound: 16 x 64 x 2000 x 4 B + 100 B x 2000 = 8.4 MB (measured: 7.6 MiB);
    # the store is 30.5 MiB, all of which a fusion holding its arrays would add
    assert figures["store_mib"] > 30 and figures["added_mib"] < 15, figures


if __name__ == "__main__":
    print(json.dumps(measure(*map(int, sys.argv[1:4]), *sys.argv[4:5])))
