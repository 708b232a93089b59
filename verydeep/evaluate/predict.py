"""Classify single images: top-k classes with names and posteriors (dense evaluation by default)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from verydeep.data import BadImageError, eval_transform, load_image
from verydeep.evaluate import protocols
from verydeep.evaluate.checkpoints import EvalNet, as_eval_nets
from verydeep.evaluate.fusion import PosteriorAverage, class_permutation
from verydeep.evaluate.options import EvalOptions
from verydeep.evaluate.scales import resolve_scales
from verydeep.runtime import Runtime


@torch.no_grad()
def predict(nets, images: Sequence[str | Path], *, protocol: str = "dense",
            scales: Sequence[int] | str = "single", topk: int = 5, options: EvalOptions | None = None,
            runtime: Runtime | None = None) -> list[dict]:
    """For each image: ``{"path", "protocol", "scales", "top": [{"class", "name", "prob"}, ...]}``
    (or ``{"path", "error"}``).

    Several nets are fused (posteriors averaged; class order of the first net). ``scales``: a
    list of Q, or "single" / "multi" from the first net's training scale. ``options``: flip,
    dense average, multi-crop batching, and the device/AMP of the runtime built when
    ``runtime`` is not given.
    """
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    options = options or EvalOptions()
    nets = as_eval_nets(nets)
    methods = protocols.methods_of(protocol)
    runtime = runtime or options.runtime()
    scales = resolve_scales(nets[0].data, scales)
    reference = nets[0].classes
    perms = [class_permutation(n.classes, reference, source=n.source) for n in nets]
    models = [runtime.prepare_model(n.model).eval() for n in nets]
    out = []
    for path in images:
        try:
            img = load_image(path, exif_orientation=True)  # a user's photo: upright as its camera tagged it
        except (BadImageError, OSError) as e:
            out.append({"path": str(path), "error": str(e)})
            continue
        average = PosteriorAverage()
        for net, model, perm in zip(nets, models, perms):
            for p in _posteriors(img, net, model, scales, methods, options, runtime):
                average.add(p if perm is None else p[perm])
        post = average.mean()
        probs, idx = post.topk(min(topk, post.numel()))
        top = []
        for p, i in zip(probs.tolist(), idx.tolist()):
            cid, name = nets[0].label(i)
            top.append({"class": cid, "name": name, "prob": p})
        out.append({"path": str(path), "protocol": protocol, "scales": scales, "top": top})
    return out


def _posteriors(img, net: EvalNet, model, scales: list[int], methods: Sequence[str], options: EvalOptions,
                runtime: Runtime):
    """One net's posteriors [K] of one decoded image, per test scale and method."""
    crop_size = int(net.data.crop_size)
    for q in scales:
        for method in methods:
            x = eval_transform(net.data, q, protocols.input_crop(method, q, crop_size))(img)[None]
            p = protocols.posteriors(method, model, runtime.prepare_input(x), crop=crop_size, flip=options.flip,
                                     dense_average=options.dense_average, crop_batch=options.crop_batch,
                                     runtime=runtime)
            yield p[0].float().cpu()
