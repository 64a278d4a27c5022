"""Figures of the report, drawn from the run records only (matplotlib, Agg backend), each
written atomically as a PNG. Every function takes records (dicts as stored in results.json) and
a path, and returns the path."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .metrics import mean_std
from .records import atomic_write_bytes

__all__ = [
    "plot_ap_per_loss",
    "plot_classification_curves",
    "plot_cumulative_loss",
    "plot_detection_curves",
    "plot_focal_curves",
    "plot_grad_norm_density",
    "plot_per_class_recall",
    "plot_reliability",
    "plot_scenes",
    "plot_validation_curves",
    "pyplot",
    "save_figure",
]

DPI = 120


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Render ``fig`` to PNG in memory and write it atomically; close the figure."""
    plt = pyplot()
    buffer = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def _colors(n: int) -> list:
    plt = pyplot()
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def _group(records: Sequence[dict], key: str) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(record[key], []).append(record)
    return groups


def _mean_curve(records: Sequence[dict], x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds of a curve, on the steps every seed recorded (runs stop at different
    steps: the mean covers the shortest)."""
    curves = [r["curve"] for r in records if r.get("curve") and r["curve"].get(y_key)]
    if not curves:
        return np.array([]), np.array([])
    length = min(len(c[y_key]) for c in curves)
    x = np.asarray(curves[0][x_key][:length], dtype=float)
    y = np.mean([np.asarray(c[y_key][:length], dtype=float) for c in curves], axis=0)
    return x, y


# --------------------------------------------------------------------------------------------
# focal-loss curves (Fig. 1 of arXiv 1708.02002)
# --------------------------------------------------------------------------------------------


def plot_focal_curves(data: dict, path: Path) -> Path:
    """Loss and gradient magnitude against p_t for each gamma, from
    :func:`focalkit.demo.focal_curves.focal_curve_data`."""
    plt = pyplot()
    p_t = np.asarray(data["p_t"])
    fig, (ax_loss, ax_grad) = plt.subplots(1, 2, figsize=(10, 4))
    for gamma, loss, grad, color in zip(
        data["gammas"], data["loss"], data["grad"], _colors(len(data["gammas"])), strict=True
    ):
        label = f"γ = {gamma:g}" + (" (CE)" if gamma == 0 else "")
        ax_loss.plot(p_t, loss, color=color, label=label)
        ax_grad.plot(p_t, grad, color=color, label=label)
    ax_loss.set(
        xlabel="probability of ground truth class $p_t$",
        ylabel="loss",
        ylim=(0, 5),
        xlim=(0, 1),
        title="focal loss $-(1-p_t)^\\gamma \\log p_t$",
    )
    ax_grad.set(
        xlabel="probability of ground truth class $p_t$",
        ylabel="|d loss / d logit|",
        xlim=(0, 1),
        ylim=(0, 1.05 * max(max(g) for g in data["grad"])),
        title="gradient magnitude (autograd)",
    )
    ax_loss.axvspan(0.6, 1.0, color="0.92", zorder=0)
    ax_loss.text(0.8, 4.6, "well-classified\nexamples", ha="center", va="top", fontsize=8)
    for ax in (ax_loss, ax_grad):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Focal loss for a positive example, computed with fk.sigmoid_focal_loss")
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------------
# classification
# --------------------------------------------------------------------------------------------


def plot_per_class_recall(records: Sequence[dict], path: Path) -> Path:
    """Grouped bars: recall per class on the balanced test set, mean over seeds with the range
    as error bars, one bar per loss; the x labels carry the training-set class sizes."""
    plt = pyplot()
    groups = _group(records, "loss")
    names = list(groups)
    num_classes = len(records[0]["per_class_recall"])
    counts = records[0]["train_counts"]
    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / len(names)
    x = np.arange(num_classes)
    for i, (name, color) in enumerate(zip(names, _colors(len(names)), strict=True)):
        recalls = np.array([r["per_class_recall"] for r in groups[name]], dtype=float)
        mean = recalls.mean(axis=0)
        err = np.clip(np.stack([mean - recalls.min(axis=0), recalls.max(axis=0) - mean]), 0, None)
        ax.bar(
            x - 0.4 + width * (i + 0.5),
            mean,
            width,
            yerr=err,
            color=color,
            label=name,
            capsize=2,
            error_kw={"elinewidth": 0.8},
        )
    same_counts = all(r["train_counts"] == counts for r in records)
    labels = [f"{c}\nn={n}" for c, n in enumerate(counts)] if same_counts else [str(c) for c in x]
    ax.set_xticks(x, labels)
    ax.set(
        xlabel="digit class (n = training images; test: balanced)",
        ylabel="test recall",
        ylim=(0, 1.05),
        title="Per-class recall on the balanced test set (mean over seeds, bars: min-max)",
    )
    ax.grid(axis="y", alpha=0.3)
    ax.legend(ncol=len(names), fontsize=8, loc="upper right")
    return save_figure(fig, path)


def _pooled_reliability(
    records: Sequence[dict],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reliability bins pooled over seeds (count-weighted)."""
    edges = np.asarray(records[0]["reliability"]["bin_edges"], dtype=float)
    count = np.zeros(len(edges) - 1)
    conf_sum = np.zeros_like(count)
    acc_sum = np.zeros_like(count)
    for record in records:
        rel = record["reliability"]
        for k, n in enumerate(rel["count"]):
            if n:
                count[k] += n
                conf_sum[k] += n * rel["confidence"][k]
                acc_sum[k] += n * rel["accuracy"][k]
    with np.errstate(invalid="ignore", divide="ignore"):
        return edges, count, conf_sum / count, acc_sum / count


def plot_reliability(records: Sequence[dict], path: Path) -> Path:
    """One reliability diagram per loss: accuracy per confidence bin (pooled over seeds) with
    the bin's mean confidence marked, against the diagonal of perfect calibration; below it
    the number of test predictions per bin."""
    plt = pyplot()
    groups = _group(records, "loss")
    names = list(groups)
    fig, axes = plt.subplots(
        2,
        len(names),
        figsize=(3.1 * len(names), 4.6),
        sharex=True,
        sharey="row",
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 1]},
    )
    for col, name in enumerate(names):
        ax, ax_count = axes[0][col], axes[1][col]
        edges, count, conf, acc = _pooled_reliability(groups[name])
        centers = (edges[:-1] + edges[1:]) / 2
        width = edges[1] - edges[0]
        has = count > 0
        ax.bar(
            centers[has],
            acc[has],
            width,
            color="tab:blue",
            alpha=0.75,
            ec="k",
            lw=0.4,
            label="accuracy",
        )
        ax.hlines(
            conf[has],
            centers[has] - width / 2,
            centers[has] + width / 2,
            color="tab:red",
            lw=2,
            label="mean confidence",
        )
        ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
        mean, std, _ = mean_std([r["metrics"]["ece"] for r in groups[name]])
        ax.set(title=f"{name}: ECE {mean:.3f} ± {std:.3f}", xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax_count.bar(centers, count, width, color="0.5", ec="k", lw=0.4)
        ax_count.set(xlabel="confidence", yscale="log")
        ax_count.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy")
    axes[1][0].set_ylabel("predictions")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle("Reliability diagrams on the balanced test set (15 bins, pooled over seeds)")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_classification_curves(records: Sequence[dict], path: Path) -> Path:
    """Training curves per loss (mean over seeds): cross-entropy on the whole long-tailed
    training split (comparable across losses) and test balanced accuracy (recorded, not used
    to choose anything)."""
    plt = pyplot()
    groups = _group(records, "loss")
    fig, (ax_ce, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for (name, runs), color in zip(groups.items(), _colors(len(groups)), strict=True):
        x, y = _mean_curve(runs, "step", "train_ce")
        ax_ce.plot(x, y, color=color, label=name)
        x, y = _mean_curve(runs, "step", "val_balanced_accuracy")
        if len(x):
            ax_acc.plot(x, y, color=color, label=name)
    ax_ce.set(
        xlabel="step",
        ylabel="cross-entropy (training split)",
        yscale="log",
        title="training cross-entropy",
    )
    ax_acc.set(
        xlabel="step",
        ylabel="balanced accuracy (validation)",
        title="validation balanced accuracy (the plateau rule's yardstick)",
    )
    for ax in (ax_ce, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Classification training curves (mean over seeds)")
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------------
# detection
# --------------------------------------------------------------------------------------------


def plot_ap_per_loss(
    cls_sweep: dict[str, list[float]],
    box_sweep: dict[str, list[float]],
    path: Path,
    *,
    cls_title: str,
    box_title: str,
    metric: str = "AP",
) -> Path:
    """Bars of the mean ``metric`` per loss with the standard deviation over seeds as error bars
    and each seed as a dot; left the classification-loss sweep, right the box-loss sweep.
    Undefined values (-1) are left out."""
    plt = pyplot()
    fig, axes = plt.subplots(
        1,
        2,
        figsize=(11, 4),
        gridspec_kw={"width_ratios": [max(len(cls_sweep), 1), max(len(box_sweep), 1)]},
    )
    for ax, sweep, title in ((axes[0], cls_sweep, cls_title), (axes[1], box_sweep, box_title)):
        names = list(sweep)
        for i, (name, color) in enumerate(zip(names, _colors(len(names)), strict=True)):
            values = [v for v in sweep[name] if v is not None and v >= 0]
            mean, std, n = mean_std(values)
            if n == 0:
                ax.annotate(
                    "undefined",
                    (i, 0),
                    xytext=(0, 3),
                    textcoords="offset points",
                    ha="center",
                    fontsize=8,
                    rotation=90,
                )
                continue
            ax.bar(i, mean, 0.6, yerr=std, color=color, alpha=0.8, capsize=4)
            ax.plot([i] * n, values, "k.", ms=5)
            ax.annotate(
                f"{mean:.3f}",
                (i, mean + std),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_xticks(range(len(names)), names, rotation=15)
        ax.set(title=title, ylabel=f"{metric} (test)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.1)
    fig.suptitle(f"Detection {metric} per loss (bars: mean ± std over seeds, dots: seeds)")
    return save_figure(fig, path)


def plot_grad_norm_density(runs_by_loss: dict[str, list[dict]], path: Path) -> Path:
    """Density of the gradient norm g = |p - y| over the trained detector's held-out anchors,
    per classification loss, counts pooled over seeds (log-scale y, as Fig. 1 of GHM,
    arXiv 1811.05181)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for (name, runs), color in zip(runs_by_loss.items(), _colors(len(runs_by_loss)), strict=True):
        edges = np.asarray(runs[0]["grad_norm_hist"]["edges"], dtype=float)
        counts = np.sum(
            [np.asarray(r["grad_norm_hist"]["counts"], dtype=float) for r in runs], axis=0
        )
        density = counts / max(counts.sum(), 1)
        ax.stairs(np.where(density > 0, density, np.nan), edges, color=color, lw=1.6, label=name)
    ax.set(
        yscale="log",
        xlabel="gradient norm g = |p - y|",
        ylabel="fraction of anchors",
        xlim=(0, 1),
        title="Gradient-norm distribution of the trained detectors' held-out anchors",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(title="classification loss")
    return save_figure(fig, path)


def plot_cumulative_loss(cumulative: dict, path: Path, *, title: str) -> Path:
    """Fig. 4 of arXiv 1708.02002: normalised cumulative loss against the fraction of
    foreground (left) and background (right) samples, sorted from low to high loss, for
    several gamma."""
    plt = pyplot()
    fraction = np.asarray(cumulative["fraction"], dtype=float)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    gammas = cumulative["gammas"]
    for ax, key, label in (
        (axes[0], "pos", "positive (foreground)"),
        (axes[1], "neg", "negative (background)"),
    ):
        for gamma, curve, color in zip(gammas, cumulative[key], _colors(len(gammas)), strict=True):
            ax.plot(fraction, curve, color=color, label=f"γ = {gamma:g}")
        ax.set(
            xlabel=f"fraction of {label} samples",
            title=f"cumulative loss, {label}",
            xlim=(0, 1),
            ylim=(0, 1.02),
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    axes[0].set_ylabel("cumulative normalised loss")
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_detection_curves(
    cls_sweep: dict[str, list[dict]], box_sweep: dict[str, list[dict]], path: Path
) -> Path:
    """Training losses (mean over seeds): the classification loss of the cls-loss sweep and the
    box loss of the box-loss sweep (each loss on its own scale: log y)."""
    plt = pyplot()
    fig, (ax_cls, ax_box) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, sweep, key, title in (
        (ax_cls, cls_sweep, "loss_cls", "classification loss (cls-loss sweep)"),
        (ax_box, box_sweep, "loss_box", "box loss (box-loss sweep)"),
    ):
        for (name, runs), color in zip(sweep.items(), _colors(len(sweep)), strict=True):
            x, y = _mean_curve(runs, "step", key)
            if len(x):
                ax.plot(x, np.where(y > 0, y, np.nan), color=color, label=name)
        ax.set(xlabel="step", ylabel=key, yscale="log", title=title)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("Detection training curves (mean over seeds; each loss on its own scale)")
    return save_figure(fig, path)


def plot_validation_curves(
    panels: dict[str, dict[str, list[dict]]],
    path: Path,
    *,
    ylabel: str,
    title: str,
    budgets: Sequence[int] = (),
) -> Path:
    """The plateau rule's yardstick against training steps, one panel per sweep, one line per
    loss and seed (the seeds of a loss share its colour); a dot marks the evaluation whose
    model was kept, a cross where the run stopped; dotted verticals at ``budgets``."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.8 * len(panels), 4), squeeze=False)
    for ax, (panel, groups) in zip(axes[0], panels.items(), strict=True):
        for (name, runs), color in zip(groups.items(), _colors(len(groups)), strict=True):
            for i, run in enumerate(runs):
                val = run.get("validation") or {}
                steps, values = val.get("step", []), val.get("value", [])
                if not steps:
                    continue
                ax.plot(steps, values, color=color, lw=1.3, label=name if i == 0 else None)
                if val.get("best_step") is not None:
                    ax.plot([val["best_step"]], [val["best_value"]], "o", color=color, ms=5)
                ax.plot([steps[-1]], [values[-1]], "x", color=color, ms=6)
        for budget in budgets:
            ax.axvline(budget, color="0.6", ls=":", lw=1)
        ax.set(xlabel="training step", ylabel=ylabel, title=panel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(title + "\n(dot: the kept evaluation; x: where the plateau rule stopped)")
    return save_figure(fig, path)


def plot_scenes(
    images: Sequence[np.ndarray],
    examples: Sequence[dict],
    path: Path,
    *,
    title: str,
    score_threshold: float = 0.3,
    class_names: Sequence[str] = (),
) -> Path:
    """Test scenes with the true boxes (green, dashed, class name) and the predicted boxes
    scoring at least ``score_threshold`` (red, with class:score)."""
    plt = pyplot()
    from matplotlib.patches import Rectangle

    n = len(images)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 4.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")

    def name(label) -> str:
        label = int(label)
        return class_names[label] if 0 <= label < len(class_names) else str(label)

    for ax, image, example in zip(axes.flat, images, examples, strict=False):
        ax.imshow(image, interpolation="nearest")
        for x1, y1, x2, y2, *label in example.get("true", []):
            ax.add_patch(
                Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="lime", lw=1.5, ls="--")
            )
            if label:
                ax.text(
                    x1,
                    y2,
                    name(label[0]),
                    color="black",
                    fontsize=6,
                    va="top",
                    bbox={"facecolor": "lime", "alpha": 0.7, "pad": 0.5, "lw": 0},
                )
        shown = 0
        for x1, y1, x2, y2, score, label in sorted(example.get("pred", []), key=lambda p: -p[4]):
            if score < score_threshold:
                continue
            shown += 1
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="red", lw=1.2))
            ax.text(
                x1,
                y1,
                f"{name(label)} {score:.2f}",
                color="white",
                fontsize=6,
                va="bottom",
                bbox={"facecolor": "red", "alpha": 0.6, "pad": 0.5, "lw": 0},
            )
        ax.set_title(
            f"{example.get('split', 'test')} #{example.get('index')}: "
            f"{len(example.get('true', []))} true, {shown} pred",
            fontsize=8,
        )
    fig.suptitle(
        title
        + f"\n(green dashed: ground truth; red: predictions with score ≥ {score_threshold:g})",
        fontsize=9,
    )
    return save_figure(fig, path)
