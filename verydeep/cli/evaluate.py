"""``verydeep eval | predict | export``: the paper's test protocols, single images, export."""

from __future__ import annotations

import argparse
import json
import sys


def _scale_sets(values: list[str] | None) -> list[str | list[int]]:
    """Each --scales value: "single", "multi" or a comma list of Q (checked by resolve_scales)."""
    from verydeep.evaluate.scales import SCALE_SETS

    out: list[str | list[int]] = []
    for v in values or list(SCALE_SETS):
        if v in SCALE_SETS:
            out.append(v)
            continue
        try:
            out.append([int(q) for q in v.split(",") if q.strip()])
        except ValueError:
            raise ValueError(f"--scales {v!r}: expected 'single', 'multi' or integers like 256,384,512") from None
    return out


def _protocols(value: str) -> list[str]:
    from verydeep.evaluate.protocols import PROTOCOLS, check_protocol

    return list(PROTOCOLS) if value == "all" else [check_protocol(p.strip()) for p in value.split(",")]


def _options(args: argparse.Namespace, **batching):
    from verydeep.evaluate import EvalOptions

    return EvalOptions(flip=args.flip, dense_average=args.dense_average, device=args.device, amp=args.amp,
                       **batching)


def _common(p: argparse.ArgumentParser, protocol_default: str) -> None:
    p.add_argument("--checkpoint", action="append", required=True, metavar="RUN_OR_FILE",
                   help="run directory (its best.pt), checkpoint, exported .safetensors or torchvision "
                        "VGG state dict; repeat to fuse several nets (posteriors averaged)")
    p.add_argument("--caffe-bgr", action="store_true",
                   help="weights converted from the authors' Caffe models (BGR, 0-255, mean pixel)")
    p.add_argument("--protocol", default=protocol_default,
                   help="center, dense, multicrop, dense+multicrop, a comma list, or all (default: %(default)s)")
    p.add_argument("--scales", action="append", metavar="Q[,Q...]",
                   help="test scales Q: a comma list (e.g. 256,384,512), 'single' or 'multi' (the paper's "
                        "defaults from the training scale S); repeat for several rows")
    p.add_argument("--no-flip", dest="flip", action="store_false", help="do not average with mirrored images")
    p.add_argument("--dense-average", choices=("scores", "posteriors"), default="scores",
                   help="dense: average the score map then softmax (paper, default), or softmax per location")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    # verydeep.runtime.AMP_MODES, spelled out so that building the parser does not import torch.
    p.add_argument("--amp", choices=("auto", "none", "bf16", "fp16"), default="auto",
                   help="autocast precision: auto (bf16 on CUDA, fp32 on CPU), none (fp32), bf16 or fp16")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate nets with the paper's protocols (dense, multi-crop, scales, fusion)")
    _common(p, "dense")
    p.add_argument("--data", help="dataset root (default: the one in the first checkpoint's recipe)")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default: %(default)s)")
    p.add_argument("--crop-batch", type=int,
                   help="multi-crop: most crops per forward pass (default 4 x batch size, at least one image's)")
    p.add_argument("--workers", type=int, help="data loading processes (default: the recipe's)")
    p.add_argument("--limit", type=int, help="evaluate only the first N validation images")
    p.add_argument("--json", metavar="PATH", help="write the rows as JSON")
    p.add_argument("--per-image", metavar="CSV", help="write per-image predictions")
    p.add_argument("--per-class", metavar="CSV", help="write per-class top-1/top-5 accuracy")
    p.set_defaults(func=run_eval)

    p = sub.add_parser("predict", help="top-5 classes of images (dense evaluation by default)")
    _common(p, "dense")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--json", nargs="?", const="-", metavar="PATH", help="JSON output (stdout if no PATH)")
    p.set_defaults(func=run_predict)

    p = sub.add_parser("export", help="export a net to ONNX (classifier and dense forms) and safetensors")
    p.add_argument("--checkpoint", required=True, metavar="RUN_OR_FILE")
    p.add_argument("--caffe-bgr", action="store_true")
    p.add_argument("--out", required=True, metavar="PREFIX",
                   help="output prefix: PREFIX.classifier.onnx, PREFIX.dense.onnx, PREFIX.safetensors")
    p.add_argument("--format", default="onnx,safetensors", help="onnx, safetensors or both (default: %(default)s)")
    p.add_argument("--form", default="classifier,dense", help="ONNX forms: classifier, dense or both")
    p.add_argument("--image-size", type=int, help="example input side for tracing (default from the net)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--dynamo", action="store_true", help="use the torch.export-based ONNX exporter")
    p.set_defaults(func=run_export)


