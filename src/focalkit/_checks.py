"""Argument checks shared by every loss.

Each check raises ``ValueError`` (or ``TypeError`` for a wrong kind of object) whose message
names the argument, what was expected and what was given. None of them reads tensor *values*
unless the caller asked for it (``validate=True``), so the hot path never syncs with the device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

REDUCTIONS = ("none", "mean", "sum")


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return repr(value)


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")


def check_normalizer(normalizer: float | Tensor | None, reduction: str) -> None:
    """``normalizer`` divides the summed loss; it only makes sense with ``reduction="mean"``."""
    if normalizer is None:
        return
    if reduction != "mean":
        raise ValueError(
            f"normalizer: only valid with reduction='mean' (the summed loss is divided by it), "
            f"got normalizer={_describe(normalizer)} with reduction={reduction!r}"
        )
    if isinstance(normalizer, Tensor):
        if normalizer.numel() != 1:
            raise ValueError(
                f"normalizer: expected a number or a one-element tensor, got {_describe(normalizer)}"
            )
    elif not isinstance(normalizer, (int, float)) or isinstance(normalizer, bool):
        raise TypeError(f"normalizer: expected a number or a tensor, got {_describe(normalizer)}")
    elif not math.isfinite(normalizer):
        raise ValueError(f"normalizer: expected a finite number, got {normalizer!r}")


def check_floating(name: str, tensor: object) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {tensor.dtype}")


def check_tensor(name: str, tensor: object) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")


def _check_real(name: str, value: object) -> float:
    """``value`` itself if it is a real number (an int or a float, not a bool), else TypeError.
    The first step of every numeric check below. It converts nothing: the range checks compare
    the value as given, so an int beyond float's range fails them with their ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {_describe(value)}")
    return value


def _number(name: str, value: object) -> float:
    """``value`` as a float (:func:`_check_real`, then ``float``)."""
    return float(_check_real(name, value))


