"""Classify single images: top-k classes with names and posteriors (dense evaluation by default)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from verydeep.evaluate import protocols
from verydeep.evaluate.checkpoints import as_eval_nets
from verydeep.evaluate.evaluator import default_scales
from verydeep.evaluate.fusion import class_permutation
from verydeep.parallel.distributed import resolve_device


@torch.no_grad()
def predict(nets, images: Sequence[str | Path], *, protocol: str = "dense",
            scales: Sequence[int] | str | None = None, flip: bool = True, topk: int = 5,
            device: str = "auto", dense_average: str = protocols.DENSE_AVERAGE) -> list[dict]:
    """For each image: ``{"path", "top": [{"class", "name", "prob"}, ...]}`` (or ``"error"``).

    Several nets are fused (posteriors averaged; class order of the first net). ``scales``: a
    list of Q, or "single" / "multi" from the first net's training scale (default "single").
    """
    from verydeep.data import BadImageError, eval_transform, load_image

    nets = as_eval_nets(nets)
    protocols.check_protocol(protocol)
    dev = resolve_device(device) if isinstance(device, str) else device
    if scales is None or isinstance(scales, str):
        scales = default_scales(nets[0].data, (scales or "single") == "multi")
    reference = nets[0].classes
    perms = [class_permutation(n.classes, reference, source=n.source) for n in nets]
    models = [n.model.to(dev).eval() for n in nets]
    out = []
    for path in images:
        try:
            img = load_image(path)
        except (BadImageError, OSError) as e:
            out.append({"path": str(path), "error": str(e)})
            continue
        total, count = None, 0
        for net, model, perm in zip(nets, models, perms):
            crop_size = int(net.data.crop_size)
            for q in scales:
                for kind in protocols.KINDS[protocol]:
                    crop = crop_size if kind == "center" and int(q) >= crop_size else None
                    x = eval_transform(net.data, int(q), crop)(img)[None].to(dev)
                    p = protocols.posteriors(kind, model, x, crop=crop_size, flip=flip,
                                             dense_average=dense_average)[0].float().cpu()
                    if perm is not None:
                        p = p[perm]
                    total = p if total is None else total + p
                    count += 1
        post = total / count
        probs, idx = post.topk(min(topk, post.numel()))
        top = []
        for p, i in zip(probs.tolist(), idx.tolist()):
            cid, name = nets[0].label(i)
            top.append({"class": cid, "name": name, "prob": p})
        out.append({"path": str(path), "protocol": protocol, "scales": [int(q) for q in scales], "top": top})
    return out
