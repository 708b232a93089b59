"""``verydeep eval | predict | export``: the paper's test protocols, single images, export."""

from __future__ import annotations

import argparse
import logging
import sys

from verydeep.cli.vocabulary import (add_amp, add_batch_size, add_checkpoint, add_crop_size, add_data, add_device,
                                     add_ema, add_json, add_out, add_workers, emit_json, positive_int)
from verydeep.errors import OutputError, UsageError


def _scale_sets(values: list[str] | None) -> list[str | list[int] | list[list[int]]]:
    """Each --scales value: "single", "multi" (each net's own, from its training S), a comma list
    of Q for every net, or comma lists separated by "/", one per --checkpoint in order."""
    from verydeep.evaluate.scales import SCALE_SETS, check_scales

    out: list[str | list[int]] = []
    for v in values or list(SCALE_SETS):
        if v in SCALE_SETS:
            out.append(v)
            continue
        try:
            per_net = [[int(q) for q in part.split(",") if q.strip()] for part in v.split("/")]
            out.append(per_net if "/" in v else per_net[0])
        except ValueError:
            raise UsageError(f"--scales {v!r}: expected 'single', 'multi' or integers like 256,384,512") from None
        for qs in per_net:
            try:
                check_scales(qs)
            except ValueError as e:
                raise UsageError(f"--scales {v!r}: {e}") from None
    return out


def _protocols(value: str) -> list[str]:
    from verydeep.evaluate.protocols import PROTOCOLS, check_protocol

    return list(PROTOCOLS) if value == "all" else [check_protocol(p.strip()) for p in value.split(",")]


def _options(args: argparse.Namespace, **batching):
    from verydeep.evaluate import EvalOptions

    return EvalOptions(flip=args.flip, dense_average=args.dense_average, device=args.device, amp=args.amp,
                       **batching)


def _common(p: argparse.ArgumentParser, protocol_default: str, scales_default: str) -> None:
    add_checkpoint(p, several=True)
    add_ema(p)
    p.add_argument("--caffe-bgr", action="store_true",
                   help="weights converted from the authors' Caffe models (BGR, 0-255, mean pixel)")
    p.add_argument("--protocol", default=protocol_default,
                   help="center, dense, multicrop, dense+multicrop, a comma list, or all (default: %(default)s)")
    p.add_argument("--scales", action="append", metavar="Q[,Q...]",
                   help="test scales Q: a comma list (e.g. 256,384,512), 'single' or 'multi' (the paper's "
                        "defaults from each net's own training scale S), or one comma list per --checkpoint "
                        "separated by '/' (e.g. 224,256,288/256,384,512); repeat for several rows (default: "
                        f"{scales_default})")
    p.add_argument("--no-flip", dest="flip", action="store_false",
                   help="score each image alone, as training's validation does (default: average its posteriors "
                        "with its mirror's, as the paper does)")
    p.add_argument("--dense-average", choices=("scores", "posteriors"), default="scores",
                   help="dense: average the score map then softmax (paper, default), or softmax per location")
    add_device(p)
    add_amp(p)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate nets with the paper's protocols (dense, multi-crop, scales, fusion)")
    _common(p, "dense", "single and multi: a row each per protocol")
    add_data(p, help="dataset folder (required: a checkpoint supplies the net, its classes and preprocessing, "
                     "never the data to read)")
    add_batch_size(p, default=32, what="images per forward pass")
    p.add_argument("--crop-batch", type=positive_int,
                   help="multi-crop: most crops per forward pass (default 4 x batch size, at least one image's)")
    add_workers(p, default_text="the checkpoint's recipe's")
    p.add_argument("--limit", type=positive_int, metavar="N", help="evaluate only the first N validation images")
    add_json(p, "the table (with a header: versions, data, checkpoints and their SHA-256, preprocessing), "
                "rewritten as rows complete,")
    p.add_argument("--per-image", metavar="CSV", help="write per-image predictions")
    p.add_argument("--per-class", metavar="CSV", help="write per-class top-1/top-5 accuracy")
    p.add_argument("--save-posteriors", metavar="DIR",
                   help="keep the stored posteriors (an [images x classes] array per net, method and Q, and the "
                        "rows) in DIR for `verydeep fuse`; DIR must be empty or an earlier store, which is replaced")
    p.add_argument("--posteriors-dtype", metavar="DTYPE",
                   help="dtype of the stored posteriors: float32 (the default: exact) or float16 (half the disk, "
                        "but near-tied classes may swap)")
    p.set_defaults(func=run_eval)

    p = sub.add_parser("predict", help="top-5 classes of images (dense evaluation by default)")
    _common(p, "dense", "single")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--topk", type=positive_int, default=5, metavar="K", help="classes to list (default: %(default)s)")
    add_json(p, "the predictions")
    p.set_defaults(func=run_predict)

    p = sub.add_parser("export", help="export a net to ONNX (classifier and dense forms) and safetensors")
    add_checkpoint(p)
    add_ema(p)
    p.add_argument("--caffe-bgr", action="store_true",
                   help="weights converted from the authors' Caffe models (BGR, 0-255, mean pixel)")
    add_out(p, "classifier.onnx, dense.onnx and model.safetensors", required=True)
    p.add_argument("--format", default="onnx,safetensors",
                   help="onnx, safetensors or both (default: %(default)s); onnx needs the onnx extra: "
                        "pip install 'verydeep[onnx]'")
    p.add_argument("--form", default="classifier,dense", help="ONNX forms: classifier, dense or both")
    add_crop_size(p, what="the classifier's input side, fixed in its ONNX graph (default: the net's training "
                          "crop)")
    p.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo",
                   help="dynamo: torch.export-based, PyTorch's default (opset >= 18); torchscript: the deprecated "
                        "tracing exporter (default: %(default)s)")
    p.add_argument("--opset", type=positive_int, help="ONNX opset (default: 18 with dynamo, 17 with torchscript)")
    p.set_defaults(func=run_export)