def check_flag(name: str, value: object) -> None:
    """``value`` is True or False (a bool, not merely truthy), else TypeError."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {value!r}")


def check_number(name: str, value: float) -> float:
    """A finite real number (not a bool), returned as a float."""
    number = _number(name, value)
    if not math.isfinite(number):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return number


def check_nonnegative(name: str, value: float) -> None:
    _check_real(name, value)
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")


def check_positive(name: str, value: float) -> None:
    _check_real(name, value)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")


def check_int_at_least(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {_describe(value)}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")


def check_unit_interval(name: str, value: float, *, closed_right: bool = True) -> None:
    """``value`` in [0, 1] (or [0, 1) with ``closed_right=False``)."""
    _check_real(name, value)
    ok = 0 <= value <= 1 if closed_right else 0 <= value < 1
    if not ok:
        interval = "[0, 1]" if closed_right else "[0, 1)"
        raise ValueError(f"{name}: expected a number in {interval}, got {value!r}")


def check_alpha(
    alpha: float | Sequence[float] | Tensor | None, num_classes: int, *, unit: bool = True
) -> None:
    """``alpha``: None, a number in [0, 1] (``unit``; else >= 0, a global scale), or one value
    per class (length ``num_classes``; its values are read only by ``check_values_in_unit_interval``
    where the caller allows reading)."""
    if alpha is None:
        return
    if isinstance(alpha, Tensor):
        if alpha.dim() == 0:
            return
        if alpha.dim() != 1 or alpha.shape[0] != num_classes:
            raise ValueError(
                f"alpha: expected None, a float or a tensor of shape ({num_classes},) "
                f"(one value per class), got {_describe(alpha)}"
            )
        return
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha: expected None, a float or a tensor, got {_describe(alpha)}")
    if not math.isfinite(alpha):
        raise ValueError(f"alpha: expected a finite number, got {alpha!r}")
    if unit and not 0 <= alpha <= 1:
        raise ValueError(
            f"alpha: expected a number in [0, 1] (the weight of the positives; alpha=None "
            f"turns the weighting off), got {alpha!r}"
        )
    if not unit and alpha < 0:
        raise ValueError(f"alpha: expected a number >= 0 (a global scale), got {alpha!r}")


def check_same_shape(name: str, tensor: Tensor, expected: torch.Size, what: str) -> None:
    if tensor.shape != expected:
        raise ValueError(
            f"{name}: expected shape {tuple(expected)} ({what}), got {tuple(tensor.shape)}"
        )


def check_broadcastable_to(name: str, tensor: Tensor, shape: torch.Size) -> None:
    """``tensor`` must broadcast to ``shape`` without changing ``shape`` (no silent broadcast)."""
    try:
        out = torch.broadcast_shapes(tensor.shape, shape)
    except RuntimeError:
        out = None
    if out != shape:
        raise ValueError(
            f"{name}: expected a shape that broadcasts to {tuple(shape)}, got {tuple(tensor.shape)}"
        )


def check_class_vector(name: str, value: Tensor, num_classes: int) -> None:
    """A floating tensor of shape ``()`` or ``(num_classes,)``."""
    check_floating(name, value)
    if value.dim() > 1 or (value.dim() == 1 and value.shape[0] != num_classes):
        raise ValueError(
            f"{name}: expected a number or a tensor of shape () or ({num_classes},) (one value "
            f"per class), got {_describe(value)}"
        )


def check_nonnegative_values(name: str, tensor: Tensor) -> None:
    """Every value >= 0 (and not NaN). Reads values: only where the caller allows it."""
    if tensor.numel() and bool(((tensor < 0) | tensor.isnan()).any()):
        raise ValueError(f"{name}: expected values >= 0, got a minimum of {float(tensor.min())}")


def check_values_in_unit_interval(name: str, tensor: Tensor) -> None:
    """Reads values (a device sync): only called when the user passed ``validate=True``."""
    if tensor.numel() and bool(((tensor < 0) | (tensor > 1) | tensor.isnan()).any()):
        lo, hi = float(tensor.min()), float(tensor.max())
        raise ValueError(f"{name}: expected values in [0, 1], got values in [{lo}, {hi}]")


# --------------------------------------------------------------------------------------------
# loss-specific hyperparameters
# --------------------------------------------------------------------------------------------

FLSD = "flsd53"
BOX_FORMATS = ("xyxy", "xywh", "cxcywh")
IOU_MODES = ("linear", "log")


def check_gamma(gamma: float | str | Tensor) -> float | str | Tensor:
    """The focusing parameter of the focal losses: a number >= 0 (returned as a float),
    ``"flsd53"``, or a 0-dim float tensor (returned detached). ``"auto"`` needs the Module."""
    if isinstance(gamma, str):
        if gamma == FLSD:
            return gamma
        if gamma == "auto":
            raise ValueError(
                "gamma: 'auto' keeps a running estimate across batches, so it needs the Module "
                "(SigmoidFocalLoss(gamma='auto') or SoftmaxFocalLoss(gamma='auto')), "
                "not the function"
            )
        raise ValueError(f"gamma: expected a number >= 0 or 'flsd53', got {gamma!r}")
    if isinstance(gamma, Tensor):
        if gamma.dim() != 0 or not gamma.is_floating_point():
            raise ValueError(
                f"gamma: expected a number >= 0, 'flsd53' or a 0-dim float tensor, "
                f"got a {gamma.dtype} tensor of shape {tuple(gamma.shape)}"
            )
        return gamma.detach()
    check_nonnegative("gamma", gamma)
    return float(gamma)


def check_label_smoothing(label_smoothing: float) -> float:
    if (
        isinstance(label_smoothing, bool)
        or not isinstance(label_smoothing, (int, float))
        or not (0.0 <= label_smoothing <= 1.0)
    ):
        raise ValueError(f"label_smoothing: expected a number in [0, 1], got {label_smoothing!r}")
    return float(label_smoothing)


def check_class_weight(weight: Tensor | None, num_classes: int, read: bool = False) -> None:
    """``weight``: None or a floating ``(C,)`` tensor (one rescaling factor per class), its
    values >= 0 where ``read`` (the caller allows reading values)."""
    if weight is None:
        return
    check_floating("weight", weight)
    if weight.shape != (num_classes,):
        raise ValueError(
            f"weight: expected a per-class tensor of shape ({num_classes},), "
            f"got {tuple(weight.shape)}"
        )
    if read:
        check_nonnegative_values("weight", weight)


def check_elementwise_weight(weight: Tensor | None, shape: torch.Size) -> None:
    """``weight``: None or a tensor that broadcasts to ``shape`` without changing it."""
    if weight is None:
        return
    check_tensor("weight", weight)
    check_broadcastable_to("weight", weight, shape)


def check_nonnegative_weight(weight: Tensor | None, shape: torch.Size, read: bool) -> None:
    """``weight``: None or a floating tensor that broadcasts to ``shape`` without changing it,
    its values >= 0 where ``read`` (the caller allows reading values)."""
    check_elementwise_weight(weight, shape)
    if weight is not None:
        check_floating("weight", weight)
        if read:
            check_nonnegative_values("weight", weight)


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {tuple(choices)}, got {value!r}")


def check_sync(sync: bool | None) -> None:
    if sync not in (None, True, False):
        raise ValueError(f"sync: expected None, True or False, got {sync!r}")


def check_bins_momentum(bins: int, momentum: float) -> None:
    check_int_at_least("bins", bins, 1)
    check_unit_interval("momentum", momentum, closed_right=False)


def check_focal_l1(alpha: float, beta: float) -> None:
    check_positive("alpha", alpha)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise TypeError(f"beta: expected a number, got {beta!r}")
    if not (1 / math.e - 1e-12 <= beta <= 1):
        raise ValueError(
            f"beta: expected a number in [1/e, 1] (1/e = {1 / math.e:.6f}), got {beta!r}"
        )


def check_open_unit_interval(name: str, value: float) -> None:
    """``value`` in (0, 1), e.g. a prior probability."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < 1):
        raise ValueError(f"{name}: expected a probability in (0, 1), got {value!r}")


