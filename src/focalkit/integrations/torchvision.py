"""focalkit's losses inside torchvision's RetinaNet and FCOS.

>>> from focalkit.integrations import torchvision as fk_tv
>>> fk_tv.set_losses(model, classification="focal", box="giou")  # doctest: +SKIP

After :func:`set_losses`, ``model(images, targets)`` in training mode returns the model's own
loss dict (RetinaNet: ``classification``, ``bbox_regression``; FCOS: those and
``bbox_ctrness``), computed by focalkit for the whole batch at once:

* **Matching**: torchvision's own rules, batched over the images (ground truth padded to the
  largest image's count): RetinaNet's ``Matcher`` (IoU thresholds, low-quality matches; a
  matcher of another class is called per image as the model would), FCOS's centre sampling
  and scale ranges. The same IoU operations as ``box_iou`` and the same comparisons, so the
  same matches.
* **Targets**: class indices (``C`` = background, no one-hot tensor); anchors between the
  thresholds get weight 0. Box targets are encoded/decoded by the head's own box coder.
* **Normalisation** (``normalization=``): ``"model"`` (default) reproduces the model's:
  RetinaNet divides each image's sum by that image's foreground count (at least 1) and
  averages over the images; FCOS divides the batch sum by the batch's foreground count.
  Batched, this is a per-anchor weight. ``"batch"`` divides the batch sum by the batch's
  foreground count for both models; ``"reduce_mean"`` divides it by the foreground count
  averaged over the ranks of the process group (detectron2/mmdetection: under
  DistributedDataParallel the averaged gradients equal those of one process that saw every
  rank's images). GHM-C is normalised by its own definition (the mean over valid anchors).

With ``classification="focal"`` (alpha 0.25, gamma 2) and the model's own box loss, the
losses and gradients equal the unpatched model's (``tests/integrations/test_torchvision.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import focalkit

from ..distributed import reduce_mean
from ._table import (
    BCE_FIXED,
    GFL_BRANCH,
    LossSpec,
    box_spec,
    build,
    check_normalization,
    describe,
    instantiate,
    iou_family_specs,
    label_spec,
    require_stack,
    split_options,
)

__all__ = [
    "BOX_LOSSES",
    "CLASSIFICATION_LOSSES",
    "NORMALIZATIONS",
    "TorchvisionLosses",
    "options_table",
    "pairwise_iou",
    "remove_losses",
    "set_losses",
]

NORMALIZATIONS = ("model", "batch", "reduce_mean")


# --------------------------------------------------------------------------------------------
# the loss tables
# --------------------------------------------------------------------------------------------


def l1_loss(
    pred: Tensor, target: Tensor, *, weight: Tensor | None = None, reduction: str = "sum"
) -> Tensor:
    """torch's L1 on the encoded box deltas, summed over the 4 coordinates of each box and
    weighted per box (``weight`` of shape ``(P,)``), torchvision's RetinaNet default."""
    loss = F.l1_loss(pred, target, reduction="none").sum(-1)
    return _reduce(loss, weight, reduction)


def smooth_l1_loss(
    pred: Tensor,
    target: Tensor,
    *,
    beta: float = 1.0,
    weight: Tensor | None = None,
    reduction: str = "sum",
) -> Tensor:
    """torch's smooth L1 (``beta``, default 1 as in torchvision) on the encoded box deltas,
    summed over the 4 coordinates of each box and weighted per box."""
    loss = F.smooth_l1_loss(pred, target, reduction="none", beta=beta).sum(-1)
    return _reduce(loss, weight, reduction)


def _reduce(loss: Tensor, weight: Tensor | None, reduction: str) -> Tensor:
    if weight is not None:
        loss = loss * weight
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    return loss


