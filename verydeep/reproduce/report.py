"""The reproduction's report: DIR/report.md (every table in the paper's layout, our top-1 / top-5
next to the paper's; the paper's findings and whether each held; the runs; the departures),
DIR/report.json (the same data) and DIR/report.png (our top-1 against the paper's, per cell).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from verydeep.reproduce.findings import ALPHA, Finding
from verydeep.reproduce.profiles import Departure, Profile, fill_data
from verydeep.reproduce.tables import (
    COLUMN_TITLES,
    COLUMNS,
    PAPER_TABLE3,
    PAPER_TABLE4,
    PAPER_TABLE5,
    PAPER_TABLE6,
    TABLE5_PROTOCOLS,
)

TITLES = {
    3: "Table 3: single test scale (dense evaluation; Q = S, or Q = 384 for jittered S)",
    4: "Table 4: three test scales (dense; Q = S-32, S, S+32, or 256, 384, 512 for jittered S)",
    5: "Table 5: dense vs multi-crop vs both (jittered S, Q = 256, 384, 512)",
    6: "Table 6: fusion of nets (posteriors averaged)",
}
TEST_SCALES = {3: {"S256": "Q=256", "S384": "Q=384", "multiscale": "Q=384"},
               4: {"S256": "Q=224,256,288", "S384": "Q=352,384,416", "multiscale": "Q=256,384,512"}}


def _pair(errors) -> str:
    return f"{errors[0]:.1f} / {errors[1]:.1f}" if errors else ""


def _ours(results: dict, key) -> str:
    row = results.get(key)
    return _pair((row["top1_error"], row["top5_error"])) if row else "-"


def scale_table(table: int, paper: dict, results: dict) -> list[str]:
    """Tables 3 and 4: nets by rows, training scale S by columns, ours and the paper's side by side."""
    cols = [c for c in COLUMNS if any(c in v for v in paper.values())]
    head = ["net"] + [f"{COLUMN_TITLES[c]}, {TEST_SCALES[table][c]}: {who}" for c in cols for who in ("ours", "paper")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for net, by_col in paper.items():
        cells = [net]
        for c in cols:
            cells += [_ours(results, (table, net, c)) if c in by_col else "", _pair(by_col.get(c))]
        lines.append("| " + " | ".join(cells) + " |")
    ours = {c: next((r["scales"] for k, r in results.items() if k[0] == table and k[2] == c), None) for c in cols}
    lines += ["", "Our test scales: " + "; ".join(f"{COLUMN_TITLES[c]} column Q={','.join(map(str, q))}"
                                                for c, q in ours.items() if q) + "."]
    return lines


def protocol_table(results: dict) -> list[str]:
    head = ["net"] + [f"{p}: {who}" for p in TABLE5_PROTOCOLS for who in ("ours", "paper")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for net, by_protocol in PAPER_TABLE5.items():
        cells = [f"{net}, S=[256;512]"]
        for p in TABLE5_PROTOCOLS:
            cells += [_ours(results, (5, net, p)), _pair(by_protocol[p])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def fusion_table(results: dict) -> list[str]:
    lines = ["| fusion | ours | paper |", "|---|---|---|"]
    for row, paper in PAPER_TABLE6.items():
        lines.append(f"| {row} | {_ours(results, (6, row, 'fusion'))} | {_pair(paper)} |")
    return lines


def findings_section(findings: list[Finding]) -> list[str]:
    lines = [(f"Each comparison: top-1 errors (%), the gap in the paper's direction, and McNemar's exact test on "
              f"the two cells' per-image correctness (the same images); beyond noise when p < {ALPHA}. Verdicts: "
              "held (every comparison the paper's way, beyond noise), held within noise (every one the paper's "
              "way, some within noise), partly held, not shown (none the paper's way, all within noise), did not "
              "hold (one against the paper, beyond noise). A \"does not help\" claim holds unless the addition "
              "helps beyond noise. The test judges the noise of the evaluated images, not of the training: "
              "each cell is one trained net, and another training of the same chain (other random draws, "
              "another point where the plateau rule divides the LR) can move a cell by more than the test "
              "allows for."), "",
             "| the paper's finding | evidence | here | comparisons |", "|---|---|---|---|"]
    for f in findings:
        comparisons = "; ".join(c.describe() for c in f.comparisons) or "-"
        lines.append(f"| {f.claim} | {f.where} | **{f.verdict}** | {comparisons} |")
    return lines


def runs_section(summary: dict[str, dict], selected_on: str = "val") -> list[str]:
    """The runs' table; ``selected_on``: the images model selection read (``val``, or
    ``held-out`` training images under ``data.holdout``), named in the best error's column."""
    lines = [(f"| run | starts from | status before this call | epochs | steps | best {selected_on} top-1 (centre "
              "crop) | stopped because | training min |"), "|---|---|---|---:|---:|---:|---|---:|"]
    for name, r in summary.items():
        best = r.get("best_top1_error")
        lines.append(f"| {name} | {r.get('depends_on') or 'scratch'} | {r.get('status', '')} | {r.get('epochs', '')} | "
                     f"{r.get('steps', '')} | {'' if best is None else f'{best:.1f}'} | "
                     f"{r.get('stopped_because', '')} | {r.get('train_seconds', 0) / 60:.1f} |")
    return lines


def departures_section(departures: list[Departure]) -> list[str]:
    if not departures:
        return ["None: the paper's recipes as packaged (only data.root and the chain's checkpoint paths are set)."]
    lines = ["| departure | why | measured |", "|---|---|---|"]
    lines += [f"| {d.what} | {d.why} | {d.measured} |" for d in departures]
    return lines


def report_markdown(profile: Profile, meta: dict, results: dict, findings: list[Finding],
                    summary: dict[str, dict], departures: list[Departure]) -> str:
    out = [f"# Reproduction of Simonyan & Zisserman (ICLR 2015), profile `{profile.name}`", "",
           fill_data(profile.description, meta.get("data counts")), "",
           *(f"- {k}: {v}" for k, v in meta.items()), "",
           ("Cells are top-1 / top-5 validation error (%). The paper's numbers are on ILSVRC-2012 "
            "(50,000 validation images); ours on the data above."), ""]
    tables = sorted({k[0] for k in results})
    for t in tables:
        out += [f"## {TITLES[t]}", ""]
        if t in (3, 4):
            out += scale_table(t, PAPER_TABLE3 if t == 3 else PAPER_TABLE4, results)
        else:
            out += protocol_table(results) if t == 5 else fusion_table(results)
        out.append("")
    out += ["## The paper's findings here", "", *findings_section(findings), "",
            "## Departures from the paper", "", *departures_section(departures), "",
            "## Runs", "", *runs_section(summary, "held-out" if profile.holdout else "val"), "", "![our top-1 error against the paper's](report.png)", ""]
    return "\n".join(out)


TABLE_COLOURS = {3: "tab:blue", 4: "tab:orange", 5: "tab:green", 6: "tab:red"}
# Where a point's label may go, in points from the point, tried in order: the first place whose
# box overlaps no label already placed is taken.
LABEL_OFFSETS = ((4, 3), (4, -10), (-4, 3), (-4, -10), (4, 11), (4, -18), (-4, 11), (-4, -18), (10, -4),
                 (-10, -4), (4, 19), (4, -26), (-4, 19), (-4, -26))


def _cell_label(key) -> str:
    """A point's label: Table 6's fusions by their nets and protocol (``D+E dense``), other cells
    by net and column."""
    if key[1].startswith("D/"):
        return f"D+E {key[1].split(', ', 1)[1]}" if ", " in key[1] else "D+E"
    return "7 nets" if key[1].startswith("7") else f"{key[1]} {key[2]}"


def label_points(ax, points: list[tuple[float, float]], labels: list[str], fontsize: int = 7) -> list:
    """One annotation per point, each at the first of :data:`LABEL_OFFSETS` where it stays inside
    the axes and overlaps no point and no label placed before it (the first offset when none is
    free): readable without a layout library. Call once the axes' limits and size are final."""
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    radius = 2.5 * ax.figure.dpi / 72  # a marker's half-width, in pixels: labels keep off every point
    inside = ax.get_window_extent(renderer)
    placed = [Bbox.from_extents(px - radius, py - radius, px + radius, py + radius)
              for px, py in ax.transData.transform(points)] if points else []
    texts = []
    for (x, y), label in sorted(zip(points, labels)):
        for dx, dy in LABEL_OFFSETS:
            text = ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                               ha="left" if dx >= 0 else "right")
            box = text.get_window_extent(renderer)
            if inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1) and \
                    not any(box.overlaps(other) for other in placed):
                break
            text.remove()
        else:  # nowhere free: the first place, overlapping
            text = ax.annotate(label, (x, y), xytext=LABEL_OFFSETS[0], textcoords="offset points",
                               fontsize=fontsize)
            box = text.get_window_extent(renderer)
        placed.append(box)
        texts.append(text)
    return texts


def figure_against_paper(results: dict, paper: dict):
    """Our top-1 error against the paper's, one panel per table, one labelled point per cell,
    with the line y = x (ours equal to the paper's) in each panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 10))
    cells = {t: [k for k in results if k[0] == t and k in paper] for t in TABLE_COLOURS}
    for ax, (table, keys) in zip(axes.flat, cells.items()):
        xs, ys = [paper[k][0] for k in keys], [results[k]["top1_error"] for k in keys]
        values = [*xs, *ys] or [0.0, 100.0]
        pad = max(1.0, 0.08 * (max(values) - min(values)))
        lo, hi = min(values) - pad, max(values) + pad
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="y = x (ours = the paper's)", zorder=1)
        ax.scatter(xs, ys, color=TABLE_COLOURS[table], zorder=3, s=18)
        ax.set(xlim=(lo, hi), ylim=(lo, hi), title=TITLES[table].split(" (")[0], aspect="equal")
        ax.set_xlabel("the paper's top-1 error (%), ILSVRC-2012 val")
        ax.set_ylabel("our top-1 error (%)")
        ax.grid(alpha=0.3)
    fig.suptitle("Each table cell: ours against the paper's (same order = same findings)")
    fig.legend(handles=axes.flat[0].get_lines()[:1], loc="lower center", fontsize=9)  # one legend: no label under it
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    for ax, keys in zip(axes.flat, cells.values()):  # once the layout is final
        label_points(ax, [(paper[k][0], results[k]["top1_error"]) for k in keys], [_cell_label(k) for k in keys])
    return fig


def plot_against_paper(results: dict, paper: dict, path: Path) -> Path:
    """report.png: :func:`figure_against_paper`, saved."""
    import matplotlib.pyplot as plt

    fig = figure_against_paper(results, paper)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def paper_numbers() -> dict[tuple[int, str, str], tuple[float, float]]:
    out = {(3, n, c): v for n, cols in PAPER_TABLE3.items() for c, v in cols.items()}
    out.update({(4, n, c): v for n, cols in PAPER_TABLE4.items() for c, v in cols.items()})
    out.update({(5, n, p): v for n, ps in PAPER_TABLE5.items() for p, v in ps.items()})
    out.update({(6, r, "fusion"): v for r, v in PAPER_TABLE6.items()})
    return out


def write_report(out_dir: Path, profile: Profile, meta: dict, results: dict, findings: list[Finding],
                 summary: dict[str, dict], departures: list[Departure] | None = None) -> list[Path]:
    """Write report.md, report.json and report.png into ``out_dir``; returns their paths.
    ``departures``: every departure from the paper (default: the profile's own)."""
    departures = list(profile.departures) if departures is None else departures
    paper = paper_numbers()
    md = out_dir / "report.md"
    md.write_text(report_markdown(profile, meta, results, findings, summary, departures))
    data = {"profile": profile.name, **meta, "departures": [asdict(d) for d in departures],
            "cells": [{"table": k[0], "row": k[1], "column": k[2], "ours": row, "paper": paper.get(k)}
                      for k, row in results.items()],
            "findings": [{"claim": f.claim, "where": f.where, "verdict": f.verdict, "note": f.note,
                          "comparisons": [{**asdict(c), "gap": c.gap, "holds": c.holds, "beyond_noise": c.beyond_noise}
                                          for c in f.comparisons]} for f in findings],
            "runs": summary}
    js = out_dir / "report.json"
    js.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return [md, js, plot_against_paper(results, paper, out_dir / "report.png")]
