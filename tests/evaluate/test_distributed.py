"""Distributed evaluation over 2 gloo processes on a dataset of 7 images (odd on purpose)."""

import json
import multiprocessing as mp
import os
import socket
import traceback

import pytest
import torch

from tests.evaluate.conftest import tiny_net
from tests.evaluate.test_evaluator import data_cfg, val_samples
from verydeep.evaluate import EvalOptions, RowSpec, evaluate_rows

ROWS = [RowSpec("center", (32,)), RowSpec("dense+multicrop", (32, 48))]
OPTIONS = EvalOptions(batch_size=2, progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
        torch.set_num_threads(1)
        from pathlib import Path

        from verydeep.parallel.distributed import init_distributed, shutdown

        init_distributed("cpu", "gloo", timeout_s=60)
        cfg = data_cfg(Path(root))
        samples, classes = val_samples(cfg)
        res = evaluate_rows(tiny_net(), cfg, samples, ROWS, classes=classes, options=OPTIONS)
        payload = {"rows": res.rows, "top5": [r.top5.tolist() for r in res.results]}
        Path(out, f"rank{rank}.json").write_text(json.dumps(payload))
        shutdown()
    except BaseException:
        from pathlib import Path

        Path(out, f"rank{rank}.error").write_text(traceback.format_exc())
        raise


@pytest.mark.slow
def test_two_gloo_processes_count_every_image_once(dataset, tmp_path):
    cfg = data_cfg(dataset)
    samples, classes = val_samples(cfg)
    assert len(samples) % 2 == 1
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, str(dataset), str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    for p in procs:
        if p.is_alive():
            p.kill()
    failures = []
    for rank, p in enumerate(procs):
        err = tmp_path / f"rank{rank}.error"
        if p.exitcode != 0 or err.exists():
            detail = err.read_text() if err.exists() else "no traceback (timed out or killed)"
            failures.append(f"rank {rank} exit code {p.exitcode}:\n{detail}")
    assert not failures, "\n".join(failures)

    single = evaluate_rows(tiny_net(), cfg, samples, ROWS, classes=classes, options=OPTIONS)
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for g in got:
        for row, ref, top5, ref_res in zip(g["rows"], single.rows, g["top5"], single.results):
            assert row["images"] == len(samples) == 7
            assert row["top1_error"] == pytest.approx(ref["top1_error"])
            assert row["top5_error"] == pytest.approx(ref["top5_error"])
            assert top5 == ref_res.top5.tolist()  # every image evaluated, none twice


def _save_store(info, root: str, out: str) -> bool:
    """One rank of ``--save-posteriors`` (the process group joined by ``run_ranks``): whether
    this rank kept the store."""
    from pathlib import Path

    cfg = data_cfg(Path(root))
    samples, classes = val_samples(cfg)
    res = evaluate_rows(tiny_net(), cfg, samples, ROWS, classes=classes, options=OPTIONS,
                        save_posteriors=Path(out) / "store")
    return res.store is not None


@pytest.mark.slow
def test_two_gloo_processes_save_one_store_of_every_image(dataset, tmp_path):
    """--save-posteriors under two ranks: rank 0's store holds all 7 images, as one process's does."""
    import numpy as np

    from tests.parallel.launch import run_ranks
    from verydeep.evaluate.posterior_store import PosteriorStore

    cfg = data_cfg(dataset)
    samples, classes = val_samples(cfg)
    assert run_ranks(_save_store, 2, str(dataset), str(tmp_path), timeout=120) == [True, False]  # rank 0 keeps it
    single = evaluate_rows(tiny_net(), cfg, samples, ROWS, classes=classes, options=OPTIONS,
                           save_posteriors=tmp_path / "single")
    two, one = PosteriorStore.open(tmp_path / "store"), PosteriorStore.open(tmp_path / "single")
    assert sorted(two.index["entries"]) == sorted(one.index["entries"]) and len(two.index["entries"]) == 5
    everything = np.arange(len(samples))
    for name in one.index["entries"]:
        assert two.read(name, everything).sum(1).tolist() == pytest.approx([1.0] * 7, abs=1e-5)  # no image left out
        assert np.allclose(two.read(name, everything), one.read(name, everything), atol=1e-6)
    assert [r["row"]["top1_error"] for r in two.rows] == [r["top1_error"] for r in single.rows]
    assert two.samples == one.samples and two.index["labels"] == one.index["labels"]
