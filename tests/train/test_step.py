"""The training step: its criterion, and its non-finite guard: a planted inf/NaN loss or
gradient never reaches the weights or the optimiser state, with no host read on the fused
(CUDA) path; weights the update made non-finite are reported; the meter reports both."""

from __future__ import annotations

import math

import pytest
import torch

from verydeep.errors import EXIT_DIVERGED
from verydeep.models import create_model
from verydeep.parallel.config import ParallelConfig
from verydeep.parallel.distributed import DistInfo
from verydeep.parallel.strategy import build_strategy
from verydeep.train import step as step_module
from verydeep.training_config import OptimConfig, ScheduleConfig
from verydeep.train.metrics import TrainMeter
from verydeep.train.optim import build_optimizer, kernel_choice, parameter_groups
from verydeep.train.schedules import LRSchedule
from verydeep.train.loss import classification_loss
from verydeep.train.nonfinite import APPLIED, DIVERGED, SKIPPED, NonFiniteLossError, NonFiniteWeights, nonfinite_flag
from verydeep.train.step import StepSettings, skips_on_device, train_step


def _setup(optimizer="sgd", fused=False, seed=0):
    torch.manual_seed(seed)
    model = create_model("A", num_classes=4, width=1 / 16, head_size=1, fc_features=16, dropout=0.0)
    strategy = build_strategy(model, ParallelConfig(), DistInfo(), crop_size=32)
    cfg = OptimConfig(name=optimizer, lr=0.05)
    if fused:  # the run's choice for plain parameters: the kernels that take found_inf
        opt = build_optimizer(model, cfg, torch.device("cpu"))
        assert all(group["fused"] for group in opt.param_groups)
    else:  # the unfused per-tensor loops (DTensor shards' kernels on the CPU): the host check
        cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[optimizer]
        kwargs = {"momentum": cfg.momentum} if optimizer == "sgd" else {}
        opt = cls(parameter_groups(model, cfg), lr=cfg.lr, foreach=False, **kwargs)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    schedule = LRSchedule(ScheduleConfig(name="constant"), cfg.lr, steps_per_epoch=10, epochs=1)
    gen = torch.Generator().manual_seed(1)
    batch = torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, 4, (4,), generator=gen)
    return model, strategy, opt, scaler, schedule, batch


def _snapshot(model, opt):
    params = [p.detach().clone() for p in model.parameters()]
    state = [{k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()} for s in opt.state.values()]
    return params, state


def _assert_unchanged(before, model, opt):
    params, state = before
    for a, b in zip(params, model.parameters()):
        assert torch.equal(a, b)
    assert len(state) == len(opt.state)
    for old, new in zip(state, opt.state.values()):
        for k, v in old.items():
            assert torch.equal(v, new[k]) if torch.is_tensor(v) else v == new[k], k


def _poison(monkeypatch, value=float("inf")):
    """The loss comes back non-finite while the gradients stay finite: only the guard can stop them."""
    real = step_module.forward_backward
    monkeypatch.setattr(step_module, "forward_backward", lambda *a, **k: real(*a, **k) * value)


def _step(strategy, opt, scaler, schedule, batch, n, **settings):
    return train_step(strategy, opt, scaler, schedule, *batch, step=n, settings=StepSettings(**settings)).loss


class NoHostReads:
    """Fails the test on any read of a tensor's value back to Python (the host syncs on CUDA)."""

    NAMES = ("item", "tolist", "__bool__", "__float__", "__int__")

    def __init__(self, monkeypatch):
        for name in self.NAMES:
            monkeypatch.setattr(torch.Tensor, name, self._refuse(name))

    @staticmethod
    def _refuse(name):
        def refuse(*_a, **_k):
            raise AssertionError(f"host read ({name}) in the training step")
        return refuse


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_planted_inf_loss_leaves_weights_and_state_unchanged_without_a_host_read(monkeypatch, optimizer):
    model, strategy, opt, scaler, schedule, batch = _setup(optimizer, fused=True)
    assert skips_on_device(opt, scaler)
    for n in range(2):  # momentum / moments exist and are non-zero
        _step(strategy, opt, scaler, schedule, batch, n)
    before = _snapshot(model, opt)
    with monkeypatch.context() as m:
        _poison(m)
        NoHostReads(m)
        loss = _step(strategy, opt, scaler, schedule, batch, 2, grad_clip=1.0)
    assert math.isinf(loss.item())
    _assert_unchanged(before, model, opt)
    assert all(p.grad is None for p in model.parameters())
    # and the next finite step trains on
    assert math.isfinite(_step(strategy, opt, scaler, schedule, batch, 3).item())
    assert not torch.equal(before[0][0], next(model.parameters()))


