"""``bench/gpu.sh``'s report: every section's figures from its JSON, in one markdown file.

    python -m verydeep.bench.gpu_summary OUTDIR

Reads ``OUTDIR/sections.tsv`` (name, status, seconds, timeout per section), ``env.json`` and
each section's JSON, and writes ``OUTDIR/gpu.md``: the versions it ran on, the sections'
outcomes, each table, and the figures the targets are stated in: training images/s as a
fraction of the bound (the run's own bf16 matmul peak over 6 x the forward FLOP of one image;
8,500 images/s for VGG16 at 790 TFLOP/s), ours / each reference end to end (the headline
against the strongest reference doing our transform), each variant's profile (where a step's
time goes), the references' drift and any non-finite losses. A ``--quick`` run is marked as
such: its figures prove the script runs, they measure nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from verydeep.bench.common import BenchResult
from verydeep.bench.report import format_table

PAPER_PEAK_TFLOPS = 790.0  # the dense bf16 peak the 8,500 images/s bound is stated at
TARGET_BOUND_SHARE = 0.6  # end to end, from JPEG, with scale jittering
TARGET_RATIO = 1.3  # end to end, over the strongest reference (timm-style, our transform)


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _results(report: dict) -> list[BenchResult]:
    return [BenchResult(**row) for row in report.get("results", [])]


def bound_lines(report: dict) -> list[str]:
    """Each training figure as a share of the bound at this run's peak (and at 790 TFLOP/s)."""
    peak = (report.get("peak") or {}).get("tflops")
    lines = []
    for r in _results(report):
        if not r.tflops or not r.images_per_s:
            continue
        flop_per_image = r.tflops * 1e12 / r.images_per_s
        paper_bound = PAPER_PEAK_TFLOPS * 1e12 / flop_per_image
        run_bound = f", {r.peak_fraction:.1%} of this run's bound ({peak * 1e12 / flop_per_image:,.0f} images/s at " \
                    f"{peak:.0f} TFLOP/s)" if peak and r.peak_fraction else ""
        lines.append(f"- {r.bench} {r.variant}: {r.images_per_s:,.0f} images/s = "
                     f"{r.images_per_s / paper_bound:.1%} of {paper_bound:,.0f} images/s (790 TFLOP/s){run_bound}")
    return lines


def target_lines(e2e: dict) -> list[str]:
    rows = {r.variant: r for r in _results(e2e)}
    lines = []
    for name in ("ours", "ours+gpudecode"):
        r = rows.get(name)
        if r is None or not r.tflops:
            continue
        paper_bound = PAPER_PEAK_TFLOPS * 1e12 / (r.tflops * 1e12 / r.images_per_s)
        share = r.images_per_s / paper_bound
        ratio = r.ratios.get(r.reference) if r.reference else None
        lines.append(f"- {name}: {share:.1%} of the bound (target {TARGET_BOUND_SHARE:.0%}: "
                     f"{'met' if share >= TARGET_BOUND_SHARE else 'not met'}); "
                     + (f"{ratio:.2f}x {r.reference} (target {TARGET_RATIO}x: "
                        f"{'met' if ratio >= TARGET_RATIO else 'not met'})" if ratio else "no reference measured")
                     + "".join(f"; {v:.2f}x {k}" for k, v in r.ratios.items() if k != r.reference))
    return lines


def detail_lines(report: dict) -> list[str]:
    """Per variant: its profile, its drift (a reference timed again), its non-finite losses."""
    from verydeep.bench.step_profile import profile_line

    lines = []
    for r in _results(report):
        if r.profile:
            lines.append(f"- {r.variant} profile: {profile_line(r.profile)}")
        if r.drift is not None:
            lines.append(f"- {r.variant} timed again at the end: {r.drift:.2f}x its first figure (drift)")
        if r.nonfinite_losses:
            lines.append(f"- {r.variant}: {r.nonfinite_losses} non-finite losses: its figure is not valid")
    if report.get("complete") is False:
        lines.append("- cut short: these are the rows measured before the section ended")
    return lines


def section_markdown(name: str, report: dict) -> list[str]:
    if name == "parallel":
        rows = report.get("results", [])
        return ["| mode | processes | images/s |", "|---|---:|---:|"] + [
            f"| {r['mode']} | {r['processes']} | "
            f"{'FAILED: ' + r['error'] if r.get('error') else format(r['images_per_s'], ',.1f')} |" for r in rows]
    if name == "gpucheck":
        return ["```json", json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=2), "```"]
    lines = [format_table(_results(report), peak=report.get("peak"), machine=report.get("machine"))]
    lines += detail_lines(report)
    on_gpu = str((report.get("machine") or {}).get("device", "")).startswith("cuda")  # the bound is a GPU's
    if on_gpu and name in ("train", "compile"):
        lines += bound_lines(report)
    if on_gpu and name == "e2e":
        lines += target_lines(report)
    return lines


def summary(out: Path) -> str:
    env = _load(out / "env.json") or {}
    quick = env.get("quick") or (out / "quick").is_file() and (out / "quick").read_text().strip() == "1"
    lines = ["# GPU check" + (" (--quick: CPU, tiny sizes, short windows: proves the script runs, measures "
                              "nothing)" if quick else ""), "",
             "Ran on: " + ", ".join(f"{k} {v}" for k, v in env.items()), "",
             "| section | status | seconds | timeout (s) |", "|---|---|---:|---:|"]
    sections = []
    if (out / "sections.tsv").is_file():
        for line in (out / "sections.tsv").read_text().splitlines():
            name, status, seconds, timeout = line.split("\t")
            sections.append(name)
            lines.append(f"| {name} | {status} | {seconds} | {timeout} |")
    for name in sections:
        report = _load(out / f"{name}.json") if name not in ("env", "jpegs") else None
        if report is not None:
            lines += ["", f"## {name}", "", *section_markdown(name, report)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    out = Path((argv or sys.argv[1:])[0])
    (out / "gpu.md").write_text(summary(out))
    print((out / "gpu.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
