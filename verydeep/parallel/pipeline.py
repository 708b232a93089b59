"""Pipeline parallelism: the net cut into K stages, micro-batches through GPipe or 1F1B.

The cut. The net is a chain of *units*, the smallest pieces a stage boundary may fall
between: one unit per conv (the conv with its batch norm, ReLU, LRN and the max-pool that
closes its block) and one per FC layer (FC1 carries the avg-pool and flatten before it; each
FC its ReLU and dropout). Each unit's cost is its forward FLOPs at the training crop size
(2 * multiply-adds of convs and FCs; element-wise layers count as zero: under 1% and memory
bound), an estimate the backward pass scales by about the same factor for every unit. The
split minimises the most expensive stage (exact, by dynamic programming over contiguous
partitions). The result is logged: which layers, cost share and parameter share per stage.
For VGG the conv layers carry the FLOPs and FC1 the parameters, so the last stage holds most
of the weights (~90% for 2 stages) with a balanced share of the compute.

The stages. Each rank builds its stage as an ``nn.Module`` whose ``features`` and
``classifier`` are ``nn.Sequential`` keyed by the original indices, so a stage's
``state_dict`` keys are the torchvision keys of the layers it holds: gathering the stages'
dicts gives back the full VGG state dict. ``torch.distributed.pipelining.PipelineStage`` wraps
it; ``ScheduleGPipe`` or ``Schedule1F1B`` runs ``microbatches`` micro-batches per step.

Data parallelism. With ``world = dp * K`` processes a 2-D ``DeviceMesh`` ("dp", "pp") puts the
K stages of one pipeline on consecutive ranks (rank = dp_index * K + stage); each stage is
wrapped in DDP over its "dp" group, so its gradients are averaged over the dp replicas.
Loss: the schedule applies the step's criterion (``loss_fn``) to each micro-batch and divides
the gradients by the number of micro-batches; DDP divides by dp: the gradient of the mean over
the global batch.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe
from torch.nn.parallel import DistributedDataParallel

from verydeep.models.vgg import VGG
from verydeep.models.weights import clean_state_dict
from verydeep.parallel.distributed import DistInfo
from verydeep.parallel.base import ParallelStrategy, check_full_state_dict
from verydeep.runtime import autocast

log = logging.getLogger(__name__)

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}


# --- the cost model and the split ----------------------------------------------------------

@dataclass(frozen=True)
class Unit:
    """The smallest piece a stage boundary may fall between."""

    names: tuple[str, ...]  # module names in the VGG: "features.3", "avgpool", "classifier.0"
    label: str  # e.g. "conv3-128 @112" or "fc 25088->4096"
    flops: int  # forward FLOPs per image at the crop size
    params: int


def vgg_units(model: VGG, crop_size: int = 224) -> list[Unit]:
    """The chain of units of ``model`` with FLOPs per image at ``crop_size`` x ``crop_size``.

    Works on a model built on the ``meta`` device (no memory): only shapes are read.
    """
    units: list[Unit] = []
    names: list[str] = []
    label, flops, params, size = "", 0, 0, crop_size

    def close() -> None:
        nonlocal names, label, flops, params
        if names:
            units.append(Unit(tuple(names), label, flops, params))
        names, label, flops, params = [], "", 0, 0

    for idx, m in enumerate(model.features):
        if isinstance(m, nn.Conv2d):
            close()
            k = m.kernel_size[0]
            size = (size + 2 * m.padding[0] - k) // m.stride[0] + 1
            flops = 2 * k * k * m.in_channels * m.out_channels * size * size
            label = f"conv{k}-{m.out_channels} @{size}"
        elif isinstance(m, nn.MaxPool2d):
            size //= 2
        names.append(f"features.{idx}")
        params += sum(p.numel() for p in m.parameters())
    close()
    cls = model.classifier
    for i, j in ((0, 3), (3, 6), (6, len(cls))):
        fc = cls[i]
        names = (["avgpool"] if i == 0 else []) + [f"classifier.{n}" for n in range(i, j)]
        units.append(Unit(tuple(names), f"fc {fc.in_features}->{fc.out_features}",
                          2 * fc.in_features * fc.out_features,
                          sum(p.numel() for n in range(i, j) for p in cls[n].parameters())))
    return units


def balanced_split(costs: list[float], stages: int) -> list[int]:
    """Start index of each stage: contiguous parts minimising the most expensive part.

    Exact (dynamic programming, O(n^2 K)); ties go to the earliest cut.
    """
    n = len(costs)
    if stages < 1:
        raise ValueError(f"stages must be >= 1, got {stages}")
    if stages > n:
        raise ValueError(f"cannot cut {n} splittable units (convs and FC layers) into {stages} stages")
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = math.inf
    # best[k][i]: the smallest max-part cost of units[:i] cut into k parts; cut[k][i] its last start
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for k in range(1, stages + 1):
        for i in range(k, n + 1):
            for j in range(k - 1, i):
                v = max(best[k - 1][j], prefix[i] - prefix[j])
                if v < best[k][i]:
                    best[k][i], cut[k][i] = v, j
    starts, i = [], n
    for k in range(stages, 0, -1):
        i = cut[k][i]
        starts.append(i)
    return starts[::-1]


@dataclass(frozen=True)
class StagePlan:
    units: tuple[Unit, ...]
    flops_share: float
    params_share: float

    @property
    def names(self) -> list[str]:
        return [n for u in self.units for n in u.names]

    def describe(self, index: int) -> str:
        first, last = self.units[0], self.units[-1]
        return (f"stage {index}: {first.names[0]} .. {last.names[-1]} ({len(self.units)} units: {first.label} .. "
                f"{last.label}), {100 * self.flops_share:.1f}% of FLOPs, {100 * self.params_share:.1f}% of parameters")


def plan_stages(model: VGG, stages: int, crop_size: int = 224) -> list[StagePlan]:
    units = vgg_units(model, crop_size)
    if stages > len(units):
        raise ValueError(f"parallel.pipeline_stages={stages} but net {model.spec.config} has only {len(units)} "
                         f"splittable units ({len(units) - 3} convs + 3 FC layers)")
    starts = balanced_split([u.flops for u in units], stages) + [len(units)]
    total_f = sum(u.flops for u in units)
    total_p = sum(u.params for u in units)
    return [StagePlan(tuple(units[a:b]), sum(u.flops for u in units[a:b]) / total_f,
                      sum(u.params for u in units[a:b]) / total_p) for a, b in zip(starts, starts[1:])]


def describe_split(plans: list[StagePlan], crop_size: int) -> str:
    return "\n".join([f"pipeline split at {crop_size}x{crop_size} (estimated FLOPs):"] +
                     ["  " + p.describe(i) for i, p in enumerate(plans)])


class StageModule(nn.Module):
    """The layers of one stage, under their original names (torchvision state-dict keys)."""

    def __init__(self, model: VGG, names: list[str]) -> None:
        super().__init__()
        feats = [(n.split(".")[1], model.features[int(n.split(".")[1])]) for n in names if n.startswith("features.")]
        head = [(n.split(".")[1], model.classifier[int(n.split(".")[1])]) for n in names if n.startswith("classifier.")]
        self.features = nn.Sequential(OrderedDict(feats)) if feats else None
        self.avgpool = model.avgpool if "avgpool" in names else None
        self.classifier = nn.Sequential(OrderedDict(head)) if head else None
        self.amp_dtype: torch.dtype | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(x.device, self.amp_dtype):
            if self.features is not None:
                x = self.features(x)
            if self.avgpool is not None:
                x = torch.flatten(self.avgpool(x), 1)
            if self.classifier is not None:
                x = self.classifier(x)
        # Sent to the next stage as it is: point-to-point sends need a contiguous tensor, and a
        # channels_last activation (the runtime policy's memory format) is not one.
        return x.contiguous()


# --- the strategy --------------------------------------------------------------------------

class PipelineParallel(ParallelStrategy):
    """K pipeline stages x dp data-parallel replicas (``world = dp * K``); see the module docstring."""

    mode = "pipeline"
    sharded = True

    def __init__(self, model: VGG, dist_info: DistInfo, *, stages: int, microbatches: int = 4,
                 schedule: str = "1f1b", crop_size: int = 224) -> None:
        super().__init__(dist_info)
        world = dist_info.world_size
        if stages < 2:
            raise ValueError(f"pipeline parallelism needs at least 2 stages, got {stages}")
        if world % stages:
            raise ValueError(f"world size {world} is not divisible by parallel.pipeline_stages={stages}: "
                             f"start a multiple of {stages} processes")
        if schedule not in SCHEDULES:
            raise ValueError(f"pipeline schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
        if microbatches < 1:
            raise ValueError(f"microbatches must be >= 1, got {microbatches}")
        if not dist.is_initialized():
            raise RuntimeError("pipeline parallelism needs an initialised process group (start with torchrun)")
        self.stages, self.microbatches, self.schedule_name = stages, microbatches, schedule
        self.dp = world // stages
        self.mesh = init_device_mesh(dist_info.device.type, (self.dp, stages), mesh_dim_names=("dp", "pp"))
        self.pp_group = self.mesh.get_group("pp")
        self.dp_group = self.mesh.get_group("dp")
        self.stage_index = self.mesh.get_local_rank("pp")
        self.dp_index = self.mesh.get_local_rank("dp")
        self.is_first, self.is_last = self.stage_index == 0, self.stage_index == stages - 1
        self.last_stage_rank = dist.get_global_rank(self.pp_group, stages - 1)
        self.num_classes = model.spec.num_classes
        self._keys = list(clean_state_dict(model.state_dict()))
        self._param_dtype = next(model.parameters()).dtype

        self.plans = plan_stages(model, stages, crop_size)
        self.crop_size = crop_size
        self.stage_module = StageModule(model, self.plans[self.stage_index].names).to(dist_info.device)
        if self.dp > 1:
            ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
            self.local_module = DistributedDataParallel(self.stage_module, device_ids=ids,
                                                        process_group=self.dp_group, bucket_cap_mb=100)
        else:
            self.local_module = self.stage_module
        # Shapes only: a meta-device twin of the net gives each stage's input and output shapes,
        # so stages are built static (no shape-inference round trip, which also upsets DDP).
        with torch.device("meta"):
            self._meta_stages = [StageModule(VGG(model.spec).to(self._param_dtype), p.names) for p in self.plans]
        self._train_stage: PipelineStage | None = None
        self._train_schedule = None
        self._train_key: tuple | None = None
        self._eval_schedules: dict[tuple, ScheduleGPipe] = {}
        self._loss_fn = None  # the step's criterion, applied by the last stage to each micro-batch
        if dist_info.is_main:
            log.info("%s", self.describe())

    # -- data --------------------------------------------------------------------------------
    @property
    def data_rank(self) -> int:
        return self.dp_index

    @property
    def data_world(self) -> int:
        return self.dp

    def sum_over_data(self, t):
        if self.dp > 1:
            dist.all_reduce(t, group=self.dp_group)
        return t

    def _build_stage(self, module: nn.Module, images: torch.Tensor, micro: int,
                     amp_dtype: torch.dtype | None, train: bool) -> PipelineStage:
        """A static ``PipelineStage``: example input/output micro-batches from the meta twin."""
        shape = (images.shape[0] // micro, *images.shape[1:])
        dtype = amp_dtype or self._param_dtype
        x = torch.empty(shape, device="meta", dtype=images.dtype)
        ins = outs = None
        for i, meta_stage in enumerate(self._meta_stages):
            y = meta_stage(x)
            if i == self.stage_index:
                ins = torch.empty(x.shape, device=self.device, dtype=x.dtype if i == 0 else dtype,
                                  requires_grad=train and i > 0)
                outs = torch.empty(y.shape, device=self.device, dtype=dtype, requires_grad=train)
                break
            x = y
        return PipelineStage(module, self.stage_index, self.stages, self.device, input_args=ins,
                             output_args=outs, group=self.pp_group)

    # -- training ----------------------------------------------------------------------------
    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # The schedule is built once; the criterion of the current call is looked up here.
        return self._loss_fn(logits, labels)

    def forward_backward(self, images, labels, loss_fn, *, amp_dtype=None, loss_scale=1.0):
        n = images.shape[0]
        if n % self.microbatches:
            raise ValueError(f"per-pipeline batch {n} is not divisible by parallel.microbatches={self.microbatches}")
        if loss_scale != 1.0:
            raise ValueError("loss scaling (fp16 GradScaler) is not supported with pipeline parallelism: "
                             "its skip-step decision would differ between stages; use bf16 or fp32")
        # The stage's buffers are sized by the first step: a new micro-batch shape or dtype
        # (a different batch size, AMP switched) needs a fresh stage and schedule.
        key = (tuple(images.shape), images.dtype, amp_dtype)
        if key != self._train_key:
            self._train_stage = self._build_stage(self.local_module, images, self.microbatches, amp_dtype, train=True)
            self._train_schedule = SCHEDULES[self.schedule_name](self._train_stage, self.microbatches,
                                                                 loss_fn=self._loss, scale_grads=True)
        self._train_key = key
        self.stage_module.amp_dtype = amp_dtype
        self._loss_fn = loss_fn
        losses: list[torch.Tensor] = []
        args = (images,) if self.is_first else ()
        kwargs = {"target": labels, "losses": losses} if self.is_last else {}
        self._train_schedule.step(*args, return_outputs=False, **kwargs)
        if self.is_last:
            loss = torch.stack([x.detach().double() for x in losses]).mean()
        else:
            loss = torch.zeros((), device=self.device, dtype=torch.float64)
        # Every rank gets the global-batch mean: the last stages' losses summed, over dp replicas.
        dist.all_reduce(loss)
        return loss / self.dp

    # -- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def eval_logits(self, images, *, amp_dtype=None):
        n = images.shape[0]
        out_dtype = torch.float64 if self._param_dtype == torch.float64 else torch.float32
        if n == 0:
            return torch.empty(0, self.num_classes, device=self.device, dtype=out_dtype)
        micro = math.gcd(n, self.microbatches)
        key = (tuple(images.shape), images.dtype, amp_dtype, micro)
        sched = self._eval_schedules.get(key)
        if sched is None:
            if len(self._eval_schedules) >= 4:  # validation has at most a couple of batch shapes
                self._eval_schedules.clear()
            stage = self._build_stage(self.stage_module, images, micro, amp_dtype, train=False)
            sched = self._eval_schedules[key] = ScheduleGPipe(stage, micro)
        self.stage_module.amp_dtype = amp_dtype
        out = sched.step(images) if self.is_first else sched.step()
        logits = out.to(out_dtype).contiguous() if self.is_last else torch.empty(n, self.num_classes, device=self.device,
                                                                             dtype=out_dtype)
        dist.broadcast(logits, src=self.last_stage_rank, group=self.pp_group)
        return logits

    # -- checkpoints -------------------------------------------------------------------------
    def full_state_dict(self):
        if self.dp_index != 0:  # the dp replicas hold the same weights: pipeline 0 speaks for all
            return None
        part = {k: v.detach().cpu().clone() for k, v in self.stage_module.state_dict().items()}
        parts = [None] * self.stages if self.dist.is_main else None
        dist.gather_object(part, parts, group=self.pp_group, group_dst=0)
        if not self.dist.is_main:
            return None
        merged = {k: v for p in parts for k, v in p.items()}
        return {k: merged[k] for k in self._keys}

    def load_full_state_dict(self, sd):
        sd = clean_state_dict(sd)
        check_full_state_dict(self._keys, sd)
        own = self.stage_module.state_dict()
        self.stage_module.load_state_dict({k: sd[k] for k in own})

    def _grad_sq_sums(self):
        grads = [p.grad.double().pow(2).sum() for p in self.stage_module.parameters() if p.grad is not None]
        zero = torch.zeros((), device=self.device, dtype=torch.float64)
        mine = torch.stack(grads).sum() if grads else zero
        # dp replicas hold the same averaged grads: only pipeline 0 contributes to the world sum.
        return zero, mine if self.dp_index == 0 else zero.clone()

    def describe(self):
        head = (f"pipeline parallel: {self.stages} stages x {self.dp} data-parallel replica(s) "
                f"(mesh dp={self.dp}, pp={self.stages}), {self.microbatches} micro-batches, "
                f"{self.schedule_name} schedule")
        return head + "\n" + describe_split(self.plans, self.crop_size)


__all__ = ["PipelineParallel", "StageModule", "Unit", "vgg_units", "balanced_split", "plan_stages",
           "describe_split", "SCHEDULES"]
