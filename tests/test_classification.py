"""Study 1 (long-tailed digits): the split, the metrics written by hand, and the run record."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("sklearn")

import focalkit as fk
from focalkit.demo.classification import (
    CLASSIFICATION_LOSSES,
    classification_setting,
    long_tailed_sizes,
    long_tailed_split,
    make_criterion,
    run_classification,
)
from focalkit.demo.metrics import expected_calibration_error, mean_std, reliability_bins

# --------------------------------------------------------------------------------------------
# expected calibration error
# --------------------------------------------------------------------------------------------


def test_ece_hand_example():
    """ECE = sum_k |B_k|/n |acc_k - conf_k| over 15 equal-width bins, worked by hand."""
    # confidences .9 .9 (one right, one wrong) -> bin (0.8667, 0.9333]: |0.5 - 0.9| * 2/4 = 0.2
    # .7 right -> bin (0.6667, 0.7333]: |1 - 0.7| / 4 = 0.075
    # .75 wrong -> bin (0.7333, 0.8]: |0 - 0.75| / 4 = 0.1875
    conf = [0.9, 0.9, 0.7, 0.75]
    correct = [True, False, True, False]
    assert expected_calibration_error(conf, correct, 15) == pytest.approx(0.4625, abs=1e-12)
    bins = reliability_bins(conf, correct, 15)
    assert len(bins["bin_edges"]) == 16 and len(bins["count"]) == 15
    assert sum(bins["count"]) == 4
    assert bins["count"][13] == 2 and bins["accuracy"][13] == 0.5
    assert bins["confidence"][13] == pytest.approx(0.9)
    assert bins["count"][10] == 1 and bins["count"][11] == 1
    assert bins["accuracy"][0] is None and bins["confidence"][0] is None  # empty bin


def test_ece_perfect_and_worst():
    """A bin whose accuracy equals its confidence contributes 0; all-wrong at confidence 1
    gives ECE 1."""
    conf = [0.8] * 5
    assert expected_calibration_error(conf, [1, 1, 1, 1, 0]) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error([1.0, 1.0], [0, 0]) == pytest.approx(1.0)
    assert expected_calibration_error([], []) == 0.0


def test_ece_bins_are_right_closed():
    """Confidence k/M goes in bin k-1 (bins (k/M, (k+1)/M]); 1.0 in the last bin, 0 in the
    first."""
    bins = reliability_bins([1 / 3, 1.0, 0.0], [1, 1, 0], num_bins=3)
    assert bins["count"] == [2, 0, 1]


def test_ece_rejects_bad_input():
    with pytest.raises(ValueError, match="correct"):
        expected_calibration_error([0.5, 0.6], [1])
    with pytest.raises(ValueError, match="confidences"):
        expected_calibration_error([1.5], [1])


def test_mean_std_skips_undefined():
    """-1 (the COCO 'undefined'), None and NaN are left out; one value has spread 0."""
    mean, std, n = mean_std([0.2, -1, None, float("nan"), 0.4])
    assert (mean, n) == (pytest.approx(0.3), 2)
    assert std == pytest.approx(math.sqrt(0.02))
    assert mean_std([0.5]) == (0.5, 0.0, 1)
    assert mean_std([-1])[2] == 0


# --------------------------------------------------------------------------------------------
# the long-tailed split
# --------------------------------------------------------------------------------------------


def test_long_tailed_sizes_exponential():
    sizes = long_tailed_sizes(100, 10.0, 5)
    assert sizes == [round(100 * 10 ** (-c / 4)) for c in range(5)]
    assert sizes[0] == 100 and sizes[-1] == 10


@pytest.mark.parametrize("ratio", [10.0, 50.0])
def test_split_has_requested_ratio_and_balanced_test(ratio):
    """The training split follows n_max * r^(-c/(C-1)) with the requested ratio; the test
    split is balanced and disjoint from it."""
    setting = dataclasses.replace(classification_setting("quick"), imbalance_ratio=ratio)
    split = long_tailed_split(setting, seed=0)
    counts = split.train_counts
    assert counts == sorted(counts, reverse=True)
    # n_max r^(-c/(C-1)) rounded: the rarest class is round(n_max / ratio)
    assert counts == long_tailed_sizes(counts[0], ratio, 10)
    assert counts[-1] == round(counts[0] / ratio)
    assert split.imbalance_ratio == pytest.approx(counts[0] / counts[-1])
    assert split.test_counts == [setting.test_per_class] * 10
    assert np.bincount(split.y_test, minlength=10).tolist() == split.test_counts
    assert np.bincount(split.y_train, minlength=10).tolist() == counts
    assert not set(split.train_index) & set(split.test_index)


def test_default_ratio_is_the_largest_the_data_allows():
    """n_max is the smallest class's count left after the test and validation splits
    (174 - 30 - 10 for digit 8) and the rarest class keeps min_per_class images; the
    validation split is balanced and disjoint from the other two."""
    setting = classification_setting("default")
    split = long_tailed_split(setting)
    assert split.train_counts[0] == 174 - setting.test_per_class - setting.val_per_class
    assert split.train_counts[-1] == setting.min_per_class
    assert split.imbalance_ratio == pytest.approx(134 / 2)
    assert np.bincount(split.y_val, minlength=10).tolist() == [setting.val_per_class] * 10
    assert not set(split.val_index) & (set(split.train_index) | set(split.test_index))
    too_much = dataclasses.replace(setting, imbalance_ratio=200.0)
    with pytest.raises(ValueError, match="imbalance_ratio"):
        long_tailed_split(too_much)


def test_test_split_fixed_train_subset_follows_seed():
    setting = classification_setting("quick")
    a, b = long_tailed_split(setting, seed=0), long_tailed_split(setting, seed=1)
    assert np.array_equal(a.test_index, b.test_index)
    assert a.train_counts == b.train_counts
    assert not np.array_equal(np.sort(a.train_index), np.sort(b.train_index))
    again = long_tailed_split(setting, seed=0)
    assert np.array_equal(a.train_index, again.train_index)


# --------------------------------------------------------------------------------------------
# losses and the run
# --------------------------------------------------------------------------------------------


def test_criteria_are_the_library_calls():
    """cb_ce is cross-entropy with fk.class_balanced_weights; focal is softmax_focal_loss."""
    setting = classification_setting("quick")
    counts = [144, 90, 56, 35, 22, 13, 8, 5, 3, 2]
    logits = torch.randn(16, 10, generator=torch.Generator().manual_seed(0))
    targets = torch.arange(16) % 10
    cpu = torch.device("cpu")
    weight = fk.class_balanced_weights(counts, beta=setting.cb_beta)
    assert torch.allclose(
        make_criterion("cb_ce", counts, setting, cpu)(logits, targets),
        F.cross_entropy(logits, targets, weight=weight),
    )
    assert torch.allclose(
        make_criterion("focal", counts, setting, cpu)(logits, targets),
        fk.softmax_focal_loss(logits, targets, gamma=2.0),
    )
    assert torch.allclose(
        make_criterion("ce", counts, setting, cpu)(logits, targets),
        F.cross_entropy(logits, targets),
    )
    with pytest.raises(ValueError, match="loss"):
        make_criterion("nope", counts, setting, cpu)


@pytest.fixture(scope="module")
def tiny():
    return dataclasses.replace(
        classification_setting("quick"), max_steps=40, min_steps=40, eval_every=20
    )


@pytest.mark.parametrize("loss", CLASSIFICATION_LOSSES)
def test_run_record(loss, tiny):
    calls = []
    record = run_classification(loss, 0, tiny, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (tiny.max_steps, tiny.max_steps) and len(calls) == tiny.max_steps
    assert record["steps"] == tiny.max_steps
    assert record["validation"]["step"] == [20, 40]
    assert record["val_counts"] == [tiny.val_per_class] * 10
    assert record["study"] == "classification" and record["loss"] == loss
    assert record["seed"] == 0 and record["setting"] == dataclasses.asdict(tiny)
    m = record["metrics"]
    for key in ("balanced_accuracy", "macro_f1", "worst_class_recall", "ece", "accuracy"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["nll"] > 0
    assert len(record["per_class_recall"]) == 10
    assert min(record["per_class_recall"]) == pytest.approx(m["worst_class_recall"])
    assert np.mean(record["per_class_recall"]) == pytest.approx(m["balanced_accuracy"])
    rel = record["reliability"]
    assert sum(rel["count"]) == sum(record["test_counts"]) == 300
    assert record["curve"]["step"] == [20, 40]
    assert len(record["curve"]["loss"]) == 2
    assert record["train_counts"][-1] == tiny.min_per_class
    if loss == "auto":
        assert record["final_gamma"] > 0
    json.dumps(record, allow_nan=False)  # JSON-ready


def test_run_is_deterministic(tiny):
    a = run_classification("focal", 3, tiny)
    b = run_classification("focal", 3, tiny)
    c = run_classification("focal", 4, tiny)
    assert a["metrics"] == b["metrics"] and a["curve"] == b["curve"]
    assert a["curve"] != c["curve"]
