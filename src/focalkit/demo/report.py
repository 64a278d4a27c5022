"""``report.md`` and its figures, written from the results (the run records) only.

Every sentence that compares losses is generated from the measured numbers: a loss "beat"
another when its mean over seeds is better, and the sentence says whether the difference is
larger than twice its standard error over seeds or within seed noise.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import plots
from .metrics import mean_std
from .records import atomic_write_bytes, canonical

__all__ = ["write_report"]

log = logging.getLogger("focalkit.demo")

FIGURES = "figures"

CLS_METRICS = (
    ("balanced_accuracy", "balanced accuracy", True),
    ("macro_f1", "macro-F1", True),
    ("worst_class_recall", "worst-class recall", True),
    ("ece", "ECE (15 bins)", False),
    ("nll", "NLL", False),
)
DET_METRICS = (
    ("AP", "AP", True),
    ("AP50", "AP50", True),
    ("AP75", "AP75", True),
    ("AP_small", "AP_small", True),
)


# --------------------------------------------------------------------------------------------
# numbers to words
# --------------------------------------------------------------------------------------------


def _fmt(mean: float, std: float, n: int) -> str:
    if n == 0:
        return "undefined"
    return f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}"


def _values(runs: Sequence[dict], metric: str) -> list[float]:
    return [r["metrics"].get(metric) for r in runs]


def _paired(runs_a: Sequence[dict], runs_b: Sequence[dict], metric: str) -> list[float] | None:
    """Per-seed differences a - b when both losses ran the same seeds (the seed fixes the data
    subset and the initialisation, so runs of one seed are paired); None otherwise."""
    a = {r["seed"]: r["metrics"].get(metric) for r in runs_a}
    b = {r["seed"]: r["metrics"].get(metric) for r in runs_b}
    if set(a) != set(b) or len(a) < 2:
        return None
    if any(
        v is None or v == -1 or (isinstance(v, float) and math.isnan(v))
        for v in [*a.values(), *b.values()]
    ):
        return None
    return [a[s] - b[s] for s in sorted(a)]


def _p_value(diffs: list[float] | None, a: list[float], b: list[float]) -> tuple[float, str]:
    """Two-sided p-value of the gap: a paired t-test over seeds when the runs are paired, else
    Welch's t-test."""
    from scipy import stats

    if diffs is not None:
        result = stats.ttest_rel(a, b)
        how = f"paired t-test over {len(diffs)} seeds"
    else:
        result = stats.ttest_ind(a, b, equal_var=False)
        how = f"Welch t-test, {len(a)} and {len(b)} seeds"
    return float(result.pvalue), how


def compare(
    label: str,
    name_a: str,
    runs_a: Sequence[dict],
    name_b: str,
    runs_b: Sequence[dict],
    metric: str,
    higher_is_better: bool = True,
) -> str:
    """One sentence: did ``name_a`` beat ``name_b`` on ``metric``, with the numbers and the
    p-value of a t-test over seeds (paired when both ran the same seeds: a seed fixes the data
    subset and the initialisation for every loss). A gap counts as a win only at p < 0.05."""
    ma, _, na = mean_std(_values(runs_a, metric))
    mb, _, nb = mean_std(_values(runs_b, metric))
    if na == 0 or nb == 0:
        return f"{label} is undefined for {name_a if na == 0 else name_b} here, so no comparison."
    direction = "" if higher_is_better else ", lower is better"
    numbers = f"{ma:.3f} vs {mb:.3f}{direction}"
    if round(ma, 3) == round(mb, 3):
        return f"{name_a} and {name_b} tied on {label} here ({numbers}, to three decimals)."
    better = ma > mb if higher_is_better else ma < mb
    if na < 2 or nb < 2:
        verb = "beat" if better else "did not beat"
        return f"{name_a} {verb} {name_b} on {label} here ({numbers}; one seed, no test possible)."
    diffs = _paired(runs_a, runs_b, metric)
    a = [v for v in _values(runs_a, metric) if v is not None and v != -1]
    b = [v for v in _values(runs_b, metric) if v is not None and v != -1]
    if diffs is not None and len({round(d, 12) for d in diffs}) == 1:
        p, how = 0.0, f"the same gap on all {len(diffs)} seeds"
        test = how
    else:
        p, how = _p_value(diffs, a, b)
        test = f"{how}, p = {p:.2g}"
    if better and p < 0.05:
        return f"{name_a} beat {name_b} on {label} here ({numbers}; {test})."
    if better:
        return (
            f"{name_a} was ahead of {name_b} on {label} here but not significantly "
            f"({numbers}; {test})."
        )
    if p < 0.05:
        return f"{name_a} did not beat {name_b} on {label} here; it was worse ({numbers}; {test})."
    return f"{name_a} did not beat {name_b} on {label} here ({numbers}; {test})."


def _best(groups: dict[str, list[dict]], metric: str, higher_is_better: bool) -> str | None:
    scored = [
        (mean_std(_values(runs, metric))[0], name)
        for name, runs in groups.items()
        if mean_std(_values(runs, metric))[2] > 0
    ]
    if not scored:
        return None
    return (max if higher_is_better else min)(scored)[1]


def _table(
    groups: dict[str, list[dict]], metrics: Sequence[tuple[str, str, bool]], first: str
) -> list[str]:
    with_steps = all("steps" in r for runs in groups.values() for r in runs)
    labels = [label for _, label, _ in metrics] + (["steps (kept)"] if with_steps else [])
    header = f"| {first} | " + " | ".join([*labels, "seeds"]) + " |"
    lines = [header, "|" + "---|" * (len(metrics) + 2 + with_steps)]
    best = {m: _best(groups, m, hib) for m, _, hib in metrics}
    for name, runs in groups.items():
        cells = []
        for metric, _, _ in metrics:
            cell = _fmt(*mean_std(_values(runs, metric)))
            if len(groups) > 1 and best[metric] == name:
                cell = f"**{cell}**"
            cells.append(cell)
        if with_steps:
            cells.append(_steps_cell(runs))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {len(runs)} |")
    return lines