#: classification name -> how it is computed. ``targets``: "index" (class indices, C =
#: background, per-anchor weights), "index+iou" (the same plus ``scores=``: the IoU of each
#: positive anchor's decoded box with its ground truth, detached, as in GFL/VarifocalNet),
#: "ghm" (GHMCLoss on class indices, ignored anchors at -100, its own mean).
CLASSIFICATION_LOSSES: Mapping[str, LossSpec] = MappingProxyType(
    {
        "focal": label_spec(
            "focal",
            "sigmoid_focal_loss",
            "index",
            "sigmoid focal loss (alpha 0.25, gamma 2 by default)",
        ),
        "bce": label_spec(
            "bce",
            "sigmoid_focal_loss",
            "index",
            "binary cross-entropy (focal with gamma 0, no alpha)",
            fixed=BCE_FIXED,
        ),
        "ghmc": LossSpec(
            "ghmc",
            "GHMCLoss",
            "ghm",
            "GHM-C with the EMA of bin counts (a Module: its buffer is in the model's state_dict)",
            fixed=MappingProxyType({"reduction": "mean", "ignore_index": -100}),
            owned=frozenset({"weight", "normalizer"}),
            module=True,
        ),
        "qfl": label_spec(
            "qfl",
            "quality_focal_loss",
            "index+iou",
            "quality focal loss (GFL), IoU of the decoded box as the positive's score",
            GFL_BRANCH,
            scores=True,
        ),
        "vfl": label_spec(
            "vfl",
            "varifocal_loss",
            "index+iou",
            "varifocal loss (VarifocalNet), IoU of the decoded box as the positive's score",
            GFL_BRANCH,
            scores=True,
        ),
        "poly1_focal": label_spec(
            "poly1_focal",
            "poly1_focal_loss",
            "index",
            "Poly-1 focal loss (PolyLoss)",
            GFL_BRANCH,
        ),
    }
)


#: box name -> how it is computed. ``targets``: "deltas" (the head's encoded offsets against
#: the box coder's encoding of the ground truth), "boxes" (decoded xyxy boxes against the
#: ground truth, in pixels of the transformed images), "boxes+size" (the same, plus
#: ``image_size=``: each image's (H, W) after the model's transform).
BOX_LOSSES: Mapping[str, LossSpec] = MappingProxyType(
    {
        "l1": box_spec(
            "l1", "", "L1 on the encoded deltas (torch)", targets="deltas", func=l1_loss
        ),
        "smooth_l1": box_spec(
            "smooth_l1",
            "",
            "smooth L1 on the encoded deltas (torch)",
            targets="deltas",
            func=smooth_l1_loss,
        ),
        "focal_l1": box_spec(
            "focal_l1",
            "focal_l1_loss",
            "FocalL1 on the encoded deltas",
            targets="deltas",
            owned=frozenset({"weight", "reduction", "normalizer"}),
        ),
        **iou_family_specs({"mpdiou": "MPDIoU loss (image size from the model's transform)"}),
    }
)


def options_table() -> list[dict[str, Any]]:
    """One row per loss name of this integration: role, name, the focalkit callable, the
    options it takes (or why it is unavailable), its targets and a summary."""
    return describe({"classification": CLASSIFICATION_LOSSES, "box": BOX_LOSSES})


# --------------------------------------------------------------------------------------------
# batched matching (torchvision's rules)
# --------------------------------------------------------------------------------------------


