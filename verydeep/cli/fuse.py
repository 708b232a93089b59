"""``verydeep fuse``: fusion of saved posteriors (``verydeep eval --save-posteriors DIR``), so an
ensemble is scored without running its nets again."""

from __future__ import annotations

import argparse

from verydeep.cli.vocabulary import add_json, emit_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fuse", help="average saved per-image posteriors of several nets and score the fusion")
    p.add_argument("stores", nargs="+", metavar="DIR[#ROW|#ENTRY]",
                   help="posterior stores written by `verydeep eval --save-posteriors DIR`; #ROW picks a row of a "
                        "store that holds several (from 0), #ENTRY one stored (net, method, Q), e.g. "
                        "#net0-dense-Q384")
    add_json(p, "the fused row")
    p.set_defaults(func=run_fuse)


def run_fuse(args: argparse.Namespace) -> int:
    from verydeep.evaluate.report import check_output_file, format_table, report_row
    from verydeep.evaluate.store_fusion import fuse_stores

    if args.json and args.json != "-":  # before reading the stores
        check_output_file(args.json, "--json")
    row, members, _ = fuse_stores(args.stores)
    if args.json != "-":  # --json alone: the JSON replaces the table on stdout
        print(format_table([*members, row], title=f"{row['images']} images, {len(members)} posteriors fused"))
    if args.json:
        path = emit_json({"header": {"fused": list(args.stores)}, "rows": [report_row(row)]}, args.json)
        if path:
            print(f"wrote {path}")
    return 0