def _steps_cell(runs: Sequence[dict]) -> str:
    """Steps trained, and the step of the kept model, per seed; a '*' marks a run the step
    cap stopped (still improving)."""
    parts = []
    for r in sorted(runs, key=lambda r: r["seed"]):
        val = r.get("validation") or {}
        mark = "*" if val.get("reason") == "cap" else ""
        parts.append(f"{r['steps']}{mark} ({val.get('best_step', '?')})")
    return ", ".join(parts)


def _budget_value(run: dict, budget: int | None) -> float | None:
    """The validation value the plateau rule would have kept with its cap at ``budget`` (the
    best evaluation up to it); ``None`` = the run's kept value."""
    val = run.get("validation") or {}
    pairs = [
        (s, v)
        for s, v in zip(val.get("step", []), val.get("value", []), strict=False)
        if budget is None or s <= budget
    ]
    if not pairs:
        return None
    return max(v for _, v in pairs)


def _order(groups: dict[str, list[dict]], budget: int | None) -> list[tuple[str, float]]:
    scored = []
    for name, runs in groups.items():
        values = [_budget_value(r, budget) for r in runs]
        kept = [v for v in values if v is not None]
        if kept:
            scored.append((name, sum(kept) / len(kept)))
    return sorted(scored, key=lambda item: -item[1])