def test_a_skipped_first_step_leaves_fused_sgd_as_if_it_had_not_happened(monkeypatch):
    """Fused SGD fills its momentum buffers on its first step; a dropped first step must not
    leave them uninitialised for the second."""
    model, strategy, opt, scaler, schedule, batch = _setup("sgd", fused=True)
    fresh, fresh_strategy, fresh_opt, *_ = _setup("sgd", fused=True)
    with monkeypatch.context() as m:
        _poison(m, float("nan"))
        _step(strategy, opt, scaler, schedule, batch, 0)
    _step(strategy, opt, scaler, schedule, batch, 1)
    _step(fresh_strategy, fresh_opt, scaler, schedule, batch, 1)
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_host_path_never_steps_on_a_non_finite_loss(monkeypatch, policy):
    """The unfused optimisers (DTensor shards) decide on the host: stop raises at once, skip
    drops the update."""
    model, strategy, opt, scaler, schedule, batch = _setup("sgd")
    assert not skips_on_device(opt, scaler)
    _step(strategy, opt, scaler, schedule, batch, 0)
    before = _snapshot(model, opt)
    _poison(monkeypatch, float("nan"))
    if policy == "stop":
        with pytest.raises(NonFiniteLossError, match="loss is nan at step 1") as e:
            _step(strategy, opt, scaler, schedule, batch, 1, nonfinite="stop")
        assert e.value.exit_code == EXIT_DIVERGED and math.isnan(e.value.value)
    else:
        assert math.isnan(_step(strategy, opt, scaler, schedule, batch, 1, nonfinite="skip").item())
    _assert_unchanged(before, model, opt)


def test_device_and_host_paths_take_the_same_finite_steps():
    """Fused kernels on finite steps do what the plain loops do (to rounding)."""
    plain, s1, o1, scaler, schedule, batch = _setup("sgd")
    fused, s2, o2, *_ = _setup("sgd", fused=True)
    for n in range(3):
        _step(s1, o1, scaler, schedule, batch, n, grad_clip=0.5)
        _step(s2, o2, scaler, schedule, batch, n, grad_clip=0.5)
    for a, b in zip(plain.parameters(), fused.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_clipping_matches_torch_and_stays_on_the_device():
    model, strategy, opt, scaler, schedule, batch = _setup("sgd")
    ref = create_model("A", num_classes=4, width=1 / 16, head_size=1, fc_features=16, dropout=0.0)
    ref.load_state_dict(model.state_dict())
    for net in (model, ref):
        torch.nn.functional.cross_entropy(net(batch[0]), batch[1]).backward()
    total = strategy.clip_grad_norm_(0.01)
    ref_total = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.01)
    torch.testing.assert_close(total.float(), ref_total)
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad)


def test_optimiser_kernels_per_device(tmp_path):
    """Fused for plain parameters on CPU and CUDA; DTensor shards keep torch's unfused kernels."""
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert kernel_choice(params, torch.device("cpu")) == {"fused": True}
    assert kernel_choice(params, torch.device("cuda")) == {"fused": True}
    dist = torch.distributed
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        mesh = dist.device_mesh.init_device_mesh("cpu", (1,))
        shard = torch.nn.Parameter(dist.tensor.distribute_tensor(torch.zeros(2), mesh))
        assert kernel_choice([params[0], shard], torch.device("cpu")) == {"foreach": False}
        assert kernel_choice([params[0], shard], torch.device("cuda")) == {"foreach": True}
    finally:
        dist.destroy_process_group()
    for name in ("sgd", "adam", "adamw"):
        opt = build_optimizer(torch.nn.Linear(2, 2), OptimConfig(name=name), torch.device("cpu"))
        assert all(group["fused"] for group in opt.param_groups)


