"""Study 1: long-tailed classification of real handwritten digits.

Data: scikit-learn's bundled 8x8 digit scans (``sklearn.datasets.load_digits``, 1797 images,
10 classes, no download). A balanced test split is drawn first (``test_per_class`` per class,
fixed ``data_seed``), then a balanced validation split from the training part
(``val_per_class`` per class, the same for every run: the plateau rule's yardstick, as
long-tailed benchmarks validate on balanced splits); the rest is made long-tailed with
exponential class sizes

    n_c = round(n_max * r ** (-c / (C - 1))),   c = 0 .. C-1

where ``n_max`` is the smallest class's remaining count (every class can supply it) and ``r``
the imbalance ratio, by default the largest the data allows (``n_max / min_per_class``).
The test split is the same for every run; ``seed`` picks which of the remaining images fill the
long-tailed training sizes, the network's initialisation and the batch order, and every loss
gets the same seeds (so losses are compared on identical data and initialisations).

Every loss trains the same MLP with the same optimiser, learning rate and batch size until its
validation balanced accuracy stops improving (:class:`focalkit.demo.plateau.PlateauRule`:
evaluated every ``eval_every`` steps, stop after ``patience`` evaluations without a gain of
``min_delta``, between ``min_steps`` and ``max_steps``); the weights of the best validation
evaluation are tested. Nothing is tuned per loss and the test set chooses nothing.

Losses: ``ce`` (``F.cross_entropy``), ``cb_ce`` (cross-entropy with
``weight=fk.class_balanced_weights(train_counts, beta=cb_beta)``; ``cb_beta = 0.999``: with at
most a few hundred samples per class 0.999 and 0.9999 both give nearly inverse-frequency
weights, 0.999 being the milder of the two), ``focal`` (``fk.softmax_focal_loss(gamma=2)``),
``flsd53`` (``gamma="flsd53"``), ``auto`` (``fk.SoftmaxFocalLoss(gamma="auto")``), ``poly1``
(``fk.poly1_cross_entropy(epsilon=poly1_epsilon)``, 1 by default) and ``asl``
(``fk.asymmetric_loss`` with its defaults, gamma_neg 4, gamma_pos 1, clip 0.05, on the class
indices as one-vs-all targets, ``normalizer`` the batch size: timm's "batchmean"). ``asl``
trains ten sigmoid outputs (ASL is a multi-label loss; this is where its asymmetric focusing
applies to a single-label problem); its metrics, like every other row's, take the softmax of
the logits, so its accuracy-type metrics compare directly while its ECE and NLL measure a
softmax it was not trained to calibrate.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import focalkit as fk

from .metrics import expected_calibration_error, reliability_bins
from .plateau import Plateau, PlateauRule

__all__ = [
    "CLASSIFICATION_LOSSES",
    "ClassificationSetting",
    "classification_setting",
    "long_tailed_sizes",
    "long_tailed_split",
    "run_classification",
]

CLASSIFICATION_LOSSES = ("ce", "cb_ce", "focal", "flsd53", "auto", "poly1", "asl")
NUM_CLASSES = 10
ECE_BINS = 15

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ClassificationSetting:
    """Everything a classification run depends on besides the loss, the seed and the device."""

    preset: str
    test_per_class: int = 30
    val_per_class: int = 10
    min_per_class: int = 2
    imbalance_ratio: float | None = None  # None: the largest the data allows
    data_seed: int = 0
    hidden: int = 128
    max_steps: int = 8000
    min_steps: int = 500
    patience: int = 5
    min_delta: float = 0.005
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    eval_every: int = 100
    cb_beta: float = 0.999
    focal_gamma: float = 2.0
    poly1_epsilon: float = 1.0

    def plateau_rule(self) -> PlateauRule:
        return PlateauRule.of(self)


_PRESETS: dict[str, dict] = {
    "quick": {"max_steps": 300, "min_steps": 100, "eval_every": 25, "patience": 2},
    "default": {},
    "full": {"max_steps": 20000, "min_steps": 1000, "patience": 10, "hidden": 256},
}


def classification_setting(preset: str = "default") -> ClassificationSetting:
    """The setting of a preset: ``"quick"`` (tests, seconds), ``"default"`` or ``"full"``."""
    if preset not in _PRESETS:
        raise ValueError(f"preset: expected one of {sorted(_PRESETS)}, got {preset!r}")
    return ClassificationSetting(preset=preset, **_PRESETS[preset])


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def long_tailed_sizes(n_max: int, ratio: float, num_classes: int) -> list[int]:
    """Exponential profile ``round(n_max * ratio ** (-c / (C - 1)))`` for c = 0 .. C-1."""
    if ratio < 1:
        raise ValueError(f"imbalance_ratio: expected a number >= 1, got {ratio!r}")
    return [max(1, round(n_max * ratio ** (-c / (num_classes - 1)))) for c in range(num_classes)]


@dataclass(frozen=True)
class Split:
    x_train: np.ndarray  # (N, 64) float32 in [0, 1]
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    train_counts: list[int]
    test_counts: list[int]
    imbalance_ratio: float  # the realised n_0 / n_{C-1}
    train_index: np.ndarray  # rows of load_digits() in each split
    test_index: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    val_index: np.ndarray


def long_tailed_split(setting: ClassificationSetting, seed: int = 0) -> Split:
    """Balanced test and validation splits (fixed by ``setting.data_seed``), then a
    long-tailed training split drawn from the rest with ``seed`` (see the module docstring)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(setting.data_seed)
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in range(NUM_CLASSES)]
    held = setting.test_per_class + setting.val_per_class
    if min(len(idx) for idx in per_class) <= held:
        raise ValueError(
            f"test_per_class + val_per_class: expected fewer than "
            f"{min(len(i) for i in per_class)} (the smallest class), got {held}"
        )
    n_max = min(len(idx) for idx in per_class) - held
    largest = n_max / setting.min_per_class
    ratio = largest if setting.imbalance_ratio is None else float(setting.imbalance_ratio)
    if ratio > largest * (1 + 1e-9):
        raise ValueError(
            f"imbalance_ratio: expected at most {largest:g} (= {n_max} / min_per_class "
            f"{setting.min_per_class}), got {ratio:g}"
        )
    sizes = long_tailed_sizes(n_max, ratio, NUM_CLASSES)
    test_idx = np.concatenate([idx[: setting.test_per_class] for idx in per_class])
    val_idx = np.concatenate([idx[setting.test_per_class : held] for idx in per_class])
    pick = np.random.default_rng([setting.data_seed, seed])
    train_idx = np.concatenate(
        [pick.permutation(idx[held:])[:n] for idx, n in zip(per_class, sizes, strict=True)]
    )
    return Split(
        x_train=x[train_idx],
        y_train=y[train_idx],
        x_test=x[test_idx],
        y_test=y[test_idx],
        train_counts=[int(n) for n in np.bincount(y[train_idx], minlength=NUM_CLASSES)],
        test_counts=[int(n) for n in np.bincount(y[test_idx], minlength=NUM_CLASSES)],
        imbalance_ratio=sizes[0] / sizes[-1],
        train_index=train_idx,
        test_index=test_idx,
        x_val=x[val_idx],
        y_val=y[val_idx],
        val_index=val_idx,
    )