def check_paths(args: argparse.Namespace) -> None:
    """The paths given, checked before torch loads: a typo is answered at once. Each --checkpoint
    exists; eval's --data is a folder."""
    import os
    from pathlib import Path

    from verydeep.data.errors import DataError
    from verydeep.errors import CheckpointNotFoundError

    for given in args.checkpoint if isinstance(args.checkpoint, list) else [args.checkpoint]:
        if not Path(given).exists():
            raise CheckpointNotFoundError(f"checkpoint not found: {given}")
    if not hasattr(args, "limit"):  # predict, export: no dataset
        return
    if not args.data:
        raise UsageError("eval needs the dataset to evaluate on: --data DIR (a folder with val/, or ImageNet's "
                         "layouts); a checkpoint never chooses the data")
    if not Path(args.data).is_dir():
        raise DataError(f"--data {args.data}: not a folder (from {os.getcwd()}); give the dataset folder with "
                        f"--data DIR")


def run_eval(args: argparse.Namespace) -> int:
    check_paths(args)
    from verydeep.data import discover
    from verydeep.evaluate import RowSpec, evaluate_rows, load_eval_net
    from verydeep.evaluate.posterior_store import check_dtype, check_folder
    from verydeep.evaluate.report import check_output_file, format_table, write_per_class, write_per_image
    from verydeep.parallel.distributed import init_distributed, shutdown
    from verydeep.runtime import build_runtime

    scale_sets = _scale_sets(args.scales)  # a bad --scales fails before any net is loaded
    dist = init_distributed(args.device)
    if not dist.is_main:  # one log under torchrun, as in training: the other ranks say only what goes wrong
        logging.getLogger("verydeep").setLevel(logging.WARNING)
    # Output paths are checked before anything is loaded, on every rank (each would wait for the others).
    if args.json and args.json != "-":
        check_output_file(args.json, "--json")
    if args.save_posteriors:
        check_folder(args.save_posteriors)
    for flag, path in (("--per-image", args.per_image), ("--per-class", args.per_class)):
        if path:
            check_output_file(path, flag)
    stored = {"posteriors_dtype": check_dtype(args.posteriors_dtype)} if args.posteriors_dtype else {}
    runtime = build_runtime(dist.device, args.amp)
    runtime.apply_tf32()
    logging.getLogger("verydeep").info("precision: %s (--amp %s)", runtime.precision(), args.amp)
    nets = [load_eval_net(c, caffe_bgr=args.caffe_bgr, ema=args.ema) for c in args.checkpoint]
    data_cfg = _eval_data(args, nets[0])
    splits = discover(data_cfg, classes=nets[0].classes)  # a val/-only folder: numbered as the net's classes
    samples = splits.val[: args.limit] if args.limit else splits.val
    if not samples:
        from verydeep.data.errors import DataError

        raise DataError(f"{data_cfg.root}: no validation images to evaluate (give a folder with val/<class>/ "
                        "images, or ImageNet's layouts)")
    rows = [RowSpec.for_nets(p, [net.data for net in nets], s)
            for s in scale_sets for p in _protocols(args.protocol)]
    # --batch-size is global, as everywhere: each of the W processes takes its share.
    options = _options(args, batch_size=max(1, args.batch_size // dist.world_size), crop_batch=args.crop_batch,
                       **stored)
    report = _report_writer(args, nets, data_cfg, samples, options, runtime.device) if dist.is_main else None
    done: dict[int, dict] = {}  # rows finished so far, by their place in the table

    def partial(index: int, row_result) -> None:
        done[index] = row_result.row
        if report is not None and len(done) < len(rows):
            report([done[i] for i in sorted(done)], complete=False)

    result = evaluate_rows(nets, data_cfg, samples, rows, classes=splits.classes, options=options,
                           runtime=runtime, on_row=partial, save_posteriors=args.save_posteriors)
    if dist.is_main:
        title = f"{len(samples)} images of {data_cfg.root}" + (f", {len(nets)} nets fused" if len(nets) > 1 else "")
        if args.json != "-":  # --json alone: the JSON replaces the table on stdout
            print(format_table(result.rows, title=title, flip=args.flip))
        for i, path in result.bad[:20]:
            print(f"undecodable (counted as error): {path}", file=sys.stderr)
        report(result.rows, complete=True)
        said = sys.stderr if args.json == "-" else sys.stdout  # stdout holds only the JSON then
        for path, write in ((args.per_image, lambda p: write_per_image(result, p)),
                            (args.per_class, lambda p: write_per_class(result, p))):
            if path:
                print(f"wrote {write(path)}", file=said)
        if result.store is not None:
            print(f"wrote {result.store} (stored posteriors: verydeep fuse {result.store}#ROW ...)", file=said)
    shutdown()
    return 0


def _report_writer(args: argparse.Namespace, nets, data_cfg, samples, options, device):
    """A function ``(rows, complete)`` that (re)writes the JSON report of ``--json``.

    The report is written once before any work, marked running: a path that cannot be
    written fails in the first second, not after hours of evaluation. It is rewritten as
    rows finish (still running) and when all have (complete)."""
    from verydeep.evaluate.report import report_header, report_row, write_report

    header = report_header(nets, args.checkpoint, data_root=data_cfg.root, images=len(samples),
                           scales=list(args.scales or ["single", "multi"]), options=options, ema=args.ema,
                           device=device)

    def write(rows: list[dict], complete: bool) -> None:
        if not args.json:
            return
        if args.json == "-":  # stdout: one document, at the end
            if complete:
                emit_json({"header": {**header, "status": "complete"},
                           "rows": [report_row(r, args.checkpoint) for r in rows]}, "-")
            return
        path = write_report(args.json, header, rows, complete=complete, given=args.checkpoint)
        if complete:
            print(f"wrote {path}")

    try:
        write([], complete=False)
    except OSError as e:  # the path given on the command line: say so, before any work
        raise OutputError(e.errno or 5, f"--json {args.json}: cannot write it: {e.strerror or e}") from None
    return write


def _eval_data(args: argparse.Namespace, net):
    """The dataset to evaluate: ``--data`` (and ``--workers``) with the net's preprocessing.
    Paths come from the command line and the local defaults only (issue 14: a checkpoint's
    stored ``data.root``, ``val_dir`` or ``index_cache`` would steer what is read and written).
    ``--data`` is checked by :func:`check_paths`."""
    import dataclasses

    changes = {"root": args.data, **({"workers": args.workers} if args.workers is not None else {})}
    return dataclasses.replace(net.data, **changes)


def run_predict(args: argparse.Namespace) -> int:
    check_paths(args)
    if args.json and args.json != "-":
        from verydeep.evaluate.report import check_output_file

        check_output_file(args.json, "--json")
    from verydeep.evaluate import load_eval_net, predict

    scale_sets, protos = _scale_sets(args.scales or ["single"]), _protocols(args.protocol)
    nets = [load_eval_net(c, caffe_bgr=args.caffe_bgr, ema=args.ema) for c in args.checkpoint]
    if len(scale_sets) != 1 or len(protos) != 1:
        raise ValueError("predict takes one --protocol and one --scales value")
    results = predict(nets, args.images, protocol=protos[0], scales=scale_sets[0], topk=args.topk,
                      options=_options(args))
    if args.json:
        path = emit_json(results, args.json)
        if path:
            print(f"wrote {path}")
        return _predict_exit_code(results)
    for r in results:
        if "error" in r:
            reason = r["error"].removeprefix(f"{r['path']}: ")  # the error names the path already
            print(f"{r['path']}: error: {reason}")
            continue
        print(f"{r['path']} ({r['protocol']}, Q={','.join(map(str, r['scales']))}):")
        for rank, t in enumerate(r["top"], 1):
            print(f"  {rank}. {t['prob']:7.2%}  {t['class']}  {t['name']}")
    return _predict_exit_code(results)


def _predict_exit_code(results: list[dict]) -> int:
    """0 when every image was classified; the data code (3) when one could not be read (a
    missing file, a folder, not an image): the user's input, not a bug (exit 1)."""
    from verydeep.errors import EXIT_DATA, EXIT_OK

    failed = [r for r in results if "error" in r]
    if failed:  # the last line names the images, as every failure's does (stdout keeps one line per image)
        first = failed[0]["error"] if failed[0]["error"].startswith(failed[0]["path"]) else \
            f"{failed[0]['path']}: {failed[0]['error']}"
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        print(f"verydeep: error: {len(failed)} of {len(results)} images could not be read: {first}{more}",
              file=sys.stderr)
    return EXIT_OK if not failed else EXIT_DATA


def run_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from verydeep.evaluate import load_eval_net
    from verydeep.evaluate.export import FORMS, check_onnx_available, export_onnx, export_safetensors

    formats = [f.strip() for f in args.format.split(",")]
    forms = [f.strip() for f in args.form.split(",")]
    for f in formats:
        if f not in ("onnx", "safetensors"):
            raise ValueError(f"--format {f!r}: choose onnx or safetensors")
    for f in forms:
        if f not in FORMS:
            raise ValueError(f"--form {f!r}: choose {' or '.join(FORMS)}")
    if "onnx" in formats:
        check_onnx_available(args.exporter)  # before loading the net: say which extra is missing at once
    check_paths(args)
    net = load_eval_net(args.checkpoint, caffe_bgr=args.caffe_bgr, ema=args.ema)
    out = Path(args.out)
    if "onnx" in formats:
        for form in forms:
            path = export_onnx(net, out / f"{form}.onnx", form=form, image_size=args.crop_size,
                               opset=args.opset, exporter=args.exporter)
            print(f"wrote {path}")
    if "safetensors" in formats:
        print(f"wrote {export_safetensors(net, out / 'model.safetensors')}")
    return 0
