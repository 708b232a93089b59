"""The hybrid mode of Krizhevsky 2014 ("One weird trick for parallelizing convolutional neural
networks", cited by the paper): data parallelism for the conv layers, model (tensor)
parallelism for the FC layers.

Why: VGG's convs hold ~10% of the weights and ~99% of the FLOPs, the FC layers the reverse
(FC1 alone 102.8M of VGG16's 138.4M). Data parallelism moves every weight's gradient over the
network each step; tensor parallelism moves activations instead. For the FC layers the
activations (batch x 25088 in, batch x 4096 out) are far smaller than their weights (25088 x
4096), so the trick sends less and holds 1/world of FC1/FC2 per device.

Layout on ``world`` ranks, each with its own batch shard of ``b = B / world`` images:

- ``features`` (convs) and FC3: replicated, data-parallel. DDP averages their gradients
  (DDP is told to ignore the sharded FC1/FC2 parameters).
- FC1: ``ColwiseParallel(input_layouts=Shard(0))``. Its input, the flattened conv features,
  arrives batch-sharded and is all-gathered into the whole batch (Krizhevsky's scheme: every
  rank sees all B images); each rank computes its 4096/world output columns for all B images.
  ReLU and dropout act on those columns (each activation dropped by exactly one rank).
- FC2: ``RowwiseParallel(output_layouts=Shard(0))``. Each rank multiplies its input columns by
  its rows of FC2; the partial sums are reduce-scattered over the batch, so each rank ends
  with the full 4096 features of *its own* b images. Backward: the mirror collectives
  (all-gather of the FC2 output grad, reduce-scatter of the FC1 input grad), by DTensor.
- FC3 (4096 x classes, 3% of VGG16's weights): data-parallel, not sharded. After FC2's
  reduce-scatter the activations are batch-sharded again, so FC3, the logits, the loss and
  the evaluation are plain data parallelism: no all-gather of logits, and dropout before
  FC3 draws independent masks per rank exactly as in DDP. Sharding FC3 too (as Krizhevsky
  did) would save 4M weights per device at the cost of an all-gather of its input and of
  the logits every step.

Gradient scale: each rank's loss is the mean over its b images. DDP averages the replicated
gradients over ranks: the mean over the global batch. The sharded FC1/FC2 gradients already
*sum* the contributions of every rank's loss (the collectives' backward adds them), so a hook
divides them by ``world``; the result equals one process on the whole batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
from torch.nn.parallel import DistributedDataParallel

from verydeep.models.vgg import VGG
from verydeep.models.weights import clean_state_dict
from verydeep.parallel.distributed import DistInfo
from verydeep.parallel.base import check_full_state_dict, upcast
from verydeep.parallel.data_parallel import DataParallel
from verydeep.runtime import autocast



def tp_plan() -> dict:
    """classifier index -> parallel style of the tensor-parallel layers (torchvision layout)."""
    return {
        "0": ColwiseParallel(input_layouts=Shard(0)),  # FC1: all-gather the batch, shard outputs
        "3": RowwiseParallel(output_layouts=Shard(0)),  # FC2: shard inputs, reduce-scatter the batch
    }


class HybridParallel(DataParallel):
    """Data-parallel convs (and FC3), tensor-parallel FC1/FC2 over all ``world`` ranks."""

    mode = "hybrid"
    sharded = True

    def __init__(self, model: VGG, dist_info: DistInfo, *, accum: int = 1) -> None:  # noqa: D107
        # DataParallel.__init__ would wrap in DDP before sharding: set up by hand instead.
        self.dist, self.device = dist_info, dist_info.device
        if accum < 1:
            raise ValueError(f"accum must be >= 1, got {accum}")
        world = dist_info.world_size
        if world < 2 or not dist.is_initialized():
            raise ValueError("the hybrid mode (parallel.tensor_parallel_fc) needs 2 or more processes "
                             "(start with torchrun); on one process use plain training")
        hidden = model.spec.hidden
        if hidden % world:
            raise ValueError(f"FC width {hidden} is not divisible by the {world} processes: "
                             f"FC1/FC2 are split into equal column/row blocks")
        self.accum, self.world = accum, world
        self._keys = list(clean_state_dict(model.state_dict()))
        self._param_dtype = next(model.parameters()).dtype
        self.model = model.to(dist_info.device)
        self.mesh = init_device_mesh(dist_info.device.type, (world,), mesh_dim_names=("tp",))
        plan = tp_plan()
        # DTensor hands back its local shard as a view autograd may not modify in place.
        for i in (1, 4):
            self.model.classifier[i].inplace = False
        parallelize_module(self.model.classifier, self.mesh, plan)
        sharded = [f"classifier.{i}.{n}" for i in plan for n, _ in self.model.classifier[int(i)].named_parameters()]
        for name in sharded:
            self.model.get_parameter(name).register_hook(lambda g: g / world)
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.model, sharded)
        ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
        self.net = DistributedDataParallel(self.model, device_ids=ids, bucket_cap_mb=100)
        self.local_module = self.net
        self.num_classes = model.spec.num_classes

    def forward_backward(self, images, labels, loss_fn, *, amp_dtype=None, loss_scale=1.0):
        if loss_scale != 1.0:
            raise ValueError("loss scaling (fp16 GradScaler) is not supported in the hybrid mode: an inf in one "
                             "rank's FC shard would make ranks disagree on skipping the step; use bf16 or fp32")
        return super().forward_backward(images, labels, loss_fn, amp_dtype=amp_dtype)

    @torch.no_grad()
    def eval_logits(self, images, *, amp_dtype=None):
        # FC1 all-gathers equal shards: pad every rank's batch to the largest, then drop the pad.
        n = images.shape[0]
        size = torch.tensor([n], device=self.device)
        dist.all_reduce(size, op=dist.ReduceOp.MAX)
        top = int(size.item())
        out_dtype = torch.float64 if self._param_dtype == torch.float64 else torch.float32
        if top == 0:
            return torch.empty(0, self.num_classes, device=self.device, dtype=out_dtype)
        if n < top:  # (an empty batch still has the image shape: [0, 3, H, W])
            images = torch.cat([images, images.new_zeros((top - n, *images.shape[1:]))])
        with autocast(images.device, amp_dtype):
            logits = self.model(images)
        return upcast(logits)[:n].to(out_dtype)

    def full_state_dict(self):
        # Collective: every rank all-gathers the sharded FC1/FC2 tensors.
        out = {}
        for k, v in clean_state_dict(self.model.state_dict()).items():
            full = v.full_tensor() if isinstance(v, DTensor) else v
            out[k] = full.detach().cpu().clone() if self.dist.is_main else None
        return out if self.dist.is_main else None

    @torch.no_grad()
    def load_full_state_dict(self, sd):
        sd = clean_state_dict(sd)
        check_full_state_dict(self._keys, sd)
        own = dict(self.model.named_parameters())
        own.update(self.model.named_buffers())
        for k, t in own.items():
            src = sd[k].to(device=self.device, dtype=t.dtype)
            if isinstance(t, DTensor):  # every rank has the full tensor: take the local chunk, no traffic
                t.to_local().copy_(distribute_tensor(src, self.mesh, t.placements, src_data_rank=None).to_local())
            else:
                t.copy_(src)

    def _grad_sq_sums(self):
        once = torch.zeros((), device=self.device, dtype=torch.float64)
        shared = torch.zeros((), device=self.device, dtype=torch.float64)
        for p in self.model.parameters():
            if p.grad is None:
                continue
            g = p.grad
            if isinstance(g, DTensor):
                local = g.to_local().double().pow(2).sum()
                if any(isinstance(pl, Shard) for pl in g.placements):
                    shared += local
                else:
                    once += local
            else:
                once += g.double().pow(2).sum()
        return once, shared

    def describe(self):
        h = self.model.spec.hidden
        return (f"hybrid (Krizhevsky 2014): {self.world} processes; convs and FC3 data-parallel, "
                f"FC1/FC2 tensor-parallel ({h // self.world} of {h} units per process)")


__all__ = ["HybridParallel", "tp_plan"]
