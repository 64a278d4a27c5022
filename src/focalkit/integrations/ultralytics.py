"""focalkit's losses in Ultralytics YOLO detection (YOLOv8, YOLO11; YOLO26's end-to-end head
through Ultralytics' ``E2ELoss``).

>>> from focalkit.integrations import ultralytics as fk_yolo
>>> criterion = fk_yolo.DetectionLoss(model, classification="bce", box="ciou")  # doctest: +SKIP
>>> fk_yolo.set_losses(yolo, classification="vfl", box="siou")  # doctest: +SKIP

:class:`DetectionLoss` is a subclass of ``ultralytics.utils.loss.v8DetectionLoss`` with the same
constructor arguments (plus the loss names and options), call signature and return value:
``criterion(preds, batch) -> (loss * batch_size, {"box_loss", "cls_loss", "dfl_loss"})``. The
task-aligned assigner, the target layout, the gains (``hyp.box``, ``hyp.cls``, ``hyp.dfl``)
and the normalisation by the sum of the target scores are Ultralytics'; focalkit computes the
classification loss, the box loss and the DFL (``focalkit.distribution_focal_loss``):

* classification targets (``CLASSIFICATION_LOSSES``): "dense" are the assigner's target
  scores (soft, one class per positive anchor); "index+scores" are class indices (``nc`` =
  background) with ``scores=`` the positive's target score, the IoU-aware target the VFL/QFL
  heads use.
* box targets (``BOX_LOSSES``): the predicted and assigned boxes (xyxy, in grid units),
  weighted per positive anchor by its target score; MPDIoU gets each anchor's image size in
  those units.
* DFL (``DFL_LOSSES``): "dfl" for a head with ``reg_max > 1``, Ultralytics' L1 on the
  normalised distances ("l1", torch) for ``reg_max == 1``.

With ``classification="bce", box="ciou"`` the loss items and gradients equal
``v8DetectionLoss``'s (``tests/integrations/test_ultralytics.py``).

:func:`set_losses` on a ``YOLO`` object sets the model's criterion now and registers an
``on_pretrain_routine_end`` callback, so ``yolo.train(...)`` (which builds a new model and its
EMA copy) computes its training and validation losses with focalkit too. Ultralytics'
multi-GPU launcher starts new processes that do not receive callbacks: for DDP, see
docs/integrations.md.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributed import reduce_mean
from ._table import (
    BCE_FIXED,
    GFL_BRANCH,
    LossSpec,
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
    "DFL_LOSSES",
    "NORMALIZATIONS",
    "DetectionLoss",
    "FocalkitBboxLoss",
    "options_table",
    "remove_losses",
    "set_losses",
]

NORMALIZATIONS = ("model", "reduce_mean")
WHAT = "focalkit.integrations.ultralytics"

DetectionLoss: Any  # the class is built on first use: see __getattr__ below

# --------------------------------------------------------------------------------------------
# the loss tables
# --------------------------------------------------------------------------------------------

#: classification name -> how it is computed ("dense": the assigner's target scores;
#: "index+scores": class indices, nc = background, plus ``scores=``).
CLASSIFICATION_LOSSES: Mapping[str, LossSpec] = MappingProxyType(
    {
        "bce": label_spec(
            "bce",
            "sigmoid_focal_loss",
            "dense",
            "binary cross-entropy against the target scores (Ultralytics' default)",
            fixed=BCE_FIXED,
        ),
        "focal": label_spec(
            "focal",
            "sigmoid_focal_loss",
            "dense",
            "sigmoid focal loss against the target scores (alpha 0.25, gamma 2 by default)",
        ),
        "qfl": label_spec(
            "qfl",
            "quality_focal_loss",
            "index+scores",
            "quality focal loss (GFL), the target score as the positive's quality",
            GFL_BRANCH,
            scores=True,
        ),
        "vfl": label_spec(
            "vfl",
            "varifocal_loss",
            "index+scores",
            "varifocal loss (VarifocalNet), the target score as the positive's IoU-aware target",
            GFL_BRANCH,
            scores=True,
        ),
        "poly1_focal": label_spec(
            "poly1_focal",
            "poly1_focal_loss",
            "dense",
            "Poly-1 focal loss (PolyLoss) against the target scores",
            GFL_BRANCH,
        ),
    }
)

#: box name -> how it is computed ("boxes": xyxy boxes in grid units; "boxes+size": the same
#: plus ``image_size=``, each anchor's image (H, W) in grid units).
BOX_LOSSES: Mapping[str, LossSpec] = MappingProxyType(
    iou_family_specs(
        {
            "ciou": "CIoU loss (Ultralytics' default)",
            "wiou": "Wise-IoU (a Module: its running mean lives in the criterion)",
            "mpdiou": "MPDIoU loss (each anchor's image size in grid units)",
        }
    )
)


def distance_l1_loss(
    pred: Tensor, target: Tensor, *, weight: Tensor | None = None, reduction: str = "sum"
) -> Tensor:
    """Ultralytics' box-distance loss for heads without DFL (``reg_max == 1``): the L1 of the
    (l, t, r, b) distances normalised by the image size, averaged over the 4 sides and
    weighted per anchor (``weight`` of shape ``(P,)``)."""
    loss = F.l1_loss(pred, target, reduction="none").mean(-1)
    if weight is not None:
        loss = loss * weight
    return loss.sum() if reduction == "sum" else loss.mean() if reduction == "mean" else loss


#: distribution loss of the box head: "dfl" (``reg_max > 1``) or "l1" (``reg_max == 1``);
#: chosen from the head, not by the user.
DFL_LOSSES: Mapping[str, LossSpec] = MappingProxyType(
    {
        "dfl": LossSpec(
            "dfl",
            "distribution_focal_loss",
            "distances",
            "distribution focal loss (GFL) on the (l, t, r, b) bins",
            owned=frozenset({"weight", "reduction", "normalizer"}),
            call_needs=frozenset({"weight", "reduction"}),
            provides=GFL_BRANCH,
        ),
        "l1": LossSpec(
            "l1",
            "",
            "distances",
            "L1 on the normalised distances (torch), for reg_max == 1",
            owned=frozenset({"weight", "reduction"}),
            func=distance_l1_loss,
        ),
    }
)


def options_table() -> list[dict[str, Any]]:
    """One row per loss name of this integration (see :func:`_table.describe`)."""
    return describe({"classification": CLASSIFICATION_LOSSES, "box": BOX_LOSSES, "dfl": DFL_LOSSES})


# --------------------------------------------------------------------------------------------
# the box + DFL part: a BboxLoss with the same call
# --------------------------------------------------------------------------------------------


class FocalkitBboxLoss(nn.Module):
    """Ultralytics' ``BboxLoss`` call (``forward(pred_dist, pred_bboxes, anchor_points,
    target_bboxes, target_scores, target_scores_sum, fg_mask, imgsz, stride) -> (box, dfl)``)
    with the box loss and the DFL from focalkit's tables."""

    def __init__(
        self,
        reg_max: int,
        box: str,
        box_options: dict[str, Any],
        dfl_options: dict[str, Any],
    ) -> None:
        super().__init__()
        self.reg_max = reg_max
        self.box_name = box
        self.dfl_name = "dfl" if reg_max > 1 else "l1"
        self.box_options = box_options
        self.dfl_options = dfl_options
        self.box_fn: Any = instantiate(self.box_spec, box_options)
        self.dfl_fn: Any = instantiate(self.dfl_spec, dfl_options)

    @property
    def box_spec(self) -> LossSpec:
        return BOX_LOSSES[self.box_name]

    @property
    def dfl_spec(self) -> LossSpec:
        return DFL_LOSSES[self.dfl_name]

    def extra_repr(self) -> str:
        return (
            f"box={self.box_name!r} {self.box_options}, dfl={self.dfl_name!r} "
            f"{self.dfl_options}, reg_max={self.reg_max}"
        )

    def forward(
        self,
        pred_dist: Tensor,
        pred_bboxes: Tensor,
        anchor_points: Tensor,
        target_bboxes: Tensor,
        target_scores: Tensor,
        target_scores_sum: Tensor,
        fg_mask: Tensor,
        imgsz: Tensor,
        stride: Tensor,
    ) -> tuple[Tensor, Tensor]:
        from ultralytics.utils.tal import bbox2dist

        b_idx, a_idx = fg_mask.nonzero(as_tuple=True)
        weight = target_scores[b_idx, a_idx].sum(-1)  # (P,)
        pred_fg, target_fg = pred_bboxes[b_idx, a_idx], target_bboxes[b_idx, a_idx]

        box_spec = self.box_spec
        if box_spec.module:
            loss_box = self.box_fn(pred_fg, target_fg, weight=weight)
        else:
            kwargs = {**box_spec.fixed, **self.box_options}
            if box_spec.targets == "boxes+size":
                kwargs["image_size"] = imgsz[None, :] / stride[a_idx]  # (P, 2): (H, W)
            loss_box = self.box_fn(pred_fg, target_fg, weight=weight, reduction="sum", **kwargs)
        loss_box = loss_box / target_scores_sum

        kwargs = {**self.dfl_spec.fixed, **self.dfl_options}
        if self.reg_max > 1:
            # Ultralytics' DFL target: distances clamped to [0, reg_max - 1.01]
            ltrb = bbox2dist(anchor_points, target_bboxes, self.reg_max - 1)
            ltrb = ltrb[b_idx, a_idx].clamp(0, self.reg_max - 1 - 0.01)
            logits = pred_dist[b_idx, a_idx].view(-1, 4, self.reg_max)
            side_weight = (weight[:, None] / 4).expand(-1, 4)  # the mean over the 4 sides
            loss_dfl = self.dfl_fn(logits, ltrb, weight=side_weight, reduction="sum", **kwargs)
        else:
            ltrb = bbox2dist(anchor_points, target_bboxes) * stride
            scale = torch.stack((imgsz[1], imgsz[0], imgsz[1], imgsz[0]))
            ltrb = ltrb / scale
            dist = pred_dist * stride / scale
            loss_dfl = self.dfl_fn(
                dist[b_idx, a_idx], ltrb[b_idx, a_idx], weight=weight, reduction="sum", **kwargs
            )
        return loss_box, loss_dfl / target_scores_sum