def _budget_section(
    groups: dict[str, list[dict]], budgets: Sequence[int], yardstick: str, what: str
) -> list[str]:
    """Validation yardstick per loss at several caps on the training budget, the ranking at
    each, and from which budget on it no longer changes."""
    reached = [
        b for b in budgets if all(r.get("steps", 0) >= b for rs in groups.values() for r in rs)
    ]
    columns = [*(f"≤ {b} steps" for b in reached), "kept (plateau)"]
    orders = {b: _order(groups, b) for b in [*reached, None]}
    lines = [
        f"| {what} | " + " | ".join(columns) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for name in groups:
        cells = []
        for b in [*reached, None]:
            order = orders[b]
            rank = next((i for i, (n, _) in enumerate(order, 1) if n == name), None)
            value = dict(order).get(name)
            cells.append("-" if value is None else f"{value:.3f} (#{rank})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    final = [n for n, _ in orders[None]]
    settled = None
    for b in reached:
        if all([n for n, _ in orders[c]] == final for c in [x for x in reached if x >= b]):
            settled = b
            break
    changes = [b for b in reached if [n for n, _ in orders[b]] != final]
    lines += [
        "",
        f"Validation {yardstick} of the model the plateau rule would keep with its cap at each "
        "budget (mean over seeds; rank in brackets). "
        + (
            f"The ranking at the plateau is {' > '.join(final)}; it is already the ranking "
            f"from {settled} steps on."
            if settled is not None
            else f"The ranking at the plateau is {' > '.join(final)}; no earlier budget in "
            "this table gives it"
            + (f" (it differs at {', '.join(str(b) for b in changes)} steps)." if changes else ".")
        ),
        "",
    ]
    return lines


def _figure(lines: list[str], out_dir: Path, path: Path | None, alt: str, caption: str) -> None:
    if path is None:
        return
    rel = path.relative_to(out_dir).as_posix()
    lines += [f"![{alt}]({rel})", "", caption, ""]


def _try_figure(what: str, draw) -> Path | None:
    try:
        return draw()
    except Exception as exc:  # a figure must not cost the whole report
        log.warning("could not draw the %s figure: %s: %s", what, type(exc).__name__, exc)
        return None


def _by(runs: Sequence[dict], key: str, order: Sequence[str] = ()) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for name in order:
        mine = [r for r in runs if r[key] == name]
        if mine:
            groups[name] = mine
    for r in runs:
        if r[key] not in groups:
            groups.setdefault(r[key], []).append(r)
    return groups


def _seeds(runs: Sequence[dict]) -> str:
    return ", ".join(str(s) for s in sorted({r["seed"] for r in runs}))


# --------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------


def _rule_text(setting: dict, yardstick: str) -> str:
    from .plateau import PlateauRule

    try:
        rule = PlateauRule.of(setting)
    except (KeyError, ValueError):
        return "(not recorded)"
    return rule.describe(yardstick)


def _header(results: dict) -> list[str]:
    options = results.get("options", {})
    env = results.get("environment", {})
    seeds = options.get("seeds", {})
    lines = [
        "# focalkit demo report",
        "",
        f"Generated by focalkit {results.get('focalkit', '?')} on {results.get('created', '?')} "
        f"with `{' '.join(results.get('command', ['focalkit', 'demo']))}` "
        f"(preset `{options.get('preset', '?')}`, device `{options.get('device', '?')}`, "
        f"torch {env.get('torch', '?')}, Python {env.get('python', '?')}, "
        f"{env.get('platform', '?')}).",
        "",
        "Seeds per configuration: "
        + ", ".join(f"{study} {n}" for study, n in seeds.items())
        + f"; {options.get('jobs', 1)} worker process(es), one thread each (the records do not "
        "depend on it). Within a study every loss used the same data, model, optimiser, "
        "learning rate, batch size and seeds, and was **trained until its validation yardstick "
        "stopped improving**: every study carves a validation split out of its training data "
        "(never the test set), evaluates it at regular steps, stops a run after a fixed number "
        "of evaluations without a gain, and tests the model of the best evaluation; each "
        "study states its rule, and the tables give the steps each run trained (and the step "
        "of the model kept). A step count marked * hit the study's cap while still improving. "
        "Nothing was tuned per loss. "
        "Tables give mean ± standard deviation over seeds; the best mean per column is bold. "
        "Comparisons below are generated from these numbers: a loss 'beat' another only when its "
        "mean is better and a t-test over seeds gives p < 0.05 (paired by seed, since a seed fixes "
        "the data subset and initialisation for every loss); with 2-3 seeds such a test has "
        "little power, so 'not significantly' is the expected outcome for small gaps.",
        "",
        "Every run's record (configuration, metrics, curves, versions, seed) is in "
        "`runs/<study>/<name>-seed<k>.json`; all of them are in `results.json`.",
        "",
    ]
    return lines


def _focal_curves_section(results: dict, out_dir: Path, fig_dir: Path) -> list[str]:
    lines = ["## Focal loss", ""]
    data = results.get("focal_curves")
    if not data:
        return []
    path = _try_figure(
        "focal-curves", lambda: plots.plot_focal_curves(data, fig_dir / "focal-curves.png")
    )
    p_t = np.asarray(data["p_t"])
    i = int(np.argmin(np.abs(p_t - 0.9)))
    ce, fl2 = data["loss"][data["gammas"].index(0.0)][i], None
    if 2.0 in data["gammas"]:
        fl2 = data["loss"][data["gammas"].index(2.0)][i]
    ratio = (
        f" At p_t = {p_t[i]:.2f} the γ = 2 loss is {ce / fl2:.0f}× smaller than cross-entropy."
        if fl2
        else ""
    )
    _figure(
        lines,
        out_dir,
        path,
        "focal loss curves",
        "Loss and gradient magnitude of a positive example against p_t for γ in "
        f"{', '.join(f'{g:g}' for g in data['gammas'])} (Fig. 1 of arXiv 1708.02002), computed "
        "with `fk.sigmoid_focal_loss(alpha=None)` and autograd: larger γ shrinks the loss and "
        f"gradient of well-classified examples.{ratio}",
    )
    return lines


def _classification_section(runs: list[dict], out_dir: Path, fig_dir: Path) -> list[str]:
    from .classification import CLASSIFICATION_LOSSES

    if not runs:
        return []
    groups = _by(runs, "loss", CLASSIFICATION_LOSSES)
    first = runs[0]
    setting = first["setting"]
    counts = first["train_counts"]
    same_counts = all(r["train_counts"] == counts for r in runs)
    test_n = sum(first.get("test_counts", []))
    total_s = sum(r.get("time_s", 0.0) for r in runs)
    lines = [
        "## Study 1: long-tailed classification (real handwritten digits)",
        "",
        "Data: scikit-learn's bundled 8×8 digit scans (`load_digits`). A balanced test split "
        f"of {setting['test_per_class']} images per class ({test_n} in all) is held out first; "
        "the training split is long-tailed with exponential class sizes "
        + (
            f"{counts} (imbalance ratio {first['imbalance_ratio']:.0f}, {sum(counts)} images)"
            if same_counts
            else "that depend on the seed"
        )
        + ". Which images fill each class size depends on the seed (the same for every loss).",
        "",
        f"Validation: a balanced split of {setting.get('val_per_class', '?')} images per class "
        "carved from the training part before it is made long-tailed (the same for every run). "
        f"Training, the same for every loss: MLP 64-{setting['hidden']}-10, Adam, lr "
        f"{setting['lr']:g}, weight decay {setting['weight_decay']:g}, batch {setting['batch_size']}, "
        f"seeds {_seeds(runs)}; plateau rule: "
        + _rule_text(setting, "balanced accuracy")
        + f". Total {total_s:.0f} s of training. "
        f"Losses: `ce` (cross-entropy), `cb_ce` (cross-entropy with class-balanced weights, "
        f"β = {setting['cb_beta']:g}), `focal` (softmax focal, γ = {setting['focal_gamma']:g}), "
        "`flsd53` (sample-dependent γ: 5 if p_t < 0.2 else 3), `auto` (automated focal loss: "
        "γ = -log p̂, p̂ a running mean of p_t)"
        + (
            f", `poly1` (Poly-1 cross-entropy, ε = {setting.get('poly1_epsilon', 1.0):g})"
            if "poly1" in groups
            else ""
        )
        + (
            ", `asl` (asymmetric loss on ten one-vs-all sigmoid outputs: γ- = 4, γ+ = 1, "
            "clip 0.05, sum / batch; its metrics take the softmax of those logits like every "
            "other row, so its ECE and NLL score a softmax it was not trained to calibrate)"
            if "asl" in groups
            else ""
        )
        + ".",
        "",
        *_table(groups, CLS_METRICS, "loss"),
        "",
        *_budget_section(groups, (500, 1000, 2000), "balanced accuracy", "loss"),
        "What the numbers say:",
        "",
    ]
    if "ce" in groups:
        for name in groups:
            if name == "ce":
                continue
            parts = [
                compare(label, name, groups[name], "ce", groups["ce"], metric, hib)
                for metric, label, hib in (CLS_METRICS[0], CLS_METRICS[2], CLS_METRICS[3])
            ]
            lines.append(f"- {' '.join(parts)}")
    if "flsd53" in groups and "focal" in groups:
        lines.append(
            "- "
            + compare("ECE", "flsd53", groups["flsd53"], "focal", groups["focal"], "ece", False)
        )
    if "poly1" in groups and "focal" in groups:
        lines.append(
            "- "
            + compare(
                "balanced accuracy",
                "poly1",
                groups["poly1"],
                "focal",
                groups["focal"],
                "balanced_accuracy",
            )
        )
    if "auto" in groups:
        gammas = [r["final_gamma"] for r in groups["auto"] if "final_gamma" in r]
        if gammas:
            mean, std, n = mean_std(gammas)
            p_hat = math.exp(-mean)
            lines.append(
                f"- `auto` ended training with γ = {_fmt(mean, std, n)}, i.e. a running mean "
                f"p̂ ≈ {p_hat:.2f} of p_t on the training batches"
                + (
                    ", so late in training it is close to plain cross-entropy."
                    if mean < 0.5
                    else "."
                )
            )
    best = [
        f"{label}: {_best(groups, metric, hib)}"
        for metric, label, hib in CLS_METRICS
        if _best(groups, metric, hib)
    ]
    lines += [
        f"- Best mean per metric — {'; '.join(best)}.",
        "- For scale: Mukhoti et al. (NeurIPS 2020) report on CIFAR-10 / ResNet-50 an ECE of "
        "4.35 % for CE, 1.48 % for focal loss γ = 3 and 1.55 % for FLSD-53; this study is a much "
        "smaller problem, so only the direction is comparable.",
        "",
    ]

    path = _try_figure(
        "per-class recall",
        lambda: plots.plot_per_class_recall(runs, fig_dir / "classification-per-class-recall.png"),
    )
    tail = len(counts) - 1
    tail_recall = {
        name: mean_std([r["per_class_recall"][tail] for r in g])[0] for name, g in groups.items()
    }
    best_tail = max(tail_recall, key=lambda name: tail_recall[name])
    _figure(
        lines,
        out_dir,
        path,
        "per-class recall",
        "Test recall per class (training size shrinks from left to right); on the rarest "
        f"class ({tail}) the best mean recall is {best_tail}'s ({tail_recall[best_tail]:.2f}) "
        + (f"against ce's {tail_recall['ce']:.2f}." if "ce" in tail_recall else "."),
    )
    path = _try_figure(
        "reliability",
        lambda: plots.plot_reliability(runs, fig_dir / "classification-reliability.png"),
    )
    _figure(
        lines,
        out_dir,
        path,
        "reliability diagrams",
        "Reliability diagrams: test accuracy per confidence bin (blue) against the bin's mean "
        "confidence (red) and the diagonal of perfect calibration; below, the number of test "
        "predictions per bin (log scale). Bars above the diagonal mean under-confidence.",
    )
    path = _try_figure(
        "classification curves",
        lambda: plots.plot_classification_curves(runs, fig_dir / "classification-curves.png"),
    )
    _figure(
        lines,
        out_dir,
        path,
        "classification training curves",
        "Training curves: cross-entropy on the whole training split (the same yardstick for "
        "every loss) and the validation balanced accuracy the plateau rule watched.",
    )
    return lines


DET_BUDGETS = (400, 800, 1600)


def _ghm_lines(
    cls_sweep: dict[str, list[dict]],
    box_sweep: dict[str, list[dict]],
    base_cls: str,
    base_box: str,
) -> list[str]:
    """What the measurements say about GHM-C and GHM-R: their budget, their gap to the base
    loss at the old budget and at the plateau."""
    lines = []
    for kind, sweep, name, base in (
        ("GHM-C", cls_sweep, "ghmc", base_cls),
        ("GHM-R", box_sweep, "ghmr", base_box),
    ):
        if name not in sweep or base not in sweep:
            continue
        mine, theirs = sweep[name], sweep[base]
        steps = [r.get("steps") for r in mine]
        best = [(r.get("validation") or {}).get("best_step") for r in mine]
        early = [_budget_value(r, 400) for r in mine]
        early_base = [_budget_value(r, 400) for r in theirs]
        late = [_budget_value(r, None) for r in mine]
        late_base = [_budget_value(r, None) for r in theirs]
        if None in early + early_base + late + late_base:
            continue
        m = lambda xs: sum(xs) / len(xs)  # noqa: E731
        test_gap = mean_std(_values(mine, "AP"))[0] - mean_std(_values(theirs, "AP"))[0]
        lines.append(
            f"- **{kind}** (`{name}`) trained {', '.join(str(x) for x in steps)} steps (model "
            f"kept at {', '.join(str(x) for x in best)}). At 400 steps its validation AP was "
            f"{m(early):.3f} against {base}'s {m(early_base):.3f} (gap "
            f"{m(early) - m(early_base):+.3f}); at the plateau {m(late):.3f} against "
            f"{m(late_base):.3f} (gap {m(late) - m(late_base):+.3f}); on the test set the gap "
            f"is {test_gap:+.3f} AP. "
            + (
                "The gap shrinks with training: much of a short-budget deficit is slower "
                "convergence, not a worse optimum."
                if abs(m(late) - m(late_base)) < abs(m(early) - m(early_base)) - 0.01
                else "Training longer does not close the gap here."
            )
        )
    if lines:
        lines.append("")
    return lines


def _detection_names():
    from focalkit._optional import optional_import

    from .detection import BOX_LOSSES, CLS_LOSSES, DEFAULT_BOX, DEFAULT_CLS

    detection, _ = optional_import("focalkit.demo.detection.study")
    return detection, CLS_LOSSES, BOX_LOSSES, DEFAULT_CLS, DEFAULT_BOX


def _setting_object(detection, setting: dict):
    """The DetectionSetting a record was made with (for ``render_scene``)."""
    for preset in ("quick", "default", "full"):
        candidate = detection.detection_setting(preset)
        if canonical(dataclasses.asdict(candidate)) == canonical(setting):
            return candidate
    kind = type(detection.detection_setting("quick"))
    return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in setting.items()})


