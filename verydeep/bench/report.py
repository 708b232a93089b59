"""Benchmark results as a markdown table and as JSON, with ours/reference ratios and peak fractions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from verydeep.bench.common import BenchResult


def attach_ratios(results: Sequence[BenchResult], peak_tflops: float | None = None) -> list[BenchResult]:
    """Fill ``ratio`` (images/s over the named reference's, same bench) and ``peak_fraction``."""
    by_name = {(r.bench, r.variant): r for r in results}
    for r in results:
        for name in dict.fromkeys([*([r.reference] if r.reference else []), *r.references]):
            ref = by_name.get((r.bench, name))
            if ref is not None and ref.images_per_s > 0:
                r.ratios[name] = r.images_per_s / ref.images_per_s
        r.ratio = r.ratios.get(r.reference) if r.reference else None
        if peak_tflops and r.tflops is not None:
            r.peak_fraction = r.tflops / peak_tflops
    return list(results)


def _fmt(value, spec: str, empty: str = "") -> str:
    return empty if value is None else format(value, spec)


def _ratios(r: BenchResult) -> str:
    """ours / reference: one figure, or one per reference when there are several."""
    if len(r.ratios) <= 1:
        return f"{r.ratio:.2f}x" if r.ratio else ""
    return ", ".join(f"{value:.2f}x {name}" for name, value in r.ratios.items())


def format_table(results: Sequence[BenchResult], *, peak: dict | None = None, machine: dict | None = None,
                 title: str | None = None) -> str:
    lines = []
    if title:
        lines += [f"### {title}", ""]
    if machine:
        gpu = f", {machine['gpu']}" if machine.get("gpu") else ""
        lines.append(f"Machine: {machine.get('cpu')} ({machine.get('cpu_cores')} cores, "
                     f"{machine.get('torch_threads')} torch threads){gpu}; torch {machine.get('torch')}; "
                     f"device {machine.get('device')}; {machine.get('date')}.")
    if peak:
        lines.append(f"Matmul peak measured in this run: {peak['tflops']:.3g} TFLOP/s "
                     f"({peak['dtype']}, {peak['n']}^3).")
    if lines:
        lines.append("")
    lines += [
        "| bench | variant | batch | images/s | ms/step | peak memory (MB) | TFLOP/s | of peak | ours/ref |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.bench} | {r.variant} | {r.batch_size} | {r.images_per_s:,.1f} | {r.ms_per_step:,.1f} | "
            f"{_fmt(r.peak_memory_mb, ',.0f')} | {_fmt(r.tflops, '.3g')} | "
            f"{_fmt(None if r.peak_fraction is None else 100 * r.peak_fraction, '.1f')}"
            f"{'%' if r.peak_fraction is not None else ''} | {_ratios(r)} |"
        )
    return "\n".join(lines) + "\n"


def to_json(results: Sequence[BenchResult], *, peak: dict | None = None, machine: dict | None = None,
            config: dict | None = None) -> dict:
    return {"machine": machine or {}, "peak": peak, "config": config or {},
            "results": [r.to_dict() for r in results]}


def write_json(path: str | Path, results: Sequence[BenchResult], **meta) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(results, **meta), indent=2, default=str) + "\n")
    return path