def _pad_targets(
    targets: list[dict[str, Tensor]], device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    """Ground truth padded to the largest count: boxes (N, G, 4), labels (N, G) and the mask of
    real entries (N, G)."""
    boxes = [t["boxes"].to(device=device, dtype=dtype) for t in targets]
    labels = [t["labels"].to(device=device, dtype=torch.int64) for t in targets]
    counts = torch.tensor([len(b) for b in boxes], device=device)
    gt_boxes = nn.utils.rnn.pad_sequence(boxes, batch_first=True)
    gt_labels = nn.utils.rnn.pad_sequence(labels, batch_first=True)
    valid = torch.arange(gt_boxes.shape[1], device=device) < counts[:, None]
    return gt_boxes, gt_labels, valid


def pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every pair, ``(..., N, 4) x (..., M, 4) -> (..., N, M)``, xyxy, with the same
    operations in the same order as ``torchvision.ops.box_iou`` (so the same values, bit for
    bit), batched over leading dimensions whatever the torchvision version."""
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    lt = torch.max(boxes1[..., None, :2], boxes2[..., None, :, :2])
    rb = torch.min(boxes1[..., None, 2:], boxes2[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[..., None] + area2[..., None, :] - inter
    return inter / union


def _match_retinanet(
    model: Any,
    gt_boxes: Tensor,
    valid: Tensor,
    anchors: Tensor,
    targets: list[dict[str, Tensor]],
) -> Tensor:
    """RetinaNet's matches (N, A): a ground-truth index, -1 (background) or -2 (between the
    thresholds: ignored)."""
    from torchvision.models.detection import _utils as det_utils

    n, a = anchors.shape[:2]
    matcher = model.proposal_matcher
    if gt_boxes.shape[1] == 0:
        return torch.full((n, a), -1, dtype=torch.int64, device=anchors.device)
    if type(matcher) is not det_utils.Matcher:  # a custom matcher: called as the model does
        out = []
        for i, t in enumerate(targets):
            if t["boxes"].numel() == 0:
                out.append(torch.full((a,), -1, dtype=torch.int64, device=anchors.device))
            else:
                out.append(matcher(pairwise_iou(t["boxes"], anchors[i])))
        return torch.stack(out)
    iou = pairwise_iou(gt_boxes, anchors).masked_fill(~valid[..., None], -1.0)  # (N, G, A)
    values, matches = iou.max(dim=1)
    all_matches = matches
    below = values < matcher.low_threshold
    between = (values >= matcher.low_threshold) & (values < matcher.high_threshold)
    matches = matches.masked_fill(below, matcher.BELOW_LOW_THRESHOLD)
    matches = matches.masked_fill(between, matcher.BETWEEN_THRESHOLDS)
    if matcher.allow_low_quality_matches:
        # each ground truth's best anchors (ties included) keep their match
        highest = iou.max(dim=2).values  # (N, G)
        best = ((iou == highest[..., None]) & valid[..., None]).any(dim=1)
        matches = torch.where(best, all_matches, matches)
    return matches


def _match_fcos(
    model: Any,
    gt_boxes: Tensor,
    valid: Tensor,
    anchors: Tensor,
    num_anchors_per_level: list[int],
) -> Tensor:
    """FCOS's matches (N, A): a ground-truth index or -1 (centre sampling, inside the box, the
    level's scale range, the smallest box among several)."""
    n, a = anchors.shape[:2]
    if gt_boxes.shape[1] == 0:
        return torch.full((n, a), -1, dtype=torch.int64, device=anchors.device)
    gt_centers = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2  # (N, G, 2)
    anchor_centers = (anchors[..., :2] + anchors[..., 2:]) / 2  # (N, A, 2)
    anchor_sizes = anchors[..., 2] - anchors[..., 0]  # (N, A)
    match = (anchor_centers[:, :, None, :] - gt_centers[:, None, :, :]).abs_().max(
        dim=3
    ).values < model.center_sampling_radius * anchor_sizes[..., None]
    x, y = anchor_centers[..., None].unbind(dim=2)  # (N, A, 1)
    x0, y0, x1, y1 = gt_boxes[:, None].unbind(dim=3)  # (N, 1, G)
    dist = torch.stack([x - x0, y - y0, x1 - x, y1 - y], dim=3)  # (N, A, G, 4)
    match &= dist.min(dim=3).values > 0
    lower = anchor_sizes * 4
    lower[:, : num_anchors_per_level[0]] = 0
    upper = anchor_sizes * 8
    upper[:, -num_anchors_per_level[-1] :] = float("inf")
    far = dist.max(dim=3).values
    match &= (far > lower[..., None]) & (far < upper[..., None])
    match &= valid[:, None, :]
    areas = (gt_boxes[..., 2] - gt_boxes[..., 0]) * (gt_boxes[..., 3] - gt_boxes[..., 1])
    score = match.to(torch.float32) * (1e8 - areas[:, None, :])
    best, matched = score.max(dim=2)
    return matched.masked_fill(best < 1e-5, -1)


# --------------------------------------------------------------------------------------------
# the criterion
# --------------------------------------------------------------------------------------------