# --------------------------------------------------------------------------------------------
# model and losses
# --------------------------------------------------------------------------------------------


def make_model(setting: ClassificationSetting) -> nn.Module:
    """MLP 64 -> hidden -> 10 (ReLU)."""
    return nn.Sequential(
        nn.Linear(64, setting.hidden), nn.ReLU(), nn.Linear(setting.hidden, NUM_CLASSES)
    )


def make_criterion(
    loss: str, train_counts: list[int], setting: ClassificationSetting, device: torch.device
) -> Callable[[Tensor, Tensor], Tensor]:
    """The training objective of ``loss`` (one of :data:`CLASSIFICATION_LOSSES`)."""
    if loss == "ce":
        return F.cross_entropy
    if loss == "cb_ce":
        weight = fk.class_balanced_weights(train_counts, beta=setting.cb_beta).to(device)
        return lambda logits, targets: F.cross_entropy(logits, targets, weight=weight)
    if loss == "focal":
        return lambda logits, targets: fk.softmax_focal_loss(
            logits, targets, gamma=setting.focal_gamma
        )
    if loss == "flsd53":
        return lambda logits, targets: fk.softmax_focal_loss(logits, targets, gamma="flsd53")
    if loss == "auto":
        return fk.SoftmaxFocalLoss(gamma="auto").to(device)
    if loss == "poly1":
        return lambda logits, targets: fk.poly1_cross_entropy(
            logits, targets, epsilon=setting.poly1_epsilon
        )
    if loss == "asl":
        return lambda logits, targets: fk.asymmetric_loss(
            logits, targets, normalizer=logits.shape[0]
        )
    raise ValueError(f"loss: expected one of {list(CLASSIFICATION_LOSSES)}, got {loss!r}")


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------


def _evaluate(model: nn.Module, x: Tensor, y: Tensor) -> dict:
    from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score

    model.eval()
    with torch.no_grad():
        logits = model(x).float()
        nll = float(F.cross_entropy(logits, y))
        probs = torch.softmax(logits, dim=1)
    model.train()
    conf, pred = probs.max(dim=1)
    y_np, pred_np, conf_np = y.cpu().numpy(), pred.cpu().numpy(), conf.cpu().double().numpy()
    labels = list(range(NUM_CLASSES))
    recall = recall_score(y_np, pred_np, labels=labels, average=None, zero_division=0)
    correct = pred_np == y_np
    return {
        "metrics": {
            "balanced_accuracy": float(balanced_accuracy_score(y_np, pred_np)),
            "macro_f1": float(
                f1_score(y_np, pred_np, labels=labels, average="macro", zero_division=0)
            ),
            "worst_class_recall": float(recall.min()),
            "ece": expected_calibration_error(conf_np, correct, ECE_BINS),
            "nll": nll,
            "accuracy": float(correct.mean()),
        },
        "per_class_recall": [float(r) for r in recall],
        "reliability": reliability_bins(conf_np, correct, ECE_BINS),
    }


@contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run the tiny MLP on one intra-op thread (restored afterwards): its matrices are too
    small to gain from threads, and on a busy 2-core machine two threads were measured ~10x
    slower than one. The thread count is not part of the results."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_classification(
    loss: str,
    seed: int,
    setting: ClassificationSetting,
    *,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> dict:
    """Train the MLP on the long-tailed digits with ``loss`` and evaluate it on the balanced
    test split. ``progress(done, total)`` is called after each training step.

    Returns the run's record (JSON-ready): ``study``, ``loss``, ``seed``, ``setting``,
    ``metrics`` (balanced_accuracy, macro_f1, worst_class_recall, ece (15 bins), nll,
    accuracy), ``per_class_recall``, ``reliability``, ``curve`` (step, the objective's mean
    since the last point, cross-entropy on the whole training split, test balanced accuracy
    (recorded only, never used to choose anything), and gamma for ``auto``),
    ``train_counts``, ``test_counts``, ``imbalance_ratio``, ``time_s``.
    """
    if loss not in CLASSIFICATION_LOSSES:
        raise ValueError(f"loss: expected one of {list(CLASSIFICATION_LOSSES)}, got {loss!r}")
    start = time.perf_counter()
    device = torch.device(device)
    with _one_cpu_thread(device):
        record = _train_and_evaluate(loss, seed, setting, device, progress)
    record["time_s"] = time.perf_counter() - start
    return record


def _train_and_evaluate(
    loss: str,
    seed: int,
    setting: ClassificationSetting,
    device: torch.device,
    progress: Progress | None,
) -> dict:
    split = long_tailed_split(setting, seed)
    x_train = torch.from_numpy(split.x_train).to(device)
    y_train = torch.from_numpy(split.y_train).to(device)
    x_test = torch.from_numpy(split.x_test).to(device)
    y_test = torch.from_numpy(split.y_test).to(device)

    torch.manual_seed(seed)
    model = make_model(setting).to(device)
    criterion = make_criterion(loss, split.train_counts, setting, device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=setting.lr, weight_decay=setting.weight_decay
    )
    batches = torch.Generator().manual_seed(seed)

    x_val = torch.from_numpy(split.x_val).to(device)
    y_val = torch.from_numpy(split.y_val).to(device)
    rule = setting.plateau_rule()
    plateau = Plateau(rule)
    best_state = copy.deepcopy(model.state_dict())
    best_gamma = None
    curve: dict[str, list] = {
        "step": [],
        "loss": [],
        "train_ce": [],
        "val_balanced_accuracy": [],
        "test_balanced_accuracy": [],
    }
    if loss == "auto":
        curve["gamma"] = []
    running, seen = 0.0, 0
    n = x_train.shape[0]
    model.train()
    step = 0
    while step < rule.max_steps:
        step += 1
        index = torch.randint(n, (setting.batch_size,), generator=batches).to(device)
        logits = model(x_train[index])
        objective = criterion(logits, y_train[index])
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        running += float(objective.detach())
        seen += 1
        stop = False
        if step % rule.eval_every == 0 or step == rule.max_steps:
            with torch.no_grad():
                model.eval()
                train_ce = float(F.cross_entropy(model(x_train), y_train))
                model.train()
            val_bacc = _evaluate(model, x_val, y_val)["metrics"]["balanced_accuracy"]
            curve["step"].append(step)
            curve["loss"].append(running / seen)
            curve["train_ce"].append(train_ce)
            curve["val_balanced_accuracy"].append(val_bacc)
            curve["test_balanced_accuracy"].append(  # recorded for the figure, chooses nothing
                _evaluate(model, x_test, y_test)["metrics"]["balanced_accuracy"]
            )
            if isinstance(criterion, fk.SoftmaxFocalLoss) and criterion.auto:  # its running p_hat
                curve["gamma"].append(-math.log(max(float(criterion.p_hat), 1e-6)))
            running, seen = 0.0, 0
            stop = plateau.update(step, val_bacc)
            if plateau.is_best:
                best_state = copy.deepcopy(model.state_dict())
                best_gamma = curve["gamma"][-1] if loss == "auto" else None
        if progress is not None:
            progress(step, step if stop else rule.max_steps)
        if stop:
            break

    model.load_state_dict(best_state)
    evaluation = _evaluate(model, x_test, y_test)
    record = {
        "study": "classification",
        "loss": loss,
        "seed": seed,
        "setting": asdict(setting),
        **evaluation,
        "curve": curve,
        "validation": plateau.summary(),
        "steps": step,
        "train_counts": split.train_counts,
        "val_counts": [int(v) for v in np.bincount(split.y_val, minlength=NUM_CLASSES)],
        "test_counts": split.test_counts,
        "imbalance_ratio": split.imbalance_ratio,
    }
    if loss == "auto":
        record["final_gamma"] = best_gamma if best_gamma is not None else curve["gamma"][-1]
    return record