def _share_of_hardest(fraction: Sequence[float], cumulative: Sequence[float], top: float) -> float:
    """Share of the total loss carried by the ``top`` fraction of samples with the largest
    loss (the curve is sorted from low to high loss)."""
    return 1.0 - float(np.interp(1.0 - top, fraction, cumulative))


def _detection_section(runs: list[dict], out_dir: Path, fig_dir: Path) -> list[str]:
    if not runs:
        return []
    detection, cls_names, box_names, default_cls, default_box = _detection_names()
    cls_sweep = _by([r for r in runs if r["box_loss"] == default_box], "cls_loss", cls_names)
    box_sweep = _by([r for r in runs if r["cls_loss"] == default_cls], "box_loss", box_names)
    first = runs[0]
    setting = first["setting"]
    total_s = sum(r.get("time_s", 0.0) for r in runs)
    anchors = first.get("anchors", {})
    keys = (
        "image_size",
        "num_train",
        "num_val",
        "num_test",
        "width",
        "batch_size",
        "lr",
        "weight_decay",
        "ema_decay",
    )
    budget = ", ".join(f"{k} {setting[k]}" for k in keys if k in setting)
    full = ", ".join(f"`{k}={v}`" for k, v in setting.items())
    lines = [
        "## Study 2: dense detection on synthetic scenes",
        "",
        f"Setting, the same for every loss: {budget}; AdamW with a linear warm-up then a "
        "constant learning rate, and an exponential moving average (EMA) of the weights, which "
        "is what is validated and tested; seeds "
        f"{_seeds(runs)}; total {total_s:.0f} s of training. The validation split is "
        f"{setting.get('num_val', '?')} more scenes of the training stream. Plateau rule: "
        + _rule_text(setting, "COCO AP")
        + ". AP is COCO-style (pycocotools COCOeval on the written annotations); -1 "
        "(undefined, e.g. no small objects) is left out of the means."
        + (
            " The default setting is the reduced CPU one (96-pixel scenes, a 16-channel "
            "network, one seed); `--full` runs 256-pixel scenes, a wider network and three "
            "seeds."
            if setting.get("preset") == "default"
            else ""
        ),
        "",
        f"<details><summary>full detection setting</summary>\n\n{full}\n\n</details>",
        "",
    ]
    if anchors:
        lines += [
            f"Anchors: {anchors.get('num_anchors')} per image, about "
            f"{anchors.get('fg_per_image', float('nan')):.1f} foreground and "
            f"{anchors.get('bg_per_image', float('nan')):.0f} background per image "
            f"(foreground : background = 1 : {1 / max(anchors.get('fg_bg_ratio', float('nan')), 1e-12):.0f})."
            if anchors.get("fg_bg_ratio")
            else f"Anchors: {anchors}",
            "",
        ]
    lines += [
        f"### Classification losses (box loss {default_box})",
        "",
        *_table(cls_sweep, DET_METRICS, "cls loss"),
        "",
        "What the numbers say:",
        "",
    ]
    pairs = [
        ("focal", "bce"),
        ("focal", "alpha_bce"),
        ("alpha_bce", "bce"),
        ("ghmc", "focal"),
        ("ghmc", "bce"),
        ("qfl", "focal"),
        ("vfl", "focal"),
        ("vfl", "qfl"),
    ]
    for a, b in pairs:
        if a in cls_sweep and b in cls_sweep:
            lines.append("- " + compare("AP", a, cls_sweep[a], b, cls_sweep[b], "AP"))
    iou_aware = [
        compare("AP75", name, cls_sweep[name], "focal", cls_sweep["focal"], "AP75")
        for name in ("qfl", "vfl")
        if name in cls_sweep and "focal" in cls_sweep
    ]
    if iou_aware:
        lines.append(
            "- "
            + " ".join(iou_aware)
            + " (`qfl` and `vfl` train each positive's score towards the IoU of its box, so "
            "that the ranking at NMS favours well-localised boxes: AP75 is where that shows.)"
        )
    lines += [
        "- For scale: on COCO (RetinaNet, ResNet-50-FPN) the focal-loss paper reports 34.0 AP for "
        "focal loss against 31.1 for the best α-balanced CE, and the GHM authors 35.8 AP for "
        "GHM-C against 35.6 for focal loss; this is a small synthetic problem. `qfl` and `vfl` (IoU-aware classification, GFL and VarifocalNet) use the IoU "
        "of each positive anchor's decoded box with its ground truth, computed under no-grad "
        "at every step, as the positive's target; everything else is the focal run's.",
        "",
        f"### Box losses (classification loss {default_cls})",
        "",
        *_table(box_sweep, DET_METRICS, "box loss"),
        "",
        "What the numbers say:",
        "",
    ]
    for name in box_sweep:
        if name != "smooth_l1" and "smooth_l1" in box_sweep:
            lines.append(
                "- "
                + compare("AP", name, box_sweep[name], "smooth_l1", box_sweep["smooth_l1"], "AP")
            )
    for other in ("ciou", "giou"):
        if "focal_eiou" in box_sweep and other in box_sweep:
            lines.append(
                "- "
                + compare(
                    "AP75", "focal_eiou", box_sweep["focal_eiou"], other, box_sweep[other], "AP75"
                )
                + " (Focal-EIoU's paper claims better localisation, i.e. higher AP75, than CIoU/GIoU.)"
            )
    for name in ("siou", "wiou", "inner_ciou"):  # the YOLO-era losses against their CIoU base
        if name in box_sweep and "ciou" in box_sweep:
            lines.append(
                "- " + compare("AP", name, box_sweep[name], "ciou", box_sweep["ciou"], "AP")
            )
    lines.append("")
    lines += [
        "### Training budget: where each loss stops and whether the ranking moves",
        "",
        *_budget_section(cls_sweep, DET_BUDGETS, "AP", "cls loss"),
        *_budget_section(box_sweep, DET_BUDGETS, "AP", "box loss"),
        *_ghm_lines(cls_sweep, box_sweep, "focal", "smooth_l1"),
    ]
    path = _try_figure(
        "detection validation",
        lambda: plots.plot_validation_curves(
            {
                f"classification loss (box loss {default_box})": cls_sweep,
                f"box loss (classification loss {default_cls})": box_sweep,
            },
            fig_dir / "detection-validation.png",
            ylabel="validation AP (EMA weights)",
            title="Study 2: validation AP against training steps",
            budgets=DET_BUDGETS,
        ),
    )
    _figure(
        lines,
        out_dir,
        path,
        "validation AP against steps",
        "Validation AP of every run against its training steps: the plateau rule's view. The "
        "dotted lines are the budgets of the table above (400 steps is the budget the earlier "
        "demo gave every loss).",
    )

    path = _try_figure(
        "AP per loss",
        lambda: plots.plot_ap_per_loss(
            {k: _values(v, "AP") for k, v in cls_sweep.items()},
            {k: _values(v, "AP") for k, v in box_sweep.items()},
            fig_dir / "detection-ap.png",
            cls_title=f"classification loss (box loss {default_box})",
            box_title=f"box loss (classification loss {default_cls})",
        ),
    )
    _figure(
        lines,
        out_dir,
        path,
        "AP per loss",
        "Test AP per loss, mean with the standard deviation over seeds (dots: single seeds); "
        "left the classification-loss sweep, right the box-loss sweep.",
    )

    hist_runs = {
        k: v
        for k, v in cls_sweep.items()
        if k in ("bce", "focal", "ghmc") and all("grad_norm_hist" in r for r in v)
    }
    if hist_runs:
        path = _try_figure(
            "gradient-norm density",
            lambda: plots.plot_grad_norm_density(hist_runs, fig_dir / "detection-grad-norm.png"),
        )
        easy = {}
        for name, group in hist_runs.items():
            edges = np.asarray(group[0]["grad_norm_hist"]["edges"])
            counts = np.sum([r["grad_norm_hist"]["counts"] for r in group], axis=0)
            easy[name] = counts[edges[1:] <= 0.1 + 1e-9].sum() / max(counts.sum(), 1)
        easy_text = ", ".join(f"{name} {100 * share:.1f} %" for name, share in easy.items())
        _figure(
            lines,
            out_dir,
            path,
            "gradient-norm density",
            "Distribution of the gradient norm g = |p - y| over the held-out anchors of the "
            "trained detectors (log scale, as Fig. 1 of the GHM paper); the share of anchors "
            f"with g ≤ 0.1 is {easy_text}.",
        )

    focal_runs = cls_sweep.get("focal") or [r for r in runs if r["cls_loss"] == default_cls]
    focal_runs = [r for r in focal_runs if r.get("cumulative_loss")]
    if focal_runs:
        cumulative = focal_runs[0]["cumulative_loss"]
        path = _try_figure(
            "cumulative loss",
            lambda: plots.plot_cumulative_loss(
                cumulative,
                fig_dir / "detection-cumulative-loss.png",
                title=f"Cumulative focal loss of the trained focal detector's anchors "
                f"({focal_runs[0]['name']}, seed {focal_runs[0]['seed']}), as Fig. 4 of arXiv 1708.02002",
            ),
        )
        shares = []
        for gamma, neg in zip(cumulative["gammas"], cumulative["neg"], strict=True):
            shares.append(
                f"γ = {gamma:g}: {100 * _share_of_hardest(cumulative['fraction'], neg, 0.2):.0f} %"
            )
        _figure(
            lines,
            out_dir,
            path,
            "cumulative loss",
            "Normalised cumulative loss of positive and negative anchors sorted by loss; the "
            "share of the negatives' loss carried by the hardest 20 % of negatives is "
            + "; ".join(shares)
            + " (in the paper, larger γ concentrates the negatives' loss on a few hard ones).",
        )

    path = _try_figure(
        "detection curves",
        lambda: plots.plot_detection_curves(cls_sweep, box_sweep, fig_dir / "detection-curves.png"),
    )
    _figure(
        lines,
        out_dir,
        path,
        "detection training curves",
        "Training losses over steps, mean over seeds: the classification loss of each "
        "classification-loss run and the box loss of each box-loss run (different losses are on "
        "different scales, so compare shapes, not heights).",
    )

    scene_runs = [r for r in focal_runs if r.get("examples")] if focal_runs else []
    if scene_runs and detection is not None:
        run = min(scene_runs, key=lambda r: r["seed"])
        threshold = float(run["setting"].get("example_score", 0.3))

        def draw_scenes():
            setting_obj = _setting_object(detection, run["setting"])
            examples = run["examples"][:8]
            images = [
                detection.render_scene(setting_obj, e.get("split", "test"), e["index"])
                for e in examples
            ]
            return plots.plot_scenes(
                images,
                examples,
                fig_dir / "detection-scenes.png",
                title=f"Test scenes, {run['name']} seed {run['seed']}",
                score_threshold=threshold,
                class_names=getattr(detection, "CLASS_NAMES", ()),
            )

        path = _try_figure("scenes", draw_scenes)
        shown = run["examples"][:8]
        n_true = sum(len(e.get("true", [])) for e in shown)
        n_pred = sum(1 for e in shown for p in e.get("pred", []) if p[4] >= threshold)
        _figure(
            lines,
            out_dir,
            path,
            "test scenes",
            f"Test scenes with the true boxes and the {run['name']} detector's predictions "
            f"(score ≥ {threshold:g}, {n_pred} in {len(shown)} scenes holding {n_true} objects), "
            "drawn on the images `render_scene` makes from the setting stored in the record.",
        )
    return lines