def test_meter_reports_the_mean_of_applied_steps_and_the_skipped_ones():
    meter = TrainMeter(torch.device("cpu"))
    # unchecked steps (status None): a non-finite loss counts as skipped
    for step, value in enumerate([1.0, float("nan"), 3.0, float("inf")]):
        meter.add(step, torch.tensor(value, dtype=torch.float64), images=2)
    assert meter.take_skipped() == [(1, pytest.approx(float("nan"), nan_ok=True), SKIPPED), (3, float("inf"), SKIPPED)]
    loss, images_per_s, skipped = meter.report()
    assert loss == 2.0 and skipped == [] and images_per_s > 0
    meter.add(4, torch.tensor(float("nan")), images=2)
    loss, _, skipped = meter.report()
    assert loss is None and [s for s, *_ in skipped] == [4]
    # checked steps: a finite loss whose gradient was non-finite is skipped and not averaged
    for step, (value, status) in enumerate([(5.0, APPLIED), (7.0, SKIPPED), (9.0, DIVERGED)], start=5):
        meter.add(step, torch.tensor(value), images=2, status=torch.tensor(float(status)))
    loss, _, skipped = meter.report()
    assert loss == 5.0 and skipped == [(6, 7.0, SKIPPED), (7, 9.0, DIVERGED)]


