"""Small metrics the demo computes itself: expected calibration error with its reliability bins,
and the mean / spread summaries the report and the summary table print."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["expected_calibration_error", "mean_std", "reliability_bins"]


def reliability_bins(
    confidences: Sequence[float] | np.ndarray,
    correct: Sequence[bool] | np.ndarray,
    num_bins: int = 15,
) -> dict[str, list]:
    """Equal-width confidence bins over [0, 1] (Guo et al. 2017): bin ``k`` holds the
    predictions with ``k/M < confidence <= (k+1)/M`` (confidence 0 goes in the first bin).

    Returns ``{"bin_edges": M+1 floats, "confidence": mean confidence per bin,
    "accuracy": fraction correct per bin, "count": ints}``; empty bins have ``None`` for
    confidence and accuracy (JSON has no NaN).
    """
    conf = np.asarray(confidences, dtype=np.float64).reshape(-1)
    hit = np.asarray(correct, dtype=np.float64).reshape(-1)
    if conf.shape != hit.shape:
        raise ValueError(
            f"correct: expected {conf.shape[0]} entries (one per confidence), got {hit.shape[0]}"
        )
    if num_bins < 1:
        raise ValueError(f"num_bins: expected an int >= 1, got {num_bins!r}")
    if conf.size and (conf.min() < 0 or conf.max() > 1):
        raise ValueError("confidences: expected values in [0, 1]")
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    # right-closed bins: searchsorted(side="left") puts k/M into bin k-1; 0 into bin 0
    index = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, num_bins - 1)
    count = np.bincount(index, minlength=num_bins)
    conf_sum = np.bincount(index, weights=conf, minlength=num_bins)
    hit_sum = np.bincount(index, weights=hit, minlength=num_bins)
    mean_conf = [float(s / n) if n else None for s, n in zip(conf_sum, count, strict=True)]
    accuracy = [float(s / n) if n else None for s, n in zip(hit_sum, count, strict=True)]
    return {
        "bin_edges": [float(e) for e in edges],
        "confidence": mean_conf,
        "accuracy": accuracy,
        "count": [int(n) for n in count],
    }


def expected_calibration_error(
    confidences: Sequence[float] | np.ndarray,
    correct: Sequence[bool] | np.ndarray,
    num_bins: int = 15,
) -> float:
    """ECE = sum_k |B_k|/n * |accuracy(B_k) - confidence(B_k)| over ``num_bins`` equal-width
    bins (see :func:`reliability_bins`). ``confidences`` are the top-class probabilities and
    ``correct`` whether the top class was the label. Returns 0 for an empty input."""
    bins = reliability_bins(confidences, correct, num_bins)
    total = sum(bins["count"])
    if total == 0:
        return 0.0
    ece = 0.0
    for conf, acc, n in zip(bins["confidence"], bins["accuracy"], bins["count"], strict=True):
        if n:
            ece += n / total * abs(acc - conf)
    return float(ece)


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count of the defined values
    (``None``, NaN and the detection convention ``-1`` = undefined are left out)."""
    kept = [float(v) for v in values if v is not None and not math.isnan(v) and v != -1]
    if not kept:
        return math.nan, math.nan, 0
    mean = sum(kept) / len(kept)
    if len(kept) == 1:
        return mean, 0.0, 1
    var = sum((v - mean) ** 2 for v in kept) / (len(kept) - 1)
    return mean, math.sqrt(var), len(kept)