# below this test AP50 for every run, Study 3's detectors have not learned the task and the
# report draws no comparison from them
TREES_LEARNED_AP50 = 0.2
TREE_METRICS = (
    ("AP", "AP", True),
    ("AP50", "AP50", True),
    ("AP75", "AP75", True),
    ("AP50_transfer", "AP50 other sites", True),
    ("AP50_OSBS", "AP50 OSBS_029", True),
    ("AP50_SOAP", "AP50 SOAP_061", True),
)


def _tree_images(results: dict) -> dict[str, np.ndarray]:
    from .detection import neon

    data = results.get("tree_data") or {}
    wheel = Path(data.get("path", ""))
    if not wheel.is_file():
        raise FileNotFoundError(f"the data wheel {wheel} is not on this machine")
    return {
        tile.name: tile.image
        for split in ("test", "transfer")
        for tile in neon.split_tiles(wheel, split)
    }


def _top_square(image: np.ndarray, example: dict) -> tuple[np.ndarray, dict]:
    """A tall test strip's top square (side: the strip's width) and the boxes whose centre is
    in it, clipped; other images as they are. ``index`` becomes a short name of the image."""
    tile = example["tile"]
    short = f"YELL {tile.rsplit('_', 1)[-1]}" if tile.startswith("2019_YELL") else tile
    height, width = image.shape[:2]
    if height <= width:
        return image, {**example, "index": short}

    def inside(rows: list) -> list:
        return [
            [x1, y1, x2, min(y2, width), *rest]
            for x1, y1, x2, y2, *rest in rows
            if (y1 + y2) / 2 < width
        ]

    square = {
        **example,
        "index": f"{short}, top",
        "true": inside(example.get("true", [])),
        "pred": inside(example.get("pred", [])),
    }
    return image[:width], square