class TorchvisionLosses(nn.Module):
    """The losses :func:`set_losses` puts into a RetinaNet or FCOS, as the submodule
    ``model.focalkit_losses``. ``forward(model, targets, head_outputs, anchors,
    num_anchors_per_level=None)`` takes what the model's ``compute_loss`` takes and returns
    its loss dict. A loss with state (GHM-C's EMA, WIoU's running mean) is a submodule of it,
    so its buffers are in the model's ``state_dict`` and move with ``model.to(...)``."""

    def __init__(
        self,
        kind: str,
        classification: LossSpec,
        box: LossSpec,
        cls_options: dict[str, Any],
        box_options: dict[str, Any],
        normalization: str,
    ) -> None:
        super().__init__()
        self.kind = kind
        # names, not the specs: the model stays deep-copyable and picklable
        self.cls_name = classification.name
        self.box_name = box.name
        self.cls_options = cls_options
        self.box_options = box_options
        self.normalization = normalization
        cls_fn = instantiate(classification, cls_options)
        box_fn = instantiate(box, box_options)
        # Modules become submodules (state in the state_dict); functions stay plain attributes
        self.cls_loss: Any = cls_fn
        self.box_loss: Any = box_fn
        self.image_sizes: list[tuple[int, int]] | None = None

    @property
    def classification(self) -> LossSpec:
        return CLASSIFICATION_LOSSES[self.cls_name]

    @property
    def box(self) -> LossSpec:
        return BOX_LOSSES[self.box_name]

    def extra_repr(self) -> str:
        return (
            f"model={self.kind}, classification={self.classification.name!r} "
            f"{self.cls_options}, box={self.box.name!r} {self.box_options}, "
            f"normalization={self.normalization!r}"
        )

    def remember_image_sizes(self, module: nn.Module, args: Any, output: Any) -> None:
        """Forward hook on the model's transform: the image sizes MPDIoU needs."""
        self.image_sizes = list(output[0].image_sizes)

    # ---- the calls ---------------------------------------------------------------------

    def _cls_call(self, logits: Tensor, labels: Tensor, weight: Tensor, scores: Tensor | None):
        if self.classification.module:
            return self.cls_loss(logits, labels)
        kwargs = {**self.classification.fixed, **self.cls_options}
        if scores is not None:
            kwargs["scores"] = scores
        return self.cls_loss(logits, labels, weight=weight, reduction="sum", **kwargs)

    def _box_call(self, pred: Tensor, target: Tensor, weight: Tensor, sizes: Tensor | None):
        if self.box.module:
            return self.box_loss(pred, target, weight=weight)
        kwargs = {**self.box.fixed, **self.box_options}
        if sizes is not None:
            kwargs["image_size"] = sizes
        if self.box.targets == "deltas" and self.box.func is None:
            weight = weight[:, None]  # an elementwise focalkit loss on (P, 4) deltas
        return self.box_loss(pred, target, weight=weight, reduction="sum", **kwargs)

    # ---- forward -----------------------------------------------------------------------

    def forward(
        self,
        model: Any,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        num_anchors_per_level: list[int] | None = None,
    ) -> dict[str, Tensor]:
        cls_logits = head_outputs["cls_logits"]
        regression = head_outputs["bbox_regression"]
        n, _, num_classes = cls_logits.shape
        anchors_t = torch.stack(anchors)
        gt_boxes, gt_labels, valid = _pad_targets(targets, anchors_t.device, anchors_t.dtype)
        with torch.no_grad():
            if self.kind == "retinanet":
                matched = _match_retinanet(model, gt_boxes, valid, anchors_t, targets)
            else:
                assert num_anchors_per_level is not None
                matched = _match_fcos(model, gt_boxes, valid, anchors_t, num_anchors_per_level)
        fg = matched >= 0
        ignored = matched == -2  # RetinaNet's BETWEEN_THRESHOLDS
        index = matched.clamp(min=0)
        if gt_labels.shape[1]:
            labels = torch.gather(gt_labels, 1, index)
        else:
            labels = torch.zeros_like(index)
        labels = torch.where(fg, labels, num_classes)  # C = background
        num_fg = fg.sum(dim=1)  # per image
        w_img = self._image_weights(num_fg, n, cls_logits.dtype)

        # positives, over the whole batch
        b_idx, a_idx = fg.nonzero(as_tuple=True)
        reg_fg = regression[b_idx, a_idx]
        anchors_fg = anchors_t[b_idx, a_idx]
        gt_fg = gt_boxes[b_idx, index[b_idx, a_idx]]
        w_fg = w_img[b_idx]
        coder = self._coder(model)
        decoded = None
        if self.box.targets != "deltas" or self.classification.targets == "index+iou":
            decoded = self._decode(coder, reg_fg, anchors_fg)

        # classification
        scores = None
        if self.classification.targets == "index+iou":
            assert decoded is not None
            iou = 1 - focalkit.iou_loss(decoded.detach(), gt_fg, reduction="none")
            scores = torch.zeros(labels.shape, dtype=iou.dtype, device=iou.device)
            scores[b_idx, a_idx] = iou
        if self.classification.targets == "ghm":
            loss_cls = self._cls_call(cls_logits, labels.masked_fill(ignored, -100), w_img, None)
        else:
            weight = w_img[:, None].expand(labels.shape).masked_fill(ignored, 0.0)
            loss_cls = self._cls_call(cls_logits, labels, weight[..., None], scores)

        # boxes
        if self.box.targets == "deltas":
            loss_box = self._box_call(reg_fg, self._encode(coder, gt_fg, anchors_fg), w_fg, None)
        else:
            assert decoded is not None
            sizes = None
            if self.box.targets == "boxes+size":
                sizes = self._image_size_tensor(n, decoded)[b_idx]
            loss_box = self._box_call(decoded, gt_fg, w_fg, sizes)
        losses = {"classification": loss_cls, "bbox_regression": loss_box}

        if self.kind == "fcos":  # centre-ness: BCE against torchvision's target
            deltas = coder.encode(anchors_fg, gt_fg)
            lr, tb = deltas[:, [0, 2]], deltas[:, [1, 3]]
            ctr = torch.sqrt(
                (lr.min(dim=-1).values / lr.max(dim=-1).values)
                * (tb.min(dim=-1).values / tb.max(dim=-1).values)
            )
            logits_ctr = head_outputs["bbox_ctrness"][b_idx, a_idx, 0]
            losses["bbox_ctrness"] = focalkit.sigmoid_focal_loss(
                logits_ctr, ctr, gamma=0.0, alpha=None, weight=w_fg, reduction="sum"
            )
        return losses

    # ---- helpers -----------------------------------------------------------------------

    def _image_weights(self, num_fg: Tensor, n: int, dtype: torch.dtype) -> Tensor:
        """The weight of each image's anchors, (N,): the model's normalisation as weights."""
        count = num_fg.to(torch.float64)  # exact 1 / n, rounded once to the loss's dtype
        if self.normalization == "model" and self.kind == "retinanet":
            w = 1.0 / (count.clamp(min=1) * n)
        elif self.normalization == "reduce_mean":
            w = (1.0 / reduce_mean(count.sum()).clamp(min=1)).expand(n)
        else:  # FCOS's own, or "batch"
            w = (1.0 / count.sum().clamp(min=1)).expand(n)
        return w.to(torch.float64 if dtype == torch.float64 else torch.float32)

    def _coder(self, model: Any) -> Any:
        if self.kind == "retinanet":
            head = getattr(model.head, "regression_head", None)
            return getattr(head, "box_coder", model.box_coder)
        return getattr(model.head, "box_coder", model.box_coder)

    def _decode(self, coder: Any, reg: Tensor, anchors: Tensor) -> Tensor:
        if self.kind == "retinanet":
            return coder.decode_single(reg, anchors)
        return coder.decode(reg, anchors)

    def _encode(self, coder: Any, gt: Tensor, anchors: Tensor) -> Tensor:
        if self.kind == "retinanet":
            return coder.encode_single(gt, anchors)
        return coder.encode(anchors, gt)

    def _image_size_tensor(self, n: int, like: Tensor) -> Tensor:
        if self.image_sizes is None or len(self.image_sizes) != n:
            raise RuntimeError(
                "box='mpdiou' needs the images' sizes, recorded by a hook on model.transform "
                "during model(images, targets); call the model, not compute_loss directly"
            )
        return torch.tensor(self.image_sizes, dtype=like.dtype, device=like.device)


