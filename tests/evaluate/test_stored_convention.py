"""The input convention travels with the net: a paper recipe trains on Caffe inputs with the
training set's own mean, the run's config and checkpoints record the values, and eval,
predict, export and ``model.init_from`` use (or check) what the checkpoint records, whatever
the dataset's or the new run's settings say."""

import json
import logging

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.evaluate.conftest import write_dataset
from verydeep.checkpoint import load
from verydeep.config import load_config
from verydeep.data import eval_transform, load_image
from verydeep.data.stats import resolve_stats
from verydeep.errors import CheckpointError
from verydeep.evaluate import (
    EvalOptions,
    RowSpec,
    evaluate_rows,
    load_eval_net,
    predict,
)
from verydeep.evaluate.export import export_onnx, export_safetensors
from verydeep.train.loop import train

TINY = ["model.name=A", "model.width=0.0625", "model.fc_features=16", "model.dropout=0.0", "model.init=glorot",
        "model.init_from=null", "data.scale_min=32", "data.scale_max=32", "data.crop_size=32",
        "data.eval_scale=32", "data.eval_crop=32", "data.workers=0", "train.batch_size=7",
        "train.epochs=1", "train.max_iterations=1", "train.tensorboard=false", "train.plot=false",
        "train.device=cpu"]


def test_the_paper_recipe_input_by_hand(tmp_path):
    # Four flat training images: the training set's mean RGB is (0.5, 0.5, 0.5) x 255 = 127.5.
    paths = []
    for k, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]):
        paths.append(str(tmp_path / f"img{k}.png"))
        Image.new("RGB", (8, 8), colour).save(paths[-1])
    cfg = load_config("paper_A_S256", [f"data.index_cache={tmp_path / 'cache'}"])
    assert (cfg.data.normalize, cfg.data.stats_file) == ("caffe", "train")
    data = resolve_stats(cfg.data, paths, progress=False)
    pixels = np.array([[[255, 0, 10], [20, 30, 40]], [[0, 0, 0], [200, 100, 50]]], dtype=np.uint8)
    x = eval_transform(data, scale=2, crop=None)(Image.fromarray(pixels))
    by_hand = torch.tensor(pixels, dtype=torch.float32).permute(2, 0, 1) - 127.5
    torch.testing.assert_close(x, by_hand, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def caffe_run(tmp_path_factory):
    """A one-step run of a paper-convention config: Caffe inputs, the training set's own mean."""
    root = write_dataset(tmp_path_factory.mktemp("data"))
    run = tmp_path_factory.mktemp("runs") / "caffe"
    cfg = load_config("paper_A_S256", [*TINY, f"data.root={root}", f"data.index_cache={root / '.cache'}"])
    train(cfg, run)
    return root, run


def test_the_run_records_the_resolved_convention(caffe_run):
    _, run = caffe_run
    saved = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert saved["normalize"] == "caffe" and saved["stats_file"] is None
    assert saved["mean"] != pytest.approx([0.485, 0.456, 0.406], abs=1e-3)  # not torchvision's constants
    assert load(run / "best.pt").config["data"]["mean"] == saved["mean"]
    net = load_eval_net(run)
    assert net.data.normalize == "caffe" and net.data.mean == pytest.approx(saved["mean"])


def test_eval_and_predict_use_the_checkpoint_convention(caffe_run, no_grad):
    from verydeep.data import DataConfig, discover

    root, run = caffe_run
    # The dataset's own settings say torchvision's convention: the checkpoint's must win.
    dataset_cfg = DataConfig(root=str(root), normalize="mean_std", workers=0, index_cache=str(root / ".cache"))
    splits = discover(dataset_cfg)
    net = load_eval_net(run)
    res = evaluate_rows([net], dataset_cfg, splits.val, [RowSpec("center", (32,))], classes=splits.classes,
                        options=EvalOptions(flip=False, progress=False), keep_posteriors=True).results[0]
    by_hand = torch.stack([torch.softmax(net.model(eval_transform(net.data, 32, 32)(load_image(p))[None]), 1)[0]
                           for p, _ in splits.val])
    torch.testing.assert_close(res.posteriors, by_hand, atol=1e-5, rtol=1e-4)
    # the torchvision convention would give other posteriors: the check has teeth
    other = eval_transform(dataset_cfg, 32, 32)(load_image(splits.val[0][0]))
    assert not torch.allclose(torch.softmax(net.model(other[None]), 1)[0], by_hand[0], atol=1e-3)
    (pred,) = predict([net], [splits.val[0][0]], protocol="center", scales=[32],
                      options=EvalOptions(flip=False, progress=False))
    assert pred["top"][0]["prob"] == pytest.approx(by_hand[0].max().item(), rel=1e-4)


def test_export_records_the_convention(caffe_run, tmp_path):
    import onnx

    _, run = caffe_run
    net = load_eval_net(run)
    back = load_eval_net(export_safetensors(net, tmp_path / "net.safetensors"))
    assert back.data.normalize == "caffe" and back.data.mean == pytest.approx(net.data.mean)
    meta = onnx.load(str(export_onnx(net, tmp_path / "net.onnx"))).metadata_props
    recorded = json.loads(next(m.value for m in meta if m.key == "verydeep"))["preprocessing"]
    assert recorded["normalize"] == "caffe" and recorded["mean"] == pytest.approx(net.data.mean)


def test_init_from_refuses_another_convention_and_warns_on_another_mean(caffe_run, tmp_path, caplog):
    root, run = caffe_run
    base = [*TINY, f"data.root={root}", f"data.index_cache={root / '.cache'}", "model.name=B",
            f"model.init_from={run / 'best.pt'}"]
    with pytest.raises(CheckpointError, match="caffe inputs and this run feeds mean_std"):
        train(load_config(None, [*base, "data.normalize=mean_std"]), tmp_path / "refused")
    assert not (tmp_path / "refused" / "last.pt").exists()
    with caplog.at_level(logging.WARNING):
        train(load_config(None, [*base, "data.normalize=caffe", "data.mean=[0.1,0.2,0.3]"]), tmp_path / "warned")
    assert any("INPUT CONVENTION" in r.message and "differs" in r.message for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the paper's chain: same convention, same mean: silent
        train(load_config("paper_B_S256", [*base, "data.stats_file=train"]), tmp_path / "same")
    assert not any("INPUT CONVENTION" in r.message for r in caplog.records)