def run_eval(args: argparse.Namespace) -> int:
    import dataclasses

    from verydeep.data import discover
    from verydeep.evaluate import RowSpec, evaluate_rows, load_eval_net, resolve_scales
    from verydeep.evaluate.report import format_table, write_json, write_per_class, write_per_image
    from verydeep.parallel.distributed import init_distributed, shutdown
    from verydeep.runtime import build_runtime

    dist = init_distributed(args.device)
    runtime = build_runtime(dist.device, args.amp)
    nets = [load_eval_net(c, caffe_bgr=args.caffe_bgr) for c in args.checkpoint]
    data_cfg = nets[0].data
    changes = {k: v for k, v in (("root", args.data), ("workers", args.workers)) if v is not None}
    if changes:
        data_cfg = dataclasses.replace(data_cfg, **changes)
    splits = discover(data_cfg)
    samples = splits.val[: args.limit] if args.limit else splits.val
    rows = [RowSpec(p, tuple(resolve_scales(nets[0].data, s)))
            for s in _scale_sets(args.scales) for p in _protocols(args.protocol)]
    options = _options(args, batch_size=args.batch_size, crop_batch=args.crop_batch)
    result = evaluate_rows(nets, data_cfg, samples, rows, classes=splits.classes, options=options,
                           runtime=runtime)
    if dist.is_main:
        title = f"{len(samples)} images of {data_cfg.root}" + (f", {len(nets)} nets fused" if len(nets) > 1 else "")
        print(format_table(result.rows, title=title))
        for i, path in result.bad[:20]:
            print(f"undecodable (counted as error): {path}", file=sys.stderr)
        for path, write in ((args.json, lambda p: write_json(result.rows, p)),
                            (args.per_image, lambda p: write_per_image(result, p)),
                            (args.per_class, lambda p: write_per_class(result, p))):
            if path:
                print(f"wrote {write(path)}")
    shutdown()
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from verydeep.evaluate import load_eval_net, predict

    nets = [load_eval_net(c, caffe_bgr=args.caffe_bgr) for c in args.checkpoint]
    scale_sets, protos = _scale_sets(args.scales or ["single"]), _protocols(args.protocol)
    if len(scale_sets) != 1 or len(protos) != 1:
        raise ValueError("predict takes one --protocol and one --scales value")
    results = predict(nets, args.images, protocol=protos[0], scales=scale_sets[0], topk=args.topk,
                      options=_options(args))
    if args.json:
        text = json.dumps(results, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
            print(f"wrote {args.json}")
        return 0 if all("error" not in r for r in results) else 1
    for r in results:
        if "error" in r:
            print(f"{r['path']}: error: {r['error']}")
            continue
        print(f"{r['path']} ({r['protocol']}, Q={','.join(map(str, r['scales']))}):")
        for rank, t in enumerate(r["top"], 1):
            print(f"  {rank}. {t['prob']:7.2%}  {t['class']}  {t['name']}")
    return 0 if all("error" not in r for r in results) else 1


def run_export(args: argparse.Namespace) -> int:
    from verydeep.evaluate import load_eval_net
    from verydeep.evaluate.export import FORMS, export_onnx, export_safetensors

    formats = [f.strip() for f in args.format.split(",")]
    forms = [f.strip() for f in args.form.split(",")]
    for f in formats:
        if f not in ("onnx", "safetensors"):
            raise ValueError(f"--format {f!r}: choose onnx or safetensors")
    for f in forms:
        if f not in FORMS:
            raise ValueError(f"--form {f!r}: choose {' or '.join(FORMS)}")
    net = load_eval_net(args.checkpoint, caffe_bgr=args.caffe_bgr)
    if "onnx" in formats:
        for form in forms:
            path = export_onnx(net, f"{args.out}.{form}.onnx", form=form, image_size=args.image_size,
                               opset=args.opset, dynamo=args.dynamo)
            print(f"wrote {path}")
    if "safetensors" in formats:
        print(f"wrote {export_safetensors(net, f'{args.out}.safetensors')}")
    return 0