# --------------------------------------------------------------------------------------------
# installing it in a model
# --------------------------------------------------------------------------------------------


class _ComputeLoss:
    """Stands in for ``model.compute_loss`` (an instance attribute, so the class is
    untouched): it calls ``model.focalkit_losses``. Picklable and deep-copyable with the
    model."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __call__(self, targets: Any, head_outputs: Any, anchors: Any, *rest: Any) -> Any:
        return self.model.focalkit_losses(self.model, targets, head_outputs, anchors, *rest)

    def __repr__(self) -> str:
        return f"<focalkit compute_loss of {type(self.model).__name__}>"


def _unwrap(model: Any) -> Any:
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


def _model_kind(model: object) -> str:
    require_stack("torchvision", "torchvision", "focalkit.integrations.torchvision")
    from torchvision.models.detection import FCOS, RetinaNet

    if isinstance(model, RetinaNet):
        return "retinanet"
    if isinstance(model, FCOS):
        return "fcos"
    raise TypeError(
        f"set_losses: model must be a torchvision.models.detection.RetinaNet or FCOS "
        f"(any backbone), got {type(model).__module__}.{type(model).__qualname__}; "
        f"supported: RetinaNet, FCOS"
    )


def _model_box(model: Any, kind: str) -> str:
    """The box loss the model computes itself."""
    if kind == "fcos":
        return "giou"
    head = getattr(model.head, "regression_head", None)
    loss_type = getattr(head, "_loss_type", None)
    if loss_type is None:
        raise ValueError(
            "box=None means the model's own box loss, but this RetinaNet's head has no "
            "regression_head._loss_type; name the box loss (box='l1', 'giou', ...)"
        )
    return str(loss_type)


def set_losses(
    model: Any,
    classification: str = "focal",
    box: str | None = None,
    *,
    normalization: str = "model",
    **options: Any,
) -> TorchvisionLosses:
    """Make ``model`` (a torchvision ``RetinaNet`` or ``FCOS``, any backbone, or either
    wrapped in ``DistributedDataParallel``) compute its training losses with focalkit.

    Args:
        model: the detector. Its class is untouched: an instance attribute ``compute_loss``
            and a submodule ``focalkit_losses`` are added (see :func:`remove_losses`).
        classification: a name of :data:`CLASSIFICATION_LOSSES` ("focal", "bce", "ghmc",
            "qfl", "vfl", "poly1_focal").
        box: a name of :data:`BOX_LOSSES` ("l1", "smooth_l1", "giou", "diou", "ciou",
            "eiou", "focal_eiou", ...), or None (default) for the model's own (RetinaNet:
            its head's ``_loss_type``, "l1" by default; FCOS: "giou").
        normalization: "model" (default, the model's own), "batch" or "reduce_mean" (see the
            module's docstring).
        **options: keyword options of the chosen losses (``alpha=0.5, gamma=1.5``,
            ``beta=...``). An option goes to the loss that takes it; when both take it, prefix
            it: ``cls_gamma=`` / ``box_gamma=``.

    Returns:
        The installed :class:`TorchvisionLosses` (also ``model.focalkit_losses``).

    Raises:
        TypeError: a model of another class.
        ValueError: an unknown loss name or normalisation, or an option no chosen loss takes.
        LossUnavailableError: a loss whose focalkit function this focalkit lacks.
        ImportError: torchvision is missing or fails to import.
    """
    model = _unwrap(model)
    kind = _model_kind(model)
    check_normalization(normalization, NORMALIZATIONS)
    cls_spec = build("classification", classification, CLASSIFICATION_LOSSES)
    box_spec = build("box", _model_box(model, kind) if box is None else box, BOX_LOSSES)
    routed = split_options(
        {"classification": ("cls_", cls_spec), "box": ("box_", box_spec)}, options
    )
    losses = TorchvisionLosses(
        kind, cls_spec, box_spec, routed["classification"], routed["box"], normalization
    )
    remove_losses(model)
    model.focalkit_losses = losses
    model.__dict__["compute_loss"] = _ComputeLoss(model)
    if box_spec.targets == "boxes+size":
        handle = model.transform.register_forward_hook(losses.remember_image_sizes)
        model.__dict__["_focalkit_hook"] = handle
    return losses


def remove_losses(model: Any) -> bool:
    """Undo :func:`set_losses`: the model computes its own losses again. Returns whether
    focalkit's losses were installed."""
    model = _unwrap(model)
    installed = isinstance(model.__dict__.get("compute_loss"), _ComputeLoss)
    model.__dict__.pop("compute_loss", None)
    handle = model.__dict__.pop("_focalkit_hook", None)
    if handle is not None:
        handle.remove()
    if "focalkit_losses" in model._modules:
        del model._modules["focalkit_losses"]
    return installed