# --------------------------------------------------------------------------------------------
# DetectionLoss: a v8DetectionLoss subclass, built when ultralytics is first needed
# --------------------------------------------------------------------------------------------


def _hyperparameters(args: Any) -> Any:
    """``model.args`` as the namespace the criterion reads (``hyp.box``); a ``YOLO(...)``
    model built from a yaml holds a dict, filled here from Ultralytics' defaults."""
    if hasattr(args, "box") and hasattr(args, "cls") and hasattr(args, "dfl"):
        return args
    from ultralytics.cfg import get_cfg

    overrides = dict(args) if isinstance(args, Mapping) else {}
    overrides = {k: v for k, v in overrides.items() if k not in ("cfg",)}
    return get_cfg(overrides=overrides)


def _detection_loss_class() -> type:
    require_stack("ultralytics", "ultralytics", WHAT)
    loss_module = require_stack("ultralytics.utils.loss", "ultralytics", WHAT)
    from ultralytics.utils.tal import make_anchors

    class DetectionLoss(loss_module.v8DetectionLoss):  # type: ignore[name-defined]
        """A drop-in for ``ultralytics.utils.loss.v8DetectionLoss`` whose classification
        loss, box loss and DFL are focalkit's.

        Args:
            model: a de-paralleled ``DetectionModel`` (as for ``v8DetectionLoss``).
            classification: a name of ``CLASSIFICATION_LOSSES`` ("bce", "focal", "qfl",
                "vfl", "poly1_focal").
            box: a name of ``BOX_LOSSES`` (every focalkit IoU-family loss).
            tal_topk, tal_topk2: the task-aligned assigner's, as in ``v8DetectionLoss``.
            normalization: "model" (default: Ultralytics' division by the sum of the target
                scores) or "reduce_mean" (that sum averaged over the process group's ranks).
            **options: the chosen losses' options; ``cls_``, ``box_`` or ``dfl_`` in front
                of a name says which loss takes it when several do.
        """

        def __init__(
            self,
            model: Any,
            classification: str = "bce",
            box: str = "ciou",
            *,
            tal_topk: int = 10,
            tal_topk2: int | None = None,
            normalization: str = "model",
            **options: Any,
        ) -> None:
            model = _check_model(model)
            check_normalization(normalization, NORMALIZATIONS)
            reg_max = model.model[-1].reg_max
            cls_spec = build("classification", classification, CLASSIFICATION_LOSSES)
            box_spec = build("box", box, BOX_LOSSES)
            dfl_spec = build("dfl", "dfl" if reg_max > 1 else "l1", DFL_LOSSES)
            routed = split_options(
                {
                    "classification": ("cls_", cls_spec),
                    "box": ("box_", box_spec),
                    "dfl": ("dfl_", dfl_spec),
                },
                options,
            )
            super().__init__(model, tal_topk=tal_topk, tal_topk2=tal_topk2)
            self.hyp: Any = _hyperparameters(model.args)
            self.classification = classification
            self.box = box
            self.normalization = normalization
            self.cls_options = routed["classification"]
            self.cls_fn = instantiate(cls_spec, self.cls_options)
            self.bbox_loss = FocalkitBboxLoss(reg_max, box, routed["box"], routed["dfl"]).to(
                self.device
            )
            self.calls = 0  # how many batches this criterion computed (training-loop check)

        def __repr__(self) -> str:
            return (
                f"focalkit DetectionLoss(classification={self.classification!r} "
                f"{self.cls_options}, {self.bbox_loss.extra_repr()}, "
                f"normalization={self.normalization!r})"
            )

        def _classification(
            self,
            pred_scores: Tensor,
            target_labels: Tensor,
            target_scores: Tensor,
            fg_mask: Tensor,
        ) -> Tensor:
            spec = CLASSIFICATION_LOSSES[self.classification]
            kwargs = {**spec.fixed, **self.cls_options}
            weight = getattr(self, "class_weights", None)  # (1, 1, nc) or None
            if spec.targets == "dense":
                targets = target_scores.to(pred_scores.dtype)
            else:
                targets = torch.where(fg_mask, target_labels.long(), self.nc)
                kwargs["scores"] = target_scores.sum(-1)  # the positive's score; 0 elsewhere
            return self.cls_fn(pred_scores, targets, weight=weight, reduction="sum", **kwargs)

        def get_assigned_targets_and_loss(
            self, preds: dict[str, Tensor], batch: dict[str, Any], **assign_kwargs: Any
        ) -> tuple:
            """``v8DetectionLoss``'s assignment, then focalkit's losses; the same return."""
            self.calls += 1
            scores = preds["scores"].permute(0, 2, 1).contiguous()  # (B, A, nc)
            distri = preds["boxes"].permute(0, 2, 1).contiguous()  # (B, A, 4 reg_max)
            anchor_points, stride_tensor = make_anchors(preds["feats"], self.stride, 0.5)
            batch_size = scores.shape[0]
            imgsz = (
                torch.tensor(preds["feats"][0].shape[2:], device=self.device, dtype=scores.dtype)
                * self.stride[0]
            )  # (h, w)
            gt = torch.cat(
                (batch["batch_idx"].view(-1, 1), batch["cls"].view(-1, 1), batch["bboxes"]), 1
            )
            gt = self.preprocess(gt.to(self.device), batch_size, scale_tensor=imgsz[[1, 0, 1, 0]])
            gt_labels, gt_bboxes = gt.split((1, 4), 2)
            mask_gt = gt_bboxes.sum(2, keepdim=True).gt_(0.0)
            pred_bboxes = self.bbox_decode(anchor_points, distri)  # grid units, xyxy

            target_labels, target_bboxes, target_scores, fg_mask, target_gt_idx = self.assigner(
                scores.detach().sigmoid(),
                (pred_bboxes.detach() * stride_tensor).type(gt_bboxes.dtype),
                anchor_points * stride_tensor,
                gt_labels,
                gt_bboxes,
                mask_gt,
                **assign_kwargs,
            )
            if self.normalization == "reduce_mean":
                normalizer = reduce_mean(target_scores.sum()).clamp_(min=1)
            else:
                normalizer = target_scores.sum().clamp_(min=1)

            loss = torch.zeros(3, device=self.device)  # box, cls, dfl
            cls = self._classification(scores, target_labels, target_scores, fg_mask)
            loss[1] = cls / normalizer
            loss[0], loss[2] = self.bbox_loss(
                distri,
                pred_bboxes,
                anchor_points,
                target_bboxes / stride_tensor,
                target_scores,
                normalizer,
                fg_mask,
                imgsz,
                stride_tensor,
            )
            loss[0] *= self.hyp.box
            loss[1] *= self.hyp.cls
            loss[2] *= self.hyp.dfl
            # loss items as the installed v8DetectionLoss returns them: a dict by name where it
            # has loss_names (8.4.1xx and later), the detached tensor before
            names = getattr(self, "loss_names", None)
            items = loss.detach()
            return (
                (fg_mask, target_gt_idx, target_bboxes, anchor_points, stride_tensor),
                loss,
                items if names is None else dict(zip(names, items, strict=True)),
            )

    DetectionLoss.__module__ = __name__
    return DetectionLoss


