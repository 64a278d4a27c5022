"""Render the README's benchmark tables from the JSON under benchmarks/results/.

    python benchmarks/render_readme.py          # rewrite the block between the bench markers
    python benchmarks/render_readme.py --check  # exit 1 if the README is out of date

The README never carries a typed-in number: this module (through that script) is the only
writer of that block. It reads JSON only (no torch, numpy or matplotlib use).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from focalkit.demo.records import atomic_write_bytes

__all__ = ["focal_table", "ghm_box_table", "main", "render", "suite_table"]

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def _env_line(env: dict) -> str:
    return (
        f"*{env['device']} ({env['device_name']}), {env['threads']} threads, "
        f"torch {env['torch']}, focalkit {env['focalkit']}*"
    )


def focal_table(data: dict) -> str:
    rows = data["results"]
    shape = " x ".join(str(s) for s in data["shape"])
    lines = [
        f"Sigmoid focal loss, forward + backward, {data['numel']:,} float32 logits ({shape}), "
        "against the eager torchvision formula (`python benchmarks/bench_focal_cpu.py`). "
        "The eager formula's time depends on whether glibc still holds its freed 16 MiB blocks "
        "(then no page faults), so the speed-up is given both from medians and, conservatively, "
        "from each variant's fastest call. " + _env_line(data["environment"]),
        "",
        "| variant | median (ms) | fastest (ms) | peak memory (MiB) | speed-up (medians) "
        "| speed-up (fastest calls) | memory vs eager |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in rows.items():
        peak = "n/a" if row["peak_bytes"] is None else f"{row['peak_bytes'] / 2**20:.1f}"
        mem = "n/a" if row["memory_vs_eager"] is None else f"{row['memory_vs_eager']:.2f}"
        lines.append(
            f"| {name} | {row['seconds'] * 1e3:.1f} | {row['min_seconds'] * 1e3:.1f} | {peak} | "
            f"{row['speedup_vs_eager']:.2f}x | {row['speedup_vs_eager_fastest']:.2f}x | {mem} |"
        )
    return "\n".join(lines)


def ghm_box_table(data: dict) -> str:
    lines = [
        "GHM-C against the per-bin loop with `.item()` (the mmdetection/official formulation), "
        "GHM-R against its loop, and the box losses against their plain eager formulas, "
        "forward + backward (`python benchmarks/bench_ghm_box.py`). "
        + _env_line(data["environment"]),
        "",
        "| loss | elements | baseline (ms) | focalkit (ms) | speed-up |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in data["rows"]:
        lines.append(
            f"| {row['name']} | {row['size']:,} | {row['baseline_ms']:.2f} | "
            f"{row['focalkit_ms']:.2f} | {row['ratio']:.1f}x |"
        )
    return "\n".join(lines)


def _opt(value, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def suite_table(data: dict) -> str:
    """The ``focalkit bench`` suite, forward + backward rows (all modes are in the JSON)."""
    lines = [
        f"Benchmark suite, preset `{data['preset']}`, forward + backward (`{data['command']}`; "
        "forward-only and backward-only rows are in the JSON). Bandwidth = minimal bytes / time "
        "(sigmoid focal, GHM-C, VFL, ASL: read logits and dense targets, write the gradient; "
        "softmax, Poly-1: read logits and int64 labels, write the gradient; QFL: logits, labels "
        "and scores; DFL: its own 17-bin logits and targets; copy: read and write the logits); "
        "speed-up is against the eager baseline of the same loss (torchvision formula, "
        "cross_entropy focal, per-bin GHM loop, mmdetection's QFL, Ultralytics' VFL and DFL, "
        "timm's ASL, the PolyLoss pseudocode). " + _env_line(data["environment"]),
        "",
        "| logits | dtype | implementation | time (ms) | peak memory (MiB) | GB/s | % of copy "
        "| vs eager | vs torch.compile |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in data["rows"]:
        if row["mode"] != "fwd+bwd":
            continue
        peak = None if row["peak_bytes"] is None else row["peak_bytes"] / 2**20
        lines.append(
            f"| {row['rows']:,} x {row['classes']} | {row['dtype']} | {row['impl']} | "
            f"{row['seconds'] * 1e3:.2f} | {_opt(peak, '.1f')} | {row['bandwidth_gbs']:.2f} | "
            f"{row['pct_of_copy']:.1f} | {_opt(row['ratio_vs_eager'], '.2f', 'x')} | "
            f"{_opt(row['ratio_vs_compile'], '.2f', 'x')} |"
        )
    if not data.get("complete", True):  # an interrupted run, to be finished with --resume
        total = len(data["sizes"]) * len(data["dtypes"])
        lines += ["", f"Partial: {len(data['done'])} of {total} size x dtype cases measured."]
    if data["skipped"]:
        lines += [
            "",
            "Not measured: "
            + "; ".join(f"{s['impl']} ({s['reason']})" for s in data["skipped"])
            + ".",
        ]
    return "\n".join(lines)


RENDERERS = {"focal_cpu.json": focal_table, "ghm_box_cpu.json": ghm_box_table}
# rendered only when present (``focalkit bench``), after the two tables above
OPTIONAL_RENDERERS = {"suite-cpu-cpu-small.json": suite_table, "suite-cuda-gpu.json": suite_table}


def render(results: Path) -> str:
    """The block between the markers, from the results files in ``results``."""
    parts = []
    for name, renderer in RENDERERS.items():
        path = results / name
        if path.exists():
            parts.append(renderer(json.loads(path.read_text())))
        else:
            parts.append(f"*No results yet for `{name}`: run `make bench`.*")
    for name, renderer in OPTIONAL_RENDERERS.items():
        path = results / name
        if path.exists():
            parts.append(renderer(json.loads(path.read_text())))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None, *, root: Path) -> int:
    """``benchmarks/render_readme.py [--check]`` for the repository at ``root``: rewrite the
    block of ``root/README.md`` from ``root/benchmarks/results`` atomically, or (``--check``)
    return 1 if it differs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    readme = Path(root) / "README.md"
    text = readme.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{render(Path(root) / 'benchmarks' / 'results')}\n{END}{tail}"
    if args.check:
        if new != text:
            print("README benchmark tables are out of date: run python benchmarks/render_readme.py")
            return 1
        return 0
    atomic_write_bytes(readme, new.encode("utf-8"))
    return 0