def _plant_inf_gradient(monkeypatch, value=float("inf")):
    """One element of one gradient becomes ``value`` after backward; the loss stays finite."""
    real = step_module.forward_backward

    def planted(strategy, *a, **k):
        loss = real(strategy, *a, **k)
        grads = [p.grad for p in strategy.parameters() if p.grad is not None]
        (g := grads[len(grads) // 2])[(0,) * g.dim()] = value  # any memory format
        return loss

    monkeypatch.setattr(step_module, "forward_backward", planted)


def _step_counts(opt):
    return [float(s["step"]) for s in opt.state.values() if "step" in s]


@pytest.mark.parametrize("fused", [True, False], ids=["device", "host"])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_planted_inf_gradient_leaves_weights_momentum_and_step_counts_unchanged(monkeypatch, optimizer, fused):
    """A finite loss with one inf (or NaN) gradient element: the update is dropped under skip,
    with no host read on the fused path, and the step says so in its status."""
    model, strategy, opt, scaler, schedule, batch = _setup(optimizer, fused=fused)
    for n in range(2):
        _step(strategy, opt, scaler, schedule, batch, n)
    before, counts = _snapshot(model, opt), _step_counts(opt)
    assert optimizer == "sgd" or counts == [2.0] * len(counts)
    with monkeypatch.context() as m:
        _plant_inf_gradient(m, float("inf") if optimizer == "sgd" else float("nan"))
        if fused:
            NoHostReads(m)
        result = train_step(strategy, opt, scaler, schedule, *batch, step=2,
                            settings=StepSettings(nonfinite="skip", grad_clip=1.0))
    assert math.isfinite(result.loss.item()) and result.status.item() == SKIPPED
    _assert_unchanged(before, model, opt)
    assert _step_counts(opt) == counts


def test_planted_inf_gradient_under_stop_raises_on_the_host_path(monkeypatch):
    model, strategy, opt, scaler, schedule, batch = _setup("sgd")
    _step(strategy, opt, scaler, schedule, batch, 0)
    before = _snapshot(model, opt)
    _plant_inf_gradient(monkeypatch)
    with pytest.raises(NonFiniteLossError, match="a gradient is non-finite at step 1 .loss [0-9.]+.") as e:
        _step(strategy, opt, scaler, schedule, batch, 1, nonfinite="stop")
    assert e.value.exit_code == EXIT_DIVERGED
    _assert_unchanged(before, model, opt)


@pytest.mark.parametrize("fused", [True, False], ids=["device", "host"])
def test_an_update_that_leaves_non_finite_weights_is_reported_as_diverged(fused):
    """Finite loss and gradients, an absurd learning rate: the weights overflow. The step
    cannot take the update back, so it reports a diverged run (the device path in its status,
    the host path at once), whatever the policy."""
    model, strategy, opt, scaler, _, batch = _setup("sgd", fused=fused)
    schedule = LRSchedule(ScheduleConfig(name="constant"), 1e38, steps_per_epoch=10, epochs=1)
    with torch.no_grad():
        next(model.parameters()).mul_(1e30)  # large but finite: the update overflows
    if fused:
        result = train_step(strategy, opt, scaler, schedule, *batch, step=0, settings=StepSettings(nonfinite="skip"))
        assert result.status.item() == DIVERGED
    else:
        with pytest.raises(NonFiniteWeights, match=r"the weights \(or batch-norm statistics\) became non-finite at step 0") as e:
            train_step(strategy, opt, scaler, schedule, *batch, step=0, settings=StepSettings(nonfinite="skip"))
        assert e.value.exit_code == EXIT_DIVERGED


def test_nonfinite_flag_sees_every_dtype_and_changes_nothing():
    finite = [torch.randn(3, dtype=torch.float64), torch.randn(2, 2), torch.randn(4).bfloat16()]
    copies = [t.clone() for t in finite]
    assert nonfinite_flag(finite, torch.device("cpu")).item() == 0.0
    assert all(torch.equal(a, b) for a, b in zip(finite, copies))
    for bad in (float("inf"), float("-inf"), float("nan")):
        tensors = [t.clone() for t in finite]
        tensors[1][1, 0] = bad
        assert nonfinite_flag(tensors, torch.device("cpu")).item() == 1.0


def test_the_criterion_is_cross_entropy_with_smoothing_and_soft_labels():
    logits = torch.tensor([[2.0, 0.0, -1.0]], dtype=torch.bfloat16)
    log_p = torch.log_softmax(logits.float(), 1)[0]
    # label smoothing 0.3 over 3 classes: target 0.8 on the class, 0.1 elsewhere (computed by hand)
    expected = -(0.8 * log_p[0] + 0.1 * log_p[1] + 0.1 * log_p[2])
    loss = classification_loss(0.3)(logits, torch.tensor([0]))
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected)
    soft = torch.tensor([[0.5, 0.5, 0.0]])
    torch.testing.assert_close(classification_loss()(logits, soft), -(0.5 * log_p[0] + 0.5 * log_p[1]))


def test_seed_step_draws_the_masks_torch_manual_seed_draws():
    """Seeding only the step's generators leaves dropout exactly as torch.manual_seed did."""
    from verydeep.train.step import seed_step
    torch.manual_seed(1234)
    expected = torch.nn.functional.dropout(torch.ones(64), 0.5)
    torch.manual_seed(99)  # another state in between
    seed_step(1234, torch.device("cpu"))
    assert torch.equal(torch.nn.functional.dropout(torch.ones(64), 0.5), expected)


def test_the_guard_reads_buffers_replaced_after_its_first_step():
    """The strategy finds the buffer-holding modules once but reads their buffers afresh: a
    running statistic replaced (module.to, a loaded state) is the one checked."""
    model = create_model("vgg11_bn", num_classes=4, width=1 / 16, head_size=1, fc_features=16)
    strategy = build_strategy(model, ParallelConfig(), DistInfo(), crop_size=32)
    first = strategy.floating_buffers()
    assert len(first) == 2 * 8 and all(b.is_floating_point() for b in first)  # 8 BNs: mean, var
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_var = torch.full_like(bn.running_var, float("nan"))
    assert any(b is bn.running_var for b in strategy.floating_buffers())
    assert nonfinite_flag(strategy.floating_buffers(), torch.device("cpu")).item() == 1.0