def __getattr__(name: str) -> Any:
    """``DetectionLoss`` is built on first use, so that importing this module needs no
    ultralytics (and a missing one raises a clear ImportError only when it is used)."""
    if name == "DetectionLoss":
        cls = _detection_loss_class()
        globals()["DetectionLoss"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------
# models, YOLO objects and the trainer
# --------------------------------------------------------------------------------------------


def _check_model(model: object) -> Any:
    """The de-paralleled ``DetectionModel`` (TypeError for anything else)."""
    require_stack("ultralytics", "ultralytics", WHAT)
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.torch_utils import unwrap_model

    model = unwrap_model(model) if isinstance(model, nn.Module) else model
    if isinstance(model, DetectionModel) and (
        type(model).init_criterion is DetectionModel.init_criterion
    ):
        return model
    raise TypeError(
        f"expected an ultralytics DetectionModel (task='detect': YOLOv8, YOLO11, YOLO26) or a "
        f"YOLO object holding one, got {type(model).__module__}.{type(model).__qualname__}; "
        f"segmentation, pose, OBB and classification models compute other losses and are "
        f"not supported"
    )


def _criterion(
    model: Any, classification: str, box: str, normalization: str, options: dict[str, Any]
) -> Any:
    """The criterion ``model.init_criterion()`` would build, with focalkit's losses: a
    :class:`DetectionLoss`, or Ultralytics' ``E2ELoss`` over two of them for a YOLO26-style
    end-to-end head."""
    cls = __getattr__("DetectionLoss")
    make = functools.partial(
        cls, classification=classification, box=box, normalization=normalization, **options
    )
    if getattr(model.model[-1], "one2one_cv2", None) is not None:
        from ultralytics.utils.loss import E2ELoss

        return E2ELoss(model, loss_fn=make)
    return make(model)


class _InstallCallback:
    """``on_pretrain_routine_end``: the trainer has built its model (``model.args`` set) and
    its EMA copy; give both focalkit's criterion."""

    def __init__(
        self, classification: str, box: str, normalization: str, options: dict[str, Any]
    ) -> None:
        self.classification = classification
        self.box = box
        self.normalization = normalization
        self.options = options

    def __call__(self, trainer: Any) -> None:
        from ultralytics.utils.torch_utils import unwrap_model

        args = (self.classification, self.box, self.normalization, self.options)
        model = unwrap_model(trainer.model)
        model.criterion = _criterion(_check_model(model), *args)
        ema = getattr(getattr(trainer, "ema", None), "ema", None)
        if ema is not None:
            ema.criterion = _criterion(_check_model(ema), *args)

    def __repr__(self) -> str:
        return f"<focalkit losses: classification={self.classification!r}, box={self.box!r}>"


def callback(
    classification: str = "bce",
    box: str = "ciou",
    *,
    normalization: str = "model",
    **options: Any,
) -> Any:
    """The ``on_pretrain_routine_end`` callback :func:`set_losses` registers, for a trainer
    built by hand: ``trainer.add_callback("on_pretrain_routine_end", fk_yolo.callback(...))``."""
    return _InstallCallback(classification, box, normalization, options)


EVENT = "on_pretrain_routine_end"


def set_losses(
    yolo: Any,
    classification: str = "bce",
    box: str = "ciou",
    *,
    normalization: str = "model",
    **options: Any,
) -> Any:
    """Compute ``yolo``'s detection losses with focalkit.

    Args:
        yolo: an ``ultralytics.YOLO`` object (task "detect") or a ``DetectionModel``.
        classification, box, normalization, options: as for :class:`DetectionLoss`.

    A ``YOLO`` object gets the criterion on its model now and a callback so that
    ``yolo.train(...)`` uses focalkit for the model the trainer builds (and its EMA copy used
    for validation). A ``DetectionModel`` gets the criterion only; the trainer builds a new
    model, so train through the ``YOLO`` object (or register :func:`callback`). Calling it
    again replaces the losses; :func:`remove_losses` undoes it.

    Returns:
        The criterion set on the model.
    """
    require_stack("ultralytics", "ultralytics", WHAT)
    from ultralytics.engine.model import Model

    if isinstance(yolo, Model):
        if not isinstance(yolo.model, nn.Module):
            raise TypeError(f"the YOLO object holds no model yet ({yolo.model!r})")
        model = _check_model(yolo.model)
    else:
        model = _check_model(yolo)
    criterion = _criterion(model, classification, box, normalization, dict(options))
    model.criterion = criterion
    if isinstance(yolo, Model):
        remove_losses(yolo)
        model.criterion = criterion
        yolo.add_callback(EVENT, _InstallCallback(classification, box, normalization, options))
    return criterion


def remove_losses(yolo: Any) -> None:
    """Undo :func:`set_losses`: the model's criterion is rebuilt by Ultralytics on the next
    loss call, and a ``YOLO`` object's focalkit callback is removed."""
    from ultralytics.engine.model import Model

    model: Any = yolo.model if isinstance(yolo, Model) else yolo
    if hasattr(model, "criterion"):
        model.criterion = None
    if isinstance(yolo, Model):
        hooks = yolo.callbacks.get(EVENT, [])
        hooks[:] = [h for h in hooks if not isinstance(h, _InstallCallback)]
