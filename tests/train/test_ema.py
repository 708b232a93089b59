"""Model EMA (torch.optim.swa_utils.AveragedModel): the average by hand, in a run, in eval."""

import json

import pytest
import torch

from tests.train.conftest import TINY_OVERRIDES
from verydeep.config import load_config
from verydeep.models import create_model
from verydeep.train.ema import ModelEMA
from verydeep.train.loop import train


def test_ema_weights_are_the_hand_computed_average():
    torch.manual_seed(0)
    model = create_model("A", num_classes=3, width=1 / 16, head_size=1, fc_features=8, batch_norm=True)
    ema = ModelEMA(model, decay=0.75)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    seen = []  # the weights (and BN statistics) after each optimiser step
    for step in range(4):
        x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, step % 3])
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        ema.update(model)
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    assert ema.updates == 4
    averaged = ema.state_dict()
    for key in ("features.0.weight", "classifier.6.bias", "features.1.running_mean"):
        w = [s[key] for s in seen]
        # the first update copies, then e <- 0.75 e + 0.25 w
        expected = ((w[0] * 0.75 + 0.25 * w[1]) * 0.75 + 0.25 * w[2]) * 0.75 + 0.25 * w[3]
        torch.testing.assert_close(averaged[key], expected)
        assert not torch.equal(averaged[key], w[-1])
    assert set(averaged) == set(model.state_dict())  # the model's keys: loads into a plain VGG

    again = ModelEMA(model, decay=0.75)
    again.load_state_dict(averaged, ema.updates)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(again.logits(x), ema.logits(x))
    assert again.updates == 4


def test_a_run_validates_checkpoints_and_evaluates_its_ema(tiny_imagenet, tmp_path, capsys):
    from verydeep.cli.main import main
    from verydeep.checkpoint import load as load_checkpoint

    cfg = load_config(None, [*TINY_OVERRIDES, f"data.root={tiny_imagenet}", "train.ema_decay=0.5",
                             "train.plot=false", "train.epochs=1"])
    train(cfg, tmp_path / "run")
    val = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in val if r["kind"] == "val"]
    assert {"ema_val_loss", "ema_val_top1_error", "ema_val_top5_error"} <= set(val[-1])
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt.train["ema_updates"] == 4 and set(ckpt.ema) == set(ckpt.weights)
    assert any(not torch.equal(ckpt.ema[k], ckpt.weights[k]) for k in ckpt.weights)
    capsys.readouterr()
    rows = {}
    for extra in ([], ["--ema"]):
        out = tmp_path / f"eval{len(extra)}.json"
        assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--data", str(tiny_imagenet), "--protocol",
                     "center", "--scales", "32", "--no-flip", "--json", str(out), *extra]) == 0
        report = json.loads(out.read_text())
        rows[bool(extra)] = report["rows"][0]
        assert report["header"]["checkpoints"][0]["weights"] == ("ema" if extra else "model")
    # the single-crop protocol without flips is what validation measures: the same figures
    assert rows[False]["top1_error"] == pytest.approx(val[-1]["val_top1_error"], abs=1e-3)
    assert rows[True]["top1_error"] == pytest.approx(val[-1]["ema_val_top1_error"], abs=1e-3)


def test_ema_is_refused_where_ranks_hold_parts_of_the_net(tiny_imagenet, tmp_path):
    from verydeep.config import ConfigError

    cfg = load_config(None, [*TINY_OVERRIDES, f"data.root={tiny_imagenet}", "train.ema_decay=0.9",
                             "parallel.tensor_parallel_fc=true"])
    with pytest.raises(ConfigError, match="data-parallel"):
        train(cfg, tmp_path / "run")
    with pytest.raises(ConfigError, match="ema_decay"):
        load_config(None, ["train.ema_decay=1.5"])