def check_sample_counts(counts: Tensor) -> None:
    """Per-class sample counts: a non-empty 1-D tensor of finite values >= 0."""
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(
            f"samples_per_class: expected a non-empty 1-D sequence of counts, "
            f"got shape {tuple(counts.shape)}"
        )
    if bool((counts < 0).any()) or not bool(torch.isfinite(counts).all()):
        raise ValueError(f"samples_per_class: expected finite counts >= 0, got {counts.tolist()}")


def check_boxes(pred_boxes: Tensor, target_boxes: Tensor, box_format: str) -> None:
    """Two floating ``(..., 4)`` box tensors of one shape, and a known ``box_format``."""
    check_floating("pred_boxes", pred_boxes)
    check_floating("target_boxes", target_boxes)
    if pred_boxes.dim() == 0 or pred_boxes.shape[-1] != 4:
        raise ValueError(
            f"pred_boxes: expected shape (..., 4) (one box per row), got {tuple(pred_boxes.shape)}"
        )
    check_same_shape("target_boxes", target_boxes, pred_boxes.shape, "the shape of pred_boxes")
    check_choice("box_format", box_format, BOX_FORMATS)


# --------------------------------------------------------------------------------------------
# target values (read only where the caller allows it: validate=True, or free on CPU)
# --------------------------------------------------------------------------------------------


def check_class_indices(
    targets: Tensor, num_classes: int, ignore_index: int | None, *, background: bool
) -> None:
    """Class indices in ``[0, C)`` (``[0, C]`` with ``background``: ``C`` is background) or
    ``ignore_index``. Reads values (a device sync off the CPU)."""
    top = num_classes if background else num_classes - 1
    bad = (targets < 0) | (targets > top)
    if ignore_index is not None:
        bad &= targets != ignore_index
    if bool(bad.any()):
        value = int(targets[bad][0])
        if background:
            expected = f"[0, {num_classes}] ({num_classes} = background)"
        else:
            expected = f"[0, {num_classes})"
        also = "" if ignore_index is None else f" or ignore_index={ignore_index}"
        raise ValueError(f"targets: expected class indices in {expected}{also}, got {value}")


def check_binary_labels(targets: Tensor, ignore_index: int | None) -> None:
    """Integer targets of the logits' shape: 0, 1 or ``ignore_index``. Reads values."""
    bad = (targets != 0) & (targets != 1)
    if ignore_index is not None:
        bad &= targets != ignore_index
    if bool(bad.any()):
        also = "" if ignore_index is None else f" or ignore_index={ignore_index}"
        raise ValueError(
            f"targets: integer targets of the logits' shape must be 0, 1{also}, "
            f"got {int(targets[bad][0])}"
        )


def check_xyxy(name: str, boxes: Tensor) -> None:
    """``x2 >= x1`` and ``y2 >= y1`` for every box. Reads values: only with ``validate=True``."""
    bad = (boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1])
    if bool(bad.any()):
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name}: expected x2 >= x1 and y2 >= y1 for every box (in xyxy form), got "
            f"{boxes[where].tolist()} at index {where}"
        )


# --------------------------------------------------------------------------------------------
# the IoU family's bases and modifiers (SIoU, Wise-IoU, Alpha-, Inner-, Focaler-IoU, MPDIoU,
# Shape-IoU)
# --------------------------------------------------------------------------------------------

WIOU_VERSIONS = (1, 2, 3)
WIOU_BASES = ("iou", "giou", "diou", "ciou", "eiou", "siou")


