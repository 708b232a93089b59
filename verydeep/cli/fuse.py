"""``verydeep fuse``: fusion of saved posteriors (``verydeep eval --save-posteriors``), so an
ensemble is scored without running its nets again."""

from __future__ import annotations

import argparse

from verydeep.cli.vocabulary import add_json, emit_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fuse", help="average saved per-image posteriors of several nets and score the fusion")
    p.add_argument("files", nargs="+", metavar="FILE[#ROW]",
                   help="posteriors files written by `verydeep eval --save-posteriors`; #ROW picks a row of a "
                        "file that holds several (from 0)")
    add_json(p, "the fused row")
    p.set_defaults(func=run_fuse)


def run_fuse(args: argparse.Namespace) -> int:
    from verydeep.evaluate.posteriors_file import fuse_saved, load_posteriors
    from verydeep.evaluate.report import format_table, report_row

    saved = [load_posteriors(f) for f in args.files]
    row, _ = fuse_saved(saved)
    members = [{**s.row, "protocol": f"{s.row['protocol']} ({s.source})"} for s in saved]
    if args.json != "-":  # --json alone: the JSON replaces the table on stdout
        print(format_table([*members, row], title=f"{row['images']} images, {len(saved)} posteriors fused"))
    if args.json:
        path = emit_json({"header": {"fused": list(args.files)}, "rows": [report_row(row)]}, args.json)
        if path:
            print(f"wrote {path}")
    return 0
