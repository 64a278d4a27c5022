"""Render the README's benchmark tables from the JSON under benchmarks/results/.

    python benchmarks/render_readme.py          # rewrite the block between the bench markers
    python benchmarks/render_readme.py --check  # exit 1 if the README is out of date

The README never carries a typed-in number: this module (through that script) is the only
writer of that block. It reads JSON only (no torch, numpy or matplotlib use). It also writes
the integrations' options tables (``<!-- options:STACK:begin -->`` blocks) from their loss
tables, which import neither torchvision nor ultralytics.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from focalkit.demo.records import atomic_write_bytes

__all__ = [
    "detection_losses_table",
    "focal_table",
    "ghm_box_table",
    "iou_family_table",
    "main",
    "options_tables",
    "render",
    "suite_table",
]

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


def iou_family_table(data: dict) -> str:
    rows = data["rows"]
    backends = sorted({row["focalkit_backend"] for row in rows})
    lines = [
        "The IoU losses of YOLO-style detectors, forward + backward, against the plain eager "
        "formula and against the `bbox_iou` function YOLO forks copy (one flag per loss, "
        "Wise-IoU's running mean read back with `.item()` every call) "
        f"(`python benchmarks/bench_iou_family.py`); focalkit backend: {', '.join(backends)}. "
        + _env_line(data["environment"]),
        "",
        "| loss | boxes | plain (ms) | `bbox_iou` (ms) | focalkit (ms) | vs plain | vs `bbox_iou` |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['size']:,} | {row['plain_ms']:.2f} | "
            f"{row['bbox_iou_ms']:.2f} | {row['focalkit_ms']:.2f} | "
            f"{row['ratio_vs_plain']:.2f}x | {row['ratio_vs_bbox_iou']:.2f}x |"
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


def detection_losses_table(data: dict) -> str:
    """``benchmarks/bench_detection_losses.py``: torchvision's loss computation against the
    model patched by focalkit.integrations.torchvision."""
    h, w = data["size"]
    env = data["environment"]
    lines = [
        f"Loss computation of torchvision's detectors per training step (matching, targets, "
        f"losses, backward into the head outputs; backbone and heads not run): the model's own "
        f"against `focalkit.integrations.torchvision.set_losses(model)` (focal loss and the "
        f"model's box loss on both sides, equal values), {data['batch']} images of {h} x {w}, "
        f"{data['classes']} classes, {data['boxes']} boxes per image, {data['repeat']} steps "
        f"each in {data['rounds']} alternating blocks; median and fastest step "
        f"(`python benchmarks/bench_detection_losses.py`). "
        f"torchvision {env.get('torchvision')}. " + _env_line(env),
        "",
        "| model | anchors per image | torchvision median (ms) | focalkit median (ms) "
        "| speed-up (medians) | speed-up (fastest steps) | torchvision peak (MiB) "
        "| focalkit peak (MiB) | memory vs torchvision | max rel. diff |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in data["rows"]:
        tv, fk = row["torchvision_peak_bytes"], row["focalkit_peak_bytes"]
        lines.append(
            f"| {row['model']} | {row['anchors_per_image']:,} | {row['torchvision_ms']:.1f} | "
            f"{row['focalkit_ms']:.1f} | {row['speedup']:.2f}x | "
            f"{row['speedup_fastest']:.2f}x | "
            f"{_opt(None if tv is None else tv / 2**20, '.1f')} | "
            f"{_opt(None if fk is None else fk / 2**20, '.1f')} | "
            f"{_opt(row['memory_ratio'], '.2f')} | {row['max_rel_diff']:.1e} |"
        )
    return "\n".join(lines)


RENDERERS = {
    "focal_cpu.json": focal_table,
    "ghm_box_cpu.json": ghm_box_table,
    "iou_family_cpu.json": iou_family_table,
}
# rendered only when present (``focalkit bench``, ``make bench-stacks``), after the tables above
OPTIONAL_RENDERERS = {
    "suite-cpu-cpu-small.json": suite_table,
    "suite-cuda-gpu.json": suite_table,
    "detection_losses_cpu.json": detection_losses_table,
    "detection_losses_cuda.json": detection_losses_table,
}


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


def options_tables() -> dict[str, str]:
    """The integrations' options tables (``<!-- options:STACK:begin -->`` blocks), rendered
    from their loss tables (which import no stack)."""
    from focalkit.integrations import torchvision, ultralytics
    from focalkit.integrations._table import markdown

    return {
        "torchvision": markdown(torchvision.options_table()),
        "ultralytics": markdown(ultralytics.options_table()),
    }


def _replace(text: str, begin: str, end: str, content: str) -> str:
    if begin not in text:
        return text
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{content}\n{end}{tail}"


def main(argv: list[str] | None = None, *, root: Path) -> int:
    """``benchmarks/render_readme.py [--check]`` for the repository at ``root``: rewrite the
    benchmark block of ``root/README.md`` from ``root/benchmarks/results`` and the
    integrations' options tables from their loss tables, atomically, or (``--check``) return
    1 if they differ."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    readme = Path(root) / "README.md"
    text = readme.read_text(encoding="utf-8")
    new = _replace(text, BEGIN, END, render(Path(root) / "benchmarks" / "results"))
    for stack, table in options_tables().items():
        new = _replace(
            new, f"<!-- options:{stack}:begin -->", f"<!-- options:{stack}:end -->", table
        )
    if args.check:
        if new != text:
            print(
                "README benchmark or options tables are out of date: "
                "run python benchmarks/render_readme.py"
            )
            return 1
        return 0
    atomic_write_bytes(readme, new.encode("utf-8"))
    return 0