def check_power(power: float) -> float:
    """Alpha-IoU's exponent: a finite number >= 1 (below 1, ``IoU^a`` has an infinite slope
    at 0 and the gradient of disjoint or identical boxes is not finite)."""
    value = _number("power", power)
    if not (value >= 1 and math.isfinite(value)):
        raise ValueError(
            f"power: expected a finite number >= 1 (Alpha-IoU's exponent; 1 is the base loss), "
            f"got {power!r}"
        )
    return value


def check_inner_ratio(inner_ratio: float | None) -> float | None:
    """Inner-IoU's scale of the auxiliary boxes: None (off) or a finite number > 0."""
    if inner_ratio is None:
        return None
    value = _number("inner_ratio", inner_ratio)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(
            f"inner_ratio: expected None or a finite number > 0 (the auxiliary boxes' scale; "
            f"1 is the base loss), got {inner_ratio!r}"
        )
    return value


def check_focaler(focaler: Sequence[float] | None) -> tuple[float, float] | None:
    """Focaler-IoU's interval: None (off) or a pair ``(d, u)`` with ``0 <= d < u <= 1``."""
    if focaler is None:
        return None
    if isinstance(focaler, (str, bytes)) or not isinstance(focaler, Sequence) or len(focaler) != 2:
        raise ValueError(f"focaler: expected None or a pair (d, u), got {_describe(focaler)}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in focaler):
        raise ValueError(f"focaler: expected a pair of numbers (d, u), got {focaler!r}")
    d, u = float(focaler[0]), float(focaler[1])
    if not (0 <= d < u <= 1):
        raise ValueError(f"focaler: expected (d, u) with 0 <= d < u <= 1, got {tuple(focaler)!r}")
    return d, u


def check_theta(theta: float) -> float:
    """SIoU's shape-cost exponent: a finite number >= 1 (below 1 the cost has an infinite
    slope where the shapes agree)."""
    value = _number("theta", theta)
    if not (value >= 1 and math.isfinite(value)):
        raise ValueError(f"theta: expected a finite number >= 1, got {theta!r}")
    return value


def check_image_size(image_size: object) -> tuple[float, float] | Tensor:
    """MPDIoU's image size ``(H, W)`` in the boxes' units: a pair of finite numbers > 0, or a
    tensor whose last dimension is 2 (``(..., 2)``, one ``(H, W)`` per box or broadcast).
    A tensor's values are not read here (see :func:`check_image_size_values`)."""
    if image_size is None:
        raise ValueError(
            "image_size: required, the (H, W) of the image in the units of the boxes (pixels: "
            "the image size; grid units: image size / stride; normalised boxes: (1, 1)), got None"
        )
    if isinstance(image_size, Tensor):
        if image_size.dim() == 0 or image_size.shape[-1] != 2 or image_size.is_complex():
            raise ValueError(
                f"image_size: expected (H, W) or a real tensor of shape (..., 2), "
                f"got {_describe(image_size)}"
            )
        return image_size
    if (
        isinstance(image_size, (str, bytes))
        or not isinstance(image_size, Sequence)
        or len(image_size) != 2
        or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in image_size)
    ):
        raise ValueError(
            f"image_size: expected (H, W), two numbers, or a tensor of shape (..., 2), "
            f"got {_describe(image_size)}"
        )
    h, w = float(image_size[0]), float(image_size[1])
    if not (h > 0 and w > 0 and math.isfinite(h) and math.isfinite(w)):
        raise ValueError(
            f"image_size: expected H > 0 and W > 0 (finite), got {tuple(image_size)!r}"
        )
    return h, w


def check_image_size_values(image_size: Tensor) -> None:
    """Every H and W of a tensor ``image_size`` finite and > 0. Reads values: only where that
    is free (a CPU tensor in eager mode) or with ``validate=True``."""
    bad = ~(torch.isfinite(image_size) & (image_size > 0))
    if bool(bad.any()):
        raise ValueError(
            f"image_size: expected H > 0 and W > 0 (finite), got "
            f"{image_size[bad].reshape(-1)[0].item()!r} in {_describe(image_size)}"
        )


def check_wiou(version: int, base: str, alpha: float, delta: float, gamma: float) -> None:
    """Wise-IoU's version (1, 2, 3), base and focusing constants (alpha, delta > 0, gamma >= 0)."""
    if isinstance(version, bool) or version not in WIOU_VERSIONS:
        raise ValueError(f"version: expected one of {WIOU_VERSIONS}, got {version!r}")
    check_choice("base", base, WIOU_BASES)
    check_positive("alpha", alpha)
    check_positive("delta", delta)
    check_nonnegative("gamma", gamma)