def _trees_section(results: dict, runs: list[dict], out_dir: Path, fig_dir: Path) -> list[str]:
    if not runs:
        return []
    data = results.get("tree_data") or {}
    groups = _by(runs, "name")
    first = runs[0]
    setting = first["setting"]
    total_s = sum(r.get("time_s", 0.0) for r in runs)
    splits = data.get("splits", {})
    split_rows = [
        f"| {split} | {t['tile'].split('[')[0]} | {t.get('columns', 'all')} | {t['site']} | "
        f"{t['width']} x {t['height']} | {t['boxes']} | {', '.join(t['labels'])} |"
        for split in ("train", "val", "test", "transfer")
        for t in splits.get(split, [])
    ]
    total_boxes = sum(t["boxes"] for ts in splits.values() for t in ts)
    capped = sum((r.get("validation") or {}).get("reason") == "cap" for r in runs)
    reduced = setting.get("preset") != "full"
    lines = [
        "## Study 3: tree crowns in real aerial photographs (NEON)",
        "",
        "Data: RGB orthophotos at 10 cm per pixel from the National Ecological Observatory "
        "Network's Airborne Observation Platform (NEON data are released under CC0 1.0), with "
        "tree-crown boxes drawn by the DeepForest authors (Weinstein et al. 2019, the "
        "NeonTreeEvaluation benchmark), as shipped in `deepforest/data/` of the "
        f"`{data.get('requirement', 'deepforest')}` wheel from the Python package index "
        f"(licence: {data.get('licence', 'MIT License')}, `{data.get('licence_member', '')}`; "
        f"SHA-256 `{str(data.get('sha256', ''))[:16]}…`). The images and the Pascal VOC boxes "
        f"are read straight from the wheel: {total_boxes} boxes in all, one class (`tree`; "
        "SOAP_061's `Alive`/`Dead` labels are both trees).",
        "",
        "| split | tile | columns | site | pixels (w x h) | boxes | labels in the file |",
        "|---|---|---|---|---|---|---|",
        *split_rows,
        "",
        "Each Yellowstone tile is cut into vertical strips: its left 60 % to train on, the next "
        "20 % to validate on, the right 20 % to test on, so every split holds both tiles and no "
        "test crown is seen in training (a crown belongs to the strip holding its box's centre, "
        "its box clipped at the strip's edge). OSBS_029 and SOAP_061, two other sites, are a "
        "transfer test: how far a detector trained in Yellowstone carries to other forests. "
        "Evaluation: pycocotools COCOeval on the annotation files' own boxes (predictions are "
        "scaled back to the PNG's pixels), up to "
        f"{setting.get('max_detections')} detections per image.",
        "",
        f"Detector: the tiny RetinaNet of Study 2 (width {setting.get('width')}), trained from "
        f"scratch on random {setting.get('patch')}-pixel crops of the training strips resampled "
        f"by {setting.get('scale')} (random quarter turns and flips), batch "
        f"{setting.get('batch_size')}, AdamW lr {setting.get('lr')}, EMA weights; the same "
        "losses and options as Study 2. At inference it sees what it saw in training: "
        f"{setting.get('patch')}-pixel windows overlapping by a quarter, merged by NMS (on a "
        "whole strip at once its GroupNorm statistics would be taken over the strip instead "
        "of a crop). Plateau rule: "
        + _rule_text(setting, "COCO AP50")
        + f". Seeds {_seeds(runs)}; total {total_s:.0f} s of training.",
        "",
    ]
    if reduced:
        lines += [
            "**Reduced version.** To fit the default run's ten minutes on a 2-core CPU this "
            f"study runs at half resolution, {len(groups)} configurations, "
            f"{len({r['seed'] for r in runs})} seed(s) and at most {setting.get('max_steps')} "
            f"steps; {capped} of {len(runs)} runs reached that cap while their validation AP50 "
            "was still rising. `focalkit demo --full` (meant for a GPU) runs it at full "
            "resolution, with every loss of Study 2, three seeds, up to 20000 steps, and adds "
            "torchvision's RetinaNet (ResNet-18 FPN, no pretrained weights, losses set through "
            "`focalkit.integrations.torchvision`) when torchvision imports.",
            "",
        ]
    lines += [*_table(groups, TREE_METRICS, "run"), ""]
    names = list(groups)
    best_ap50 = max(float(r["metrics"].get("AP50", 0.0)) for r in runs)
    best_val = max(float((r.get("validation") or {}).get("best_value", 0.0)) for r in runs)
    best_far = max(float(r["metrics"].get("AP50_transfer", 0.0)) for r in runs)
    train_crowns = sum(t["boxes"] for t in splits.get("train", []))
    if best_ap50 < TREES_LEARNED_AP50:
        # a comparison of detectors that have not learned the task says nothing about the
        # losses: say so instead of ranking noise
        lines += [
            f"**No run learned the task at this budget.** The best test AP50 of any run is "
            f"{best_ap50:.3f} and the best validation AP50 {best_val:.3f}; the ground truth "
            f"scores 1.0, and below {TREES_LEARNED_AP50:g} AP50 the differences between rows are "
            "of the size of the run-to-run noise (the validation curves below move by as much "
            "between evaluations). These rows show that the real-data pipeline works end to "
            "end (reading the wheel, crops, training, COCOeval, drawing), not how the losses "
            "compare: no ranking is drawn from them.",
            "",
        ]
    else:
        lines += ["What the numbers say (test strips, in Yellowstone):", ""]
        base = next((n for n in names if n.startswith("focal-smooth_l1")), None)
        if base is not None:
            for name in names:
                if name != base:
                    lines.append(
                        "- " + compare("AP50", name, groups[name], base, groups[base], "AP50")
                    )
        lines.append(
            f"- Other sites: the best AP50 on OSBS_029 and SOAP_061 is {best_far:.3f}. A "
            f"detector trained from scratch on {train_crowns} Yellowstone crowns does not carry to "
            "Florida's pine savanna or California's dead snags; this column measures that "
            "gap, not the losses."
        )
        lines.append("")
        lines += _budget_section(groups, (200, 400, 800), "AP50", "run")
    path = _try_figure(
        "trees validation",
        lambda: plots.plot_validation_curves(
            {"tree crowns": groups},
            fig_dir / "trees-validation.png",
            ylabel="validation AP50 (EMA weights)",
            title="Study 3: validation AP50 against training steps",
        ),
    )
    _figure(
        lines,
        out_dir,
        path,
        "tree validation AP50 against steps",
        "Validation AP50 (the validation strips of both Yellowstone tiles) of every run against "
        "its training steps.",
    )
    shown = next((groups[n] for n in names if n.startswith("focal-")), None) or groups[names[0]]
    run = min(shown, key=lambda r: r["seed"])
    threshold = float(setting.get("example_score", 0.3))

    def draw() -> Path:
        images = _tree_images(results)
        shown = [
            _top_square(images[e["tile"]], {**e, "split": e.get("split", "test")})
            for e in run.get("examples", [])
            if e["tile"] in images
        ]
        return plots.plot_scenes(
            [image for image, _ in shown],
            [example for _, example in shown],
            fig_dir / "trees-test.png",
            title=f"Test images, {run['name']} seed {run['seed']}",
            score_threshold=threshold,
            class_names=("tree",),
        )

    path = _try_figure("tree test images", draw)
    n_true = sum(len(e["true"]) for e in run.get("examples", []))
    n_pred = sum(1 for e in run.get("examples", []) for p in e["pred"] if p[4] >= threshold)
    _figure(
        lines,
        out_dir,
        path,
        "test images with boxes",
        "The top square of each Yellowstone test strip, then the two other sites' images, with "
        f"the true crowns (green, dashed) and the {run['name']} detector's predictions with "
        f"score ≥ {threshold:g} (red); over the whole test and transfer images it made {n_pred} "
        f"such predictions for {n_true} true crowns.",
    )
    return lines


def write_report(results: dict, out_dir: Path) -> Path:
    """Draw the figures into ``out_dir/figures`` and write ``out_dir/report.md`` (atomically);
    return the report's path. Uses nothing but ``results`` (the contents of results.json)."""
    out_dir = Path(out_dir)
    fig_dir = out_dir / FIGURES
    fig_dir.mkdir(parents=True, exist_ok=True)
    runs = results.get("runs", [])
    studies = results.get("studies") or sorted({r["study"] for r in runs})
    lines = _header(results)
    lines += _focal_curves_section(results, out_dir, fig_dir)
    if "classification" in studies:
        lines += _classification_section(
            [r for r in runs if r["study"] == "classification"], out_dir, fig_dir
        )
    if "detection" in studies:
        lines += _detection_section(
            [r for r in runs if r["study"] == "detection"], out_dir, fig_dir
        )
    if "trees" in studies:
        lines += _trees_section(
            results, [r for r in runs if r["study"] == "trees"], out_dir, fig_dir
        )
    path = out_dir / "report.md"
    atomic_write_bytes(path, ("\n".join(lines).rstrip() + "\n").encode("utf-8"))
    return path