def check_iou_mean(iou_mean: float | Tensor) -> None:
    """Wise-IoU's mean of ``L_IoU``: a finite number > 0, or a one-element float tensor
    (its value is not read: clamped to >= eps where it is used)."""
    if isinstance(iou_mean, Tensor):
        if iou_mean.numel() != 1 or not iou_mean.is_floating_point():
            raise ValueError(
                f"iou_mean: expected a number > 0 or a one-element float tensor, "
                f"got {_describe(iou_mean)}"
            )
        return
    check_positive("iou_mean", iou_mean)


def check_wiou_momentum(momentum: float | None) -> None:
    if momentum is None:
        return
    value = _number("momentum", momentum)
    if not (0 <= value <= 1):
        raise ValueError(f"momentum: expected None or a number in [0, 1], got {momentum!r}")


# --------------------------------------------------------------------------------------------
# the generalized focal family (QFL, VFL, DFL, ASL, Poly-1)
# --------------------------------------------------------------------------------------------


def check_varifocal(alpha: float, gamma: float, iou_weighted: bool) -> None:
    """VFL's negatives' weight and exponent (>= 0) and its ``iou_weighted`` flag."""
    check_nonnegative("alpha", alpha)
    check_nonnegative("gamma", gamma)
    check_flag("iou_weighted", iou_weighted)


def check_poly1_focal(epsilon: float, gamma: float) -> tuple[float, float]:
    """Poly-1 focal loss's ``epsilon`` (any finite number) and ``gamma`` (a number >= 0: no
    ``"flsd53"``, no tensor), returned as floats."""
    epsilon = check_number("epsilon", epsilon)
    gamma_value = check_gamma(gamma)
    if not isinstance(gamma_value, float):
        raise ValueError(f"gamma: expected a number >= 0, got {gamma!r}")
    return epsilon, gamma_value


def check_poly_epsilon(epsilon: float) -> float:
    """Poly-1 cross-entropy's epsilon: ``>= -1`` keeps ``CE + epsilon (1 - p_t)`` decreasing
    in ``p_t`` (its derivative is ``-1/p_t - epsilon``)."""
    epsilon = check_number("epsilon", epsilon)
    if epsilon < -1:
        raise ValueError(
            f"epsilon: expected a number >= -1 (below, Poly-1 cross-entropy increases with the "
            f"probability of the target class), got {epsilon!r}"
        )
    return epsilon


def check_clip(clip: float) -> float:
    """ASL's probability margin ``m``: a number in [0, 1)."""
    clip = check_number("clip", clip)
    if not 0 <= clip < 1:
        raise ValueError(
            f"clip: expected a probability margin in [0, 1) (0: no shifting), got {clip!r}"
        )
    return clip


def check_scores(scores: Tensor | None, is_index: bool, labels_shape: torch.Size) -> None:
    """QFL / VFL ``scores``: required with class-index targets (one per row, the target of
    the row's label column: the IoU of its box), refused with dense targets (which carry
    their soft targets themselves)."""
    if not is_index:
        if scores is not None:
            raise ValueError(
                "scores: only with class-index targets (dense targets carry the soft target "
                f"of every column themselves), got {_describe(scores)} with dense targets"
            )
        return
    if scores is None:
        raise ValueError(
            f"scores: required with class-index targets: a float tensor of shape "
            f"{tuple(labels_shape)} holding each positive's target (e.g. the IoU of its box), "
            "got None"
        )
    check_floating("scores", scores)
    check_same_shape("scores", scores, labels_shape, "one per row of the class-index targets")


def check_positive_scores(scores: Tensor, labels: Tensor, num_classes: int) -> None:
    """The scores of the positive rows (labels in [0, C)) lie in [0, 1]. Reads values."""
    positive = (labels >= 0) & (labels < num_classes)
    values = scores.detach()[positive]
    if values.numel() and bool(((values < 0) | (values > 1) | values.isnan()).any()):
        lo, hi = float(values.min()), float(values.max())
        raise ValueError(
            f"scores: expected values in [0, 1] at the positive rows, got values in [{lo}, {hi}]"
        )


def check_distances(targets: Tensor, n: int) -> None:
    """DFL targets lie in [0, n] (``n = pred.shape[-1] - 1``). Reads values."""
    values = targets.detach()
    if values.numel() and bool(((values < 0) | (values > n) | values.isnan()).any()):
        lo, hi = float(values.min()), float(values.max())
        raise ValueError(
            f"targets: expected distances in [0, n] = [0, {n}] (n = pred.shape[-1] - 1, the "
            f"top bin), got values in [{lo}, {hi}]"
        )
