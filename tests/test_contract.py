"""The contract every public loss keeps, checked once over one table (``LOSSES``).

Each row names a loss (function and Module), the keywords it has (``reduction``,
``weight``, ``normalizer``, ``backend`` and which backends), small valid problems in the
target forms that matter (``Form``) and its bad arguments. Every test below runs one property
over every row; test ids read ``<loss>-<form>-<variant>``. The per-family files
(``test_focal.py``, ``test_softmax_focal.py``, ``test_ghm.py``, ``test_box.py``) hold what
is specific to a family: check values, the float64 references, target semantics, GHM's
histogram and EMA, box geometry, chunk paths and precision.

Properties:

* the table itself: one row per public loss, its keywords those of the signatures;
* shape per reduction, and "mean" with ``normalizer``;
* Module equals function (also with the constructor's ``weight``); per-call ``weight`` and
  ``normalizer`` override the constructor's; ``weight`` is in ``state_dict``; tensor
  hyperparameters are buffers that follow ``.to(dtype)`` and ``.to(device)``;
* float64 ``gradcheck``; ``gradgradcheck`` where a loss supports double backward, else
  ``create_graph=True`` is refused with a RuntimeError;
* an empty input gives 0 connected to the graph ("mean"/"sum") or an empty tensor ("none");
* ``torch.compile(fullgraph=True)`` equals eager with ``backend="auto"``;
* CPU bfloat16 autocast: a float32 loss equal to the float32 call, the gradient in the
  input's dtype;
* a second backward through a retained graph;
* every CPU backend of the loss equals ``backend="torch"``;
* argument errors name the argument at the start of the message.
"""

from __future__ import annotations

import inspect
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from torch import Tensor, nn

import focalkit as fk
from _ghm_box_refs import ciou_alpha, random_boxes, torch_ciou_v
from _iou_family_refs import parts, wiou_factor
from conftest import (
    IGNORE,
    REDUCTIONS,
    TOL,
    assert_autocast_float32,
    assert_retained_graph_backward,
    make_gen,
    sigmoid_targets,
    softmax_problem,
    upstream,
    value_and_grad,
)
from focalkit.kernels.dispatch import LOSS_BACKENDS, recorded_choices

# --------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One call's arguments: ``input`` is the differentiated one (logits, pred, pred_boxes)."""

    input: Tensor
    target: Tensor
    none_shape: tuple[int, ...]  # the shape reduction="none" returns
    hyper: dict = field(default_factory=dict)  # function keywords the Module's constructor takes
    call: dict = field(default_factory=dict)  # function keywords the Module's forward takes


@dataclass(frozen=True)
class Form:
    """A target form (and hyperparameters) of a loss: ``build(gen, n, dtype)`` makes a problem
    of ``n`` rows (samples, anchors or boxes) with a floating input of ``dtype``."""

    name: str
    build: Callable[[torch.Generator, int, torch.dtype], Problem]
    compiled: bool = False  # checked under torch.compile (a few seconds: one or two per loss)
    empty: bool = True  # can be built with 0 rows
    refused_by: tuple[str, ...] = ()  # CPU backends without this form's options


@dataclass(frozen=True)
class BadShape:
    """A call with a wrong shape: ValueError whose message starts with ``name:``."""

    id: str
    name: str
    make: Callable[[Problem], tuple[Tensor, Tensor, dict]]  # (input, target, extra keywords)


@dataclass(frozen=True)
class Loss:
    """A row of the table: a public loss, the keywords it has, its forms and bad arguments."""

    name: str
    fn: Callable[..., Tensor]
    module: type[nn.Module]
    forms: tuple[Form, ...]  # forms[0] is the base problem of the error and Module tests
    input_name: str
    target_name: str
    dispatch: str | None  # its key in LOSS_BACKENDS; None: no backend keyword
    weight: Callable[[Problem, int], Tensor] | None  # weight(problem, draw), or no weight=
    bad_shapes: tuple[BadShape, ...]
    reduction: bool = True
    normalizer: bool = True
    module_extra: dict = field(default_factory=dict)  # Module keywords so that Module == function
    module_defaults_differ: frozenset[str] = frozenset()  # documented different defaults
    module_state: frozenset[str] = frozenset()  # function keywords the Module keeps as state
    tensor_hypers: tuple[str, ...] = ()  # ids of TENSOR_HYPERS the Module takes
    double_backward: str | None = None  # None: exact second derivatives; else the refusal
    freeze: Callable | None = None  # gradcheck: freeze the factors that are detached in backward

    @property
    def backends(self) -> tuple[str, ...]:
        """The CPU backends of the loss ("torch", then its CPU fast paths)."""
        if self.dispatch is None:
            return ()
        return ("torch", *sorted(b for b in LOSS_BACKENDS[self.dispatch] if b != "triton"))

    def variants(self) -> dict[str, dict]:
        """Reduction keywords: every reduction, and "mean" with a normalizer where the loss has
        one."""
        if not self.reduction:
            return {"mean": {}}
        out = {r: {"reduction": r} for r in REDUCTIONS}
        if self.normalizer:
            out["mean-normalizer"] = {"reduction": "mean", "normalizer": 3.0}
        return out

    @property
    def keeps_gradient(self) -> bool:
        """The loss forms its gradient in forward and scales it in backward (so it refuses
        double backward and must recompute the gradient for a retained graph)."""
        return self.double_backward is not None


def _bad(label: str, name: str, shape: Callable[[Problem], tuple[int, ...]]) -> BadShape:
    """``name=`` a tensor of ``shape(problem)`` (a weight, or GHM-C's ``valid`` mask)."""
    dtype = torch.bool if name == "valid" else torch.float32
    return BadShape(
        f"{name}-{label}",
        name,
        lambda p: (p.input, p.target, {name: torch.ones(shape(p), dtype=dtype)}),
    )


def _positive(shape: tuple[int, ...], draw: int, dtype: torch.dtype) -> Tensor:
    """Values in [0.5, 1.5) of ``shape``, different for each ``draw``."""
    gen = make_gen(1000 + draw)
    return torch.rand(shape, generator=gen, dtype=torch.float64).to(dtype) + 0.5


def _elementwise_weight(p: Problem, draw: int) -> Tensor:
    """A weight that broadcasts to the input's shape: the full shape (draw 0), the last
    dimension (draw 1) or all but the last (draw 2, a trailing 1)."""
    shape = tuple(p.input.shape)
    shapes = [shape, shape[-1:], (*shape[:-1], 1)]
    return _positive(shapes[draw % 3], draw, p.input.dtype)


# --- sigmoid focal loss ---------------------------------------------------------------------

C_SIGMOID = 3
ALPHA_SIGMOID = [0.25, 0.5, 0.75]  # float32-exact: a list and its float32 buffer agree


def _sigmoid(kind: str, **hyper) -> Callable[[torch.Generator, int, torch.dtype], Problem]:
    """(n, 3) logits, targets of ``kind`` (conftest.sigmoid_targets)."""

    def build(gen, n, dtype):
        logits = (torch.randn(n, C_SIGMOID, generator=gen, dtype=torch.float64) * 2).to(dtype)
        targets = sigmoid_targets(kind, max(n, 4), C_SIGMOID, gen)[:n]
        if targets.is_floating_point():
            targets = targets.to(dtype)
        return Problem(logits, targets, (n, C_SIGMOID), dict(hyper))

    return build


def _sigmoid_3d(gen, n, dtype):
    """(2, n, 3) logits with (2, n) class indices (3 = background), ignore_index -1,
    gamma 0.5."""
    logits = (torch.randn(2, n, C_SIGMOID, generator=gen, dtype=torch.float64) * 2).to(dtype)
    labels = sigmoid_targets("index", max(2 * n, 4), C_SIGMOID, gen)[: 2 * n].reshape(2, n)
    labels = torch.where(labels == IGNORE, -1, labels)
    hyper = {"ignore_index": -1, "gamma": 0.5, "alpha": torch.tensor(ALPHA_SIGMOID)}
    return Problem(logits, labels, (2, n, C_SIGMOID), hyper)


FOCAL_REFUSAL = (
    r"^focalkit focal losses are differentiable once: .*double backward \(create_graph=True\)"
)

SIGMOID = Loss(
    name="sigmoid_focal_loss",
    fn=fk.sigmoid_focal_loss,
    module=fk.SigmoidFocalLoss,
    forms=(
        Form("soft", _sigmoid("soft", alpha=torch.tensor(ALPHA_SIGMOID), gamma=2.0), compiled=True),
        Form("soft-gamma0.5", _sigmoid("soft", alpha=torch.tensor(ALPHA_SIGMOID), gamma=0.5)),
        Form("soft-no-alpha", _sigmoid("soft", alpha=None, gamma=0.5)),
        Form("soft-flsd53", _sigmoid("soft", alpha=ALPHA_SIGMOID, gamma="flsd53")),
        Form("binary", _sigmoid("binary", gamma=1.0)),  # alpha: the default (0.25)
        Form("int-dense", _sigmoid("int_dense", alpha=torch.tensor(ALPHA_SIGMOID), gamma=2.0)),
        Form("index", _sigmoid("index", alpha=ALPHA_SIGMOID, gamma=2.0), compiled=True),
        Form("index-3d-gamma0.5", _sigmoid_3d),
    ),
    input_name="logits",
    target_name="targets",
    dispatch="sigmoid_focal_loss",
    weight=_elementwise_weight,
    bad_shapes=(
        BadShape("targets-shape", "targets", lambda p: (p.input, p.target[:, :-1], {})),
        BadShape(
            "targets-index-rank",
            "targets",
            lambda p: (p.input, torch.zeros(p.input.shape[0], 1, dtype=torch.long), {}),
        ),
        _bad("larger", "weight", lambda p: (2, *p.input.shape)),
        _bad("larger-3d", "weight", lambda p: (3, 1, 1)),
        _bad("mismatched", "weight", lambda p: (p.input.shape[0] + 3, p.input.shape[1])),
    ),
    tensor_hypers=("weight", "normalizer", "alpha-tensor", "alpha-list", "gamma-tensor"),
    double_backward=FOCAL_REFUSAL,
)

# --- softmax focal loss ---------------------------------------------------------------------

C_SOFTMAX = 4
ALPHA_SOFTMAX = [0.25, 0.5, 0.75, 1.0]
LABEL_SMOOTHING = ("chunked",)  # the chunked backend: class indices without label smoothing


def _softmax(
    shape: Callable[[int], tuple[int, ...]], form: str, ignore_index: int = IGNORE, **hyper
) -> Callable[[torch.Generator, int, torch.dtype], Problem]:
    """Logits of ``shape(n)`` and targets of ``form`` (conftest.softmax_problem)."""

    def build(gen, n, dtype):
        logits, targets = softmax_problem(shape(n), form, gen, dtype=dtype)
        h = dict(hyper)
        if ignore_index != IGNORE:
            targets = torch.where(targets == IGNORE, ignore_index, targets)
            h["ignore_index"] = ignore_index
        s = logits.shape
        return Problem(logits, targets, () if len(s) == 1 else (s[0], *s[2:]), h)

    return build


SOFTMAX = Loss(
    name="softmax_focal_loss",
    fn=fk.softmax_focal_loss,
    module=fk.SoftmaxFocalLoss,
    forms=(
        Form("index", _softmax(lambda n: (n, C_SOFTMAX), "index", gamma=2.0), compiled=True),
        Form(
            "index-gamma0.5",
            _softmax(lambda n: (n, C_SOFTMAX), "index", alpha=0.5, gamma=0.5),
        ),
        Form(
            "index-flsd53",
            _softmax(
                lambda n: (n, C_SOFTMAX), "index", alpha=torch.tensor(ALPHA_SOFTMAX), gamma="flsd53"
            ),
        ),
        Form(
            "index-smoothed",
            _softmax(
                lambda n: (n, C_SOFTMAX),
                "index",
                ignore_index=-1,
                alpha=0.5,
                gamma=2.0,
                label_smoothing=0.1,
            ),
            refused_by=LABEL_SMOOTHING,
        ),
        Form(
            "prob",
            _softmax(lambda n: (n, C_SOFTMAX), "prob", gamma=2.0),
            refused_by=LABEL_SMOOTHING,
        ),
        Form(
            "prob-gamma0.5",
            _softmax(lambda n: (n, C_SOFTMAX), "prob", alpha=0.5, gamma=0.5),
            refused_by=LABEL_SMOOTHING,
        ),
        Form(
            "prob-smoothed",
            _softmax(lambda n: (n, C_SOFTMAX), "prob", alpha=0.5, gamma=2.0, label_smoothing=0.1),
            compiled=True,
            refused_by=LABEL_SMOOTHING,
        ),
        Form(
            "spatial-smoothed",
            _softmax(
                lambda n: (2, C_SOFTMAX, (n + 1) // 2),
                "index",
                ignore_index=-1,
                alpha=0.5,
                gamma=2.0,
                label_smoothing=0.2,
            ),
            refused_by=LABEL_SMOOTHING,
        ),
        Form(
            "single-flsd53",
            _softmax(lambda n: (C_SOFTMAX,), "index", alpha=0.5, gamma="flsd53"),
            empty=False,
        ),
    ),
    input_name="logits",
    target_name="targets",
    dispatch="softmax_focal_loss",
    weight=lambda p, draw: _positive((C_SOFTMAX,), draw, p.input.dtype),
    bad_shapes=(
        BadShape(
            "targets-index-length",
            "targets",
            lambda p: (p.input, torch.zeros(p.input.shape[0] + 1, dtype=torch.long), {}),
        ),
        BadShape(
            "targets-index-rank",
            "targets",
            lambda p: (p.input, torch.zeros(p.input.shape[0], 1, dtype=torch.long), {}),
        ),
        BadShape(
            "targets-prob-shape",
            "targets",
            lambda p: (p.input, torch.rand(p.input.shape[0], C_SOFTMAX + 1), {}),
        ),
        BadShape(
            "targets-float-index-shape",
            "targets",
            lambda p: (p.input, torch.zeros(p.input.shape[0]), {}),
        ),
        _bad("short", "weight", lambda p: (C_SOFTMAX - 1,)),
        _bad("long", "weight", lambda p: (C_SOFTMAX + 1,)),
        _bad("row", "weight", lambda p: (1, C_SOFTMAX)),
        _bad("matrix", "weight", lambda p: (2, C_SOFTMAX)),
    ),
    tensor_hypers=("weight", "normalizer", "alpha-tensor", "alpha-list", "gamma-tensor"),
    double_backward=FOCAL_REFUSAL,
)

# --- QFL, VFL: IoU-aware classification (the sigmoid family) ----------------------------------

C_IOU = 3


def _iou_aware(form: str, **hyper) -> Callable[[torch.Generator, int, torch.dtype], Problem]:
    """(n, 3) logits. "index": labels (3 = background, an ignored row, a class-0 row;
    conftest.sigmoid_targets) with their IoU ``scores`` in (0.05, 0.95) as a per-call keyword
    (only the positive rows' are read); "dense": IoU targets (zeros, positives in (0.6, 1),
    one entry at ignore_index)."""

    def build(gen, n, dtype):
        logits = (torch.randn(n, C_IOU, generator=gen, dtype=torch.float64) * 2).to(dtype)
        if form == "index":
            labels = sigmoid_targets("index", max(n, 4), C_IOU, gen)[:n]
            scores = torch.rand(max(n, 4), generator=gen, dtype=torch.float64)[:n] * 0.9 + 0.05
            return Problem(logits, labels, (n, C_IOU), dict(hyper), {"scores": scores.to(dtype)})
        q = torch.rand(max(n, 4), C_IOU, generator=gen, dtype=torch.float64)[:n]
        q = torch.where(q > 0.6, q, 0.0)
        if n > 1:
            q[1, 0] = IGNORE
        return Problem(logits, q.to(dtype), (n, C_IOU), dict(hyper))

    return build


def _iou_aware_bad_shapes() -> tuple[BadShape, ...]:
    """QFL's and VFL's: the scores (missing with indices, given with dense targets, of a wrong
    shape, outside [0, 1] at a positive row), the targets' shape, the weight's."""

    def dense_with_scores(p: Problem) -> tuple[Tensor, Tensor, dict]:
        return p.input, torch.zeros(p.input.shape, dtype=p.input.dtype), {}

    return (
        BadShape("scores-missing", "scores", lambda p: (p.input, p.target, {"scores": None})),
        BadShape("scores-with-dense-targets", "scores", dense_with_scores),
        BadShape(
            "scores-shape",
            "scores",
            lambda p: (p.input, p.target, {"scores": p.call["scores"].unsqueeze(-1)}),
        ),
        BadShape(
            "scores-above-one",
            "scores",
            lambda p: (p.input, torch.zeros_like(p.target), {"scores": p.call["scores"] + 1}),
        ),
        BadShape("targets-shape", "targets", lambda p: (p.input, p.target[1:], {})),
        _bad("larger", "weight", lambda p: (2, *p.input.shape)),
        _bad("mismatched", "weight", lambda p: (p.input.shape[0] + 3, p.input.shape[1])),
    )


QFL = Loss(
    name="quality_focal_loss",
    fn=fk.quality_focal_loss,
    module=fk.QualityFocalLoss,
    forms=(
        Form("index", _iou_aware("index", beta=2.0), compiled=True),
        Form("index-beta0.5", _iou_aware("index", beta=0.5)),
        Form("dense", _iou_aware("dense", beta=2.0), compiled=True),
        Form("dense-beta0", _iou_aware("dense", beta=0.0)),
    ),
    input_name="logits",
    target_name="targets",
    dispatch="quality_focal_loss",
    weight=_elementwise_weight,
    bad_shapes=(
        *_iou_aware_bad_shapes(),
        BadShape("beta-negative", "beta", lambda p: (p.input, p.target, {"beta": -0.5})),
    ),
    tensor_hypers=("weight", "normalizer"),
    double_backward=FOCAL_REFUSAL,
)

VFL = Loss(
    name="varifocal_loss",
    fn=fk.varifocal_loss,
    module=fk.VarifocalLoss,
    forms=(
        Form("index", _iou_aware("index", alpha=0.75, gamma=2.0), compiled=True),
        Form("index-unweighted", _iou_aware("index", gamma=0.5, iou_weighted=False)),
        Form("dense", _iou_aware("dense", alpha=0.5, gamma=2.0), compiled=True),
        Form("dense-gamma0", _iou_aware("dense", alpha=1.0, gamma=0.0, iou_weighted=False)),
    ),
    input_name="logits",
    target_name="targets",
    dispatch="varifocal_loss",
    weight=_elementwise_weight,
    bad_shapes=(
        *_iou_aware_bad_shapes(),
        BadShape("alpha-negative", "alpha", lambda p: (p.input, p.target, {"alpha": -0.1})),
        BadShape("gamma-negative", "gamma", lambda p: (p.input, p.target, {"gamma": -1.0})),
    ),
    tensor_hypers=("weight", "normalizer"),
    double_backward=FOCAL_REFUSAL,
)

# --- DFL ------------------------------------------------------------------------------------


def _dfl(shape: Callable[[int], tuple[int, ...]], bins: int):
    """Logits of ``shape(n) + (bins,)`` and distances in [0, bins - 1] (integer ones, 0 and
    the top bin among them)."""

    def build(gen, n, dtype):
        s = shape(n)
        pred = (torch.randn(*s, bins, generator=gen, dtype=torch.float64) * 2).to(dtype)
        top = bins - 1
        y = torch.rand(s, generator=gen, dtype=torch.float64) * top
        flat = y.view(-1)
        flat[::3] = flat[::3].floor()
        flat[1::4] = float(top)
        return Problem(pred, y.to(dtype), s)

    return build


def _dfl_weight(p: Problem, draw: int) -> Tensor:
    """Per side (draw 0) or per box, trailing 1 (draw 1)."""
    shapes = [p.none_shape, (*p.none_shape[:-1], 1)]
    return _positive(shapes[draw % 2], draw, p.input.dtype)


DFL = Loss(
    name="distribution_focal_loss",
    fn=fk.distribution_focal_loss,
    module=fk.DistributionFocalLoss,
    forms=(
        Form("box", _dfl(lambda n: (n, 4), 9), compiled=True),
        Form("flat-17", _dfl(lambda n: (n,), 17)),
    ),
    input_name="pred",
    target_name="targets",
    dispatch="distribution_focal_loss",
    weight=_dfl_weight,
    bad_shapes=(
        BadShape("targets-shape", "targets", lambda p: (p.input, p.target[1:], {})),
        BadShape(
            "targets-above-n", "targets", lambda p: (p.input, p.target + p.input.shape[-1], {})
        ),
        BadShape("targets-negative", "targets", lambda p: (p.input, p.target - 100.0, {})),
        BadShape("pred-one-bin", "pred", lambda p: (p.input[..., :1], p.target.clamp(max=0), {})),
        _bad("larger", "weight", lambda p: (2, *p.none_shape)),
        _bad("per-bin", "weight", lambda p: p.input.shape),
    ),
    tensor_hypers=("weight", "normalizer"),
    double_backward=r"^focalkit generalized focal losses are differentiable once: .*double "
    r"backward \(create_graph=True\)",
)

# --- ASL ------------------------------------------------------------------------------------

ASL = Loss(
    name="asymmetric_loss",
    fn=fk.asymmetric_loss,
    module=fk.AsymmetricLoss,
    forms=(
        Form("binary", _sigmoid("binary"), compiled=True),
        Form("soft-clip0.1", _sigmoid("soft", gamma_pos=0.0, clip=0.1)),
        Form("int-dense-gamma0.5", _sigmoid("int_dense", gamma_pos=0.5, gamma_neg=0.5)),
        Form("index-clip0", _sigmoid("index", clip=0.0), compiled=True),
    ),
    input_name="logits",
    target_name="targets",
    dispatch="asymmetric_loss",
    weight=_elementwise_weight,
    bad_shapes=(
        BadShape("targets-shape", "targets", lambda p: (p.input, p.target.t(), {})),
        BadShape("targets-above-one", "targets", lambda p: (p.input, p.target + 1.5, {})),
        BadShape("clip-one", "clip", lambda p: (p.input, p.target, {"clip": 1.0})),
        BadShape("clip-negative", "clip", lambda p: (p.input, p.target, {"clip": -0.05})),
        BadShape(
            "gamma_neg-negative", "gamma_neg", lambda p: (p.input, p.target, {"gamma_neg": -1.0})
        ),
        BadShape(
            "gamma_pos-negative", "gamma_pos", lambda p: (p.input, p.target, {"gamma_pos": -1.0})
        ),
        _bad("larger", "weight", lambda p: (2, *p.input.shape)),
    ),
    tensor_hypers=("weight", "normalizer"),
    double_backward=FOCAL_REFUSAL,
)

# --- Poly-1 ---------------------------------------------------------------------------------

POLY1_CE = Loss(
    name="poly1_cross_entropy",
    fn=fk.poly1_cross_entropy,
    module=fk.Poly1CrossEntropyLoss,
    forms=(
        Form("index", _softmax(lambda n: (n, C_SOFTMAX), "index", epsilon=1.0), compiled=True),
        Form("index-eps-1", _softmax(lambda n: (n, C_SOFTMAX), "index", epsilon=-1.0)),
        Form(
            "index-smoothed",
            _softmax(
                lambda n: (n, C_SOFTMAX), "index", ignore_index=-1, epsilon=2.0, label_smoothing=0.1
            ),
            refused_by=LABEL_SMOOTHING,
        ),
        Form(
            "prob",
            _softmax(lambda n: (n, C_SOFTMAX), "prob", epsilon=1.0),
            compiled=True,
            refused_by=LABEL_SMOOTHING,
        ),
        Form(
            "spatial",
            _softmax(lambda n: (2, C_SOFTMAX, (n + 1) // 2), "index", epsilon=0.5),
        ),
        Form("single", _softmax(lambda n: (C_SOFTMAX,), "index", epsilon=1.0), empty=False),
    ),
    input_name="logits",
    target_name="targets",
    dispatch="poly1_cross_entropy",
    weight=lambda p, draw: _positive((C_SOFTMAX,), draw, p.input.dtype),
    normalizer=False,  # F.cross_entropy's signature
    bad_shapes=(
        BadShape(
            "targets-index-length",
            "targets",
            lambda p: (p.input, torch.zeros(p.input.shape[0] + 1, dtype=torch.long), {}),
        ),
        BadShape(
            "targets-prob-shape",
            "targets",
            lambda p: (p.input, torch.rand(p.input.shape[0], C_SOFTMAX + 1), {}),
        ),
        BadShape(
            "epsilon-below-minus-one", "epsilon", lambda p: (p.input, p.target, {"epsilon": -1.5})
        ),
        _bad("short", "weight", lambda p: (C_SOFTMAX - 1,)),
        _bad("matrix", "weight", lambda p: (2, C_SOFTMAX)),
    ),
    tensor_hypers=("weight",),
    double_backward=FOCAL_REFUSAL,
)

POLY1_FOCAL = Loss(
    name="poly1_focal_loss",
    fn=fk.poly1_focal_loss,
    module=fk.Poly1FocalLoss,
    forms=(
        Form(
            "soft", _sigmoid("soft", alpha=torch.tensor(ALPHA_SIGMOID), epsilon=1.0), compiled=True
        ),
        Form("binary-eps-1", _sigmoid("binary", epsilon=-1.0, gamma=0.5)),
        Form("index", _sigmoid("index", epsilon=2.0, alpha=None), compiled=True),
        Form("int-dense", _sigmoid("int_dense", gamma=0.0)),
    ),
    input_name="logits",
    target_name="targets",
    dispatch="poly1_focal_loss",
    weight=_elementwise_weight,
    bad_shapes=(
        BadShape("targets-shape", "targets", lambda p: (p.input, p.target.t(), {})),
        BadShape("gamma-negative", "gamma", lambda p: (p.input, p.target, {"gamma": -1.0})),
        BadShape("alpha-above-one", "alpha", lambda p: (p.input, p.target, {"alpha": 1.5})),
        _bad("larger", "weight", lambda p: (2, *p.input.shape)),
    ),
    tensor_hypers=("weight", "normalizer", "alpha-tensor", "alpha-list"),
    double_backward=FOCAL_REFUSAL,
)

# --- GHM-C ----------------------------------------------------------------------------------

C_GHM = 4


def _ghm_c(kind: str, valid: bool = False, **hyper):
    """(n, 4) logits (spread 3); targets: "binary" or "soft" floats, "index" labels (4 =
    background, an ignored row) or "int-dense" 0/1 with ignore_index 255 entries."""

    def build(gen, n, dtype):
        shape = (n, C_GHM)
        logits = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3).to(dtype)
        h = dict(hyper)
        if kind == "binary":
            targets = (torch.rand(shape, generator=gen) < 0.3).to(dtype)
        elif kind == "soft":
            targets = torch.rand(shape, generator=gen, dtype=torch.float64).to(dtype)
        elif kind == "index":
            targets = sigmoid_targets("index", max(n, 4), C_GHM, gen)[:n]
        else:
            targets = sigmoid_targets("int_dense", max(n, 4), C_GHM, gen)[:n]
            targets = torch.where(targets == IGNORE, 255, targets)
            h["ignore_index"] = 255
        call = {"valid": torch.rand(shape, generator=gen) < 0.8} if valid else {}
        return Problem(logits, targets, shape, h, call)

    return build


GHM_C = Loss(
    name="ghm_c_loss",
    fn=fk.ghm_c_loss,
    module=fk.GHMCLoss,
    forms=(
        Form("binary-valid", _ghm_c("binary", valid=True, bins=5)),
        Form("soft", _ghm_c("soft", bins=5)),
        Form("index", _ghm_c("index", bins=30), compiled=True),
        Form("int-dense-valid", _ghm_c("int-dense", valid=True, bins=7)),
    ),
    input_name="logits",
    target_name="targets",
    dispatch="ghm_c_loss",
    weight=None,
    normalizer=False,
    bad_shapes=(
        BadShape("targets-shape", "targets", lambda p: (p.input, p.target.t(), {})),
        _bad("mismatched", "valid", lambda p: (p.input.shape[0] + 1,)),
        _bad("larger", "valid", lambda p: (2, *p.input.shape)),
    ),
    module_extra={"momentum": 0.0},  # no EMA: the Module's weights are the batch's own
    module_defaults_differ=frozenset({"bins"}),  # the Module takes the paper's 30
    tensor_hypers=("state",),
    double_backward=r"^focalkit GHM-C losses are differentiable once: .*double backward "
    r"\(create_graph=True\)",
)

# --- GHM-R ----------------------------------------------------------------------------------


def _ghm_r(shape: Callable[[int], tuple[int, ...]], spread: float, zero_target: bool, **hyper):
    def build(gen, n, dtype):
        s = shape(n)
        pred = (torch.randn(s, generator=gen, dtype=torch.float64) * spread).to(dtype)
        if zero_target:
            target = torch.zeros(s, dtype=dtype)
        else:
            target = (torch.randn(s, generator=gen, dtype=torch.float64) * spread).to(dtype)
        return Problem(pred, target, (), dict(hyper))

    return build


def _label_weight(p: Problem, draw: int) -> Tensor:
    """GHM-R label weights, about a fifth of them 0 (those count in no bin): 0/1 per row
    (shape (n, 1), draw 0), or fractional of the input's shape."""
    shape = tuple(p.input.shape)
    if draw % 2 == 0 and len(shape) > 1:
        shape = (*shape[:-1], 1)
    keep = torch.rand(shape, generator=make_gen(2000 + draw)) < 0.8
    if draw % 2 == 0:
        return keep.to(p.input.dtype)
    return (_positive(shape, draw, torch.float64) * keep).to(p.input.dtype)


GHM_R = Loss(
    name="ghm_r_loss",
    fn=fk.ghm_r_loss,
    module=fk.GHMRLoss,
    forms=(
        Form("deltas", _ghm_r(lambda n: (n, 4), 0.2, True, mu=0.02, bins=10), compiled=True),
        Form("vector", _ghm_r(lambda n: (n,), 0.3, False, mu=0.05, bins=5)),
    ),
    input_name="pred",
    target_name="target",
    dispatch="ghm_r_loss",
    weight=_label_weight,
    reduction=False,
    normalizer=False,
    bad_shapes=(
        BadShape(
            "target-shape",
            "target",
            lambda p: (p.input, torch.zeros(p.input.shape[0] + 1, *p.input.shape[1:]), {}),
        ),
        _bad("short", "weight", lambda p: (2,)),
        _bad("larger", "weight", lambda p: (2, *p.input.shape)),
        _bad("mismatched", "weight", lambda p: (p.input.shape[0] + 1, 1)),
    ),
    module_extra={"momentum": 0.0},
    tensor_hypers=("weight", "state"),
)

# --- the IoU family -------------------------------------------------------------------------


def _boxes(fmt: str, batched: bool = False, **hyper) -> Callable[..., Problem]:
    """``n`` target boxes (``2 n`` in a (2, n, 4) batch) of sizes >= 1 in ``fmt``, and
    predictions within 0.2 of them per coordinate (every pair overlaps: IoU > 0)."""

    def build(gen, n, dtype):
        rows = 2 * n if batched else n
        target = random_boxes(rows, gen, min_size=1.0)
        pred = target + (torch.rand(rows, 4, generator=gen, dtype=torch.float64) - 0.5) * 0.4
        shape = (2, n, 4) if batched else (n, 4)

        def as_fmt(boxes: Tensor) -> Tensor:
            return fk.box_convert(boxes, "xyxy", fmt).reshape(shape).to(dtype)

        return Problem(as_fmt(pred), as_fmt(target), shape[:-1], {"box_format": fmt, **hyper})

    return build


def _as_xyxy(boxes: Tensor, kw: dict) -> Tensor:
    return fk.box_convert(boxes, kw.get("box_format", "xyxy"), "xyxy")


def _reduce_as_the_loss(per_box: Tensor, kw: dict) -> Tensor:
    """``per_box`` weighted and reduced as the losses reduce theirs (focalkit._reduce)."""
    if kw.get("weight") is not None:
        per_box = per_box * kw["weight"]
    reduction = kw.get("reduction", "mean")
    if reduction == "none":
        return per_box
    if reduction == "sum":
        return per_box.sum()
    if kw.get("normalizer") is not None:
        return per_box.sum() / max(float(kw["normalizer"]), 1.0)
    return per_box.sum() / per_box.numel()


def _freeze_ciou(fn, p0: Tensor, target: Tensor, kw: dict) -> Callable[[Tensor], Tensor]:
    """CIoU's trade-off ``a`` is a constant in backward. Adding ``(a0 - a) v`` (``a`` computed
    from the detached input, reduced like the loss) turns the function gradcheck
    differentiates numerically into the one autograd differentiates: ``a`` frozen at ``a0``."""
    t = _as_xyxy(target, kw).reshape(-1, 4).tolist()

    def trade_off(p: Tensor) -> Tensor:
        q = _as_xyxy(p.detach(), kw).reshape(-1, 4).tolist()
        a = [ciou_alpha(b, c) for b, c in zip(q, t, strict=True)]
        return torch.tensor(a, dtype=p.dtype).reshape(p.shape[:-1])

    a0 = trade_off(p0)

    def f(p: Tensor) -> Tensor:
        v = torch_ciou_v(_as_xyxy(p, kw), _as_xyxy(target, kw))
        return fn(p, target, **kw) + _reduce_as_the_loss((a0 - trade_off(p)) * v, kw)

    return f


def _freeze_focal_eiou(fn, p0: Tensor, target: Tensor, kw: dict) -> Callable[[Tensor], Tensor]:
    """Focal-EIoU's factor ``IoU^gamma`` is detached. A weight ``(IoU0 / IoU)^gamma`` (from
    the detached input) makes the factor ``IoU0^gamma``, frozen at ``p0``."""
    gamma = kw.get("gamma", 0.5)
    iou_kw = {"box_format": kw.get("box_format", "xyxy"), "reduction": "none"}
    iou0 = 1 - fk.iou_loss(p0.detach(), target, **iou_kw)

    def f(p: Tensor) -> Tensor:
        factor = (iou0 / (1 - fk.iou_loss(p.detach(), target, **iou_kw))) ** gamma
        w = kw.get("weight")
        return fn(p, target, **{**kw, "weight": factor if w is None else factor * w})

    return f


def _box_loss(
    fn,
    module,
    forms=(),
    freeze=None,
    compile_batched=False,
    common: dict | None = None,
    state: tuple[str, ...] = (),
    **extra,
) -> Loss:
    """A row of the IoU family: the three box formats (with the ``common`` keywords, e.g. a
    required ``image_size``), plus ``forms``."""
    common = common or {}
    return Loss(
        name=fn.__name__,
        fn=fn,
        module=module,
        forms=(
            Form("xyxy", _boxes("xyxy", **common), compiled=True),
            Form("xywh", _boxes("xywh", **common)),
            Form(
                "cxcywh-batched",
                _boxes("cxcywh", batched=True, **common),
                compiled=compile_batched,
            ),
            *forms,
        ),
        input_name="pred_boxes",
        target_name="target_boxes",
        dispatch="box_loss",
        weight=lambda p, draw: _positive(p.none_shape, draw, p.input.dtype),
        bad_shapes=(
            BadShape(
                "pred_boxes-shape",
                "pred_boxes",
                lambda p: (torch.zeros(p.input.shape[0], 5), torch.zeros(p.input.shape[0], 5), {}),
            ),
            BadShape("target_boxes-shape", "target_boxes", lambda p: (p.input, p.target[1:], {})),
            _bad("per-coordinate", "weight", lambda p: p.input.shape),
            _bad("larger", "weight", lambda p: (2, *p.none_shape)),
            BadShape(
                "weight-per-coordinate-batched",
                "weight",
                lambda p: (
                    p.input.expand(3, *p.input.shape),
                    p.target.expand(3, *p.target.shape),
                    {"weight": torch.ones(3, *p.input.shape)},
                ),
            ),
        ),
        tensor_hypers=("weight", "normalizer", *state),
        freeze=freeze,
        **extra,
    )


IOU = _box_loss(fk.iou_loss, fk.IoULoss, forms=(Form("log", _boxes("xyxy", mode="log")),))
GIOU = _box_loss(
    fk.giou_loss,
    fk.GIoULoss,
    forms=(  # the modifiers (no factor of theirs is detached with GIoU)
        Form("xyxy-power3", _boxes("xyxy", power=3.0)),
        Form("xywh-inner-focaler", _boxes("xywh", inner_ratio=0.7, focaler=(0.0, 0.95))),
    ),
    compile_batched=True,
)
DIOU = _box_loss(fk.diou_loss, fk.DIoULoss)
CIOU = _box_loss(fk.ciou_loss, fk.CIoULoss, freeze=_freeze_ciou)
EIOU = _box_loss(fk.eiou_loss, fk.EIoULoss)
FOCAL_EIOU = _box_loss(
    fk.focal_eiou_loss,
    fk.FocalEIoULoss,
    forms=(
        Form("xywh-gamma1.5", _boxes("xywh", gamma=1.5)),
        Form("xyxy-gamma0", _boxes("xyxy", gamma=0.0)),
    ),
    freeze=_freeze_focal_eiou,
)

SIOU = _box_loss(
    fk.siou_loss,
    fk.SIoULoss,
    forms=(
        Form("xyxy-mmdet-sign", _boxes("xyxy", paper_sign=False, clamp=True)),
        Form("xywh-inner-theta2", _boxes("xywh", inner_ratio=1.3, theta=2.0)),
    ),
)
MPDIOU = _box_loss(
    fk.mpdiou_loss,
    fk.MPDIoULoss,
    forms=(Form("xyxy-focaler", _boxes("xyxy", image_size=(12.0, 16.0), focaler=(0.2, 0.8))),),
    common={"image_size": (24.0, 32.0)},
)
SHAPE_IOU = _box_loss(
    fk.shape_iou_loss,
    fk.ShapeIoULoss,
    forms=(Form("xyxy-scale1", _boxes("xyxy", scale=1.0)),),
)


def _freeze_wiou(fn, p0: Tensor, target: Tensor, kw: dict) -> Callable[[Tensor], Tensor]:
    """Wise-IoU ``L = f(L_IoU*) exp(rho^2 / c^2*) L_IoU``: its focusing factor ``f`` and the
    enclosing box's ``c^2`` are detached. A weight ``f0 / f(p*) exp(rho^2 (1 / c0^2 -
    1 / c^2(p*)))`` (``*``: from the detached input, ``0``: at ``p0``; ``rho^2``
    differentiated) turns the loss into ``f0 exp(rho^2 / c0^2) L_IoU``, whose derivatives of
    every order autograd and gradcheck agree on."""
    version, mean = kw.get("version", 3), kw.get("iou_mean", 1.0)
    t = _as_xyxy(target, kw).reshape(-1, 4)

    def geometry(p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q = _as_xyxy(p, kw).reshape(-1, 4)
        rho2 = 0.25 * (
            (q[:, 0] + q[:, 2] - t[:, 0] - t[:, 2]) ** 2
            + (q[:, 1] + q[:, 3] - t[:, 1] - t[:, 3]) ** 2
        )
        cw = torch.maximum(q[:, 2], t[:, 2]) - torch.minimum(q[:, 0], t[:, 0])
        ch = torch.maximum(q[:, 3], t[:, 3]) - torch.minimum(q[:, 1], t[:, 1])
        rows = zip(q.detach().tolist(), t.tolist(), strict=True)
        factor = [wiou_factor(1 - parts(b, c)["iou"], mean, version) for b, c in rows]
        return rho2, (cw * cw + ch * ch).detach(), torch.tensor(factor, dtype=p.dtype)

    _, c0, f0 = geometry(p0.detach())

    def f(p: Tensor) -> Tensor:
        rho2, c2, factor = geometry(p)
        eps = kw.get("eps", 1e-7)
        w = f0 / factor * torch.exp(rho2 * (1 / (c0 + eps) - 1 / (c2 + eps)))
        w = w.reshape(p.shape[:-1])
        if kw.get("weight") is not None:
            w = w * kw["weight"]
        return fn(p, target, **{**kw, "weight": w})

    return f


WIOU = _box_loss(
    fk.wiou_loss,
    fk.WIoULoss,
    forms=(Form("xyxy-v1", _boxes("xyxy", version=1)), Form("xywh-v2", _boxes("xywh", version=2))),
    freeze=_freeze_wiou,
    state=("wiou-state",),  # the Module's running mean is a float64 buffer
    module_extra={"momentum": 0.0},  # the running mean stays 1.0, the function's iou_mean
    module_state=frozenset({"iou_mean"}),
)

# --- FocalL1 --------------------------------------------------------------------------------


def _focal_l1(shape: Callable[[int], tuple[int, ...]], spread: float, **hyper):
    def build(gen, n, dtype):
        s = shape(n)
        pred = (torch.randn(s, generator=gen, dtype=torch.float64) * spread).to(dtype)
        target = torch.randn(s, generator=gen, dtype=torch.float64).to(dtype)
        return Problem(pred, target, s, dict(hyper))

    return build


FOCAL_L1 = Loss(
    name="focal_l1_loss",
    fn=fk.focal_l1_loss,
    module=fk.FocalL1Loss,
    forms=(
        Form("default", _focal_l1(lambda n: (n, 4), 1.0), compiled=True),
        Form("alpha2-beta0.5", _focal_l1(lambda n: (n,), 1.5, alpha=2.0, beta=0.5)),
    ),
    input_name="pred",
    target_name="target",
    dispatch=None,  # no backend keyword: FocalL1 is the plain formula (LOSS_BACKENDS: none)
    weight=_elementwise_weight,
    bad_shapes=(
        BadShape(
            "target-shape",
            "target",
            lambda p: (p.input, torch.zeros(p.input.shape[0] + 1, *p.input.shape[1:]), {}),
        ),
        _bad("larger", "weight", lambda p: (2, *p.input.shape)),
        _bad("larger-3d", "weight", lambda p: (3, 1, 1)),
        _bad("mismatched", "weight", lambda p: (p.input.shape[0] + 3, *p.input.shape[1:])),
    ),
    tensor_hypers=("weight", "normalizer"),
)

LOSSES: tuple[Loss, ...] = (
    SIGMOID,
    SOFTMAX,
    QFL,
    VFL,
    DFL,
    ASL,
    POLY1_CE,
    POLY1_FOCAL,
    GHM_C,
    GHM_R,
    IOU,
    GIOU,
    DIOU,
    CIOU,
    EIOU,
    FOCAL_EIOU,
    SIOU,
    MPDIOU,
    SHAPE_IOU,
    WIOU,
    FOCAL_L1,
)
BY_NAME = {loss.name: loss for loss in LOSSES}

# --------------------------------------------------------------------------------------------
# building calls
# --------------------------------------------------------------------------------------------

F32_TOL = TOL[torch.float32]
GRADCHECK = {"eps": 1e-6, "atol": 1e-7, "rtol": 1e-5}
COMPILE_TOL = {"rtol": 1e-5, "atol": 1e-7}


def lookup(name: str, form: str | None = None) -> tuple[Loss, Form]:
    loss = BY_NAME[name]
    forms = {f.name: f for f in loss.forms}
    return loss, forms[form] if form is not None else loss.forms[0]


def problem(loss: Loss, form: Form, n: int = 5, dtype: torch.dtype = torch.float32) -> Problem:
    """The problem of ``form`` with ``n`` rows; the same values in every process."""
    seed = zlib.crc32(f"{loss.name}/{form.name}".encode())
    return form.build(make_gen(seed), n, dtype)


def weight_of(loss: Loss, p: Problem, draw: int = 0) -> Tensor:
    """A valid ``weight`` for ``p`` (a different one per ``draw``)."""
    return loss.weight(p, draw)


def weights(loss: Loss, p: Problem) -> list[dict]:
    """The weight keywords to try: none, and a weight where the loss has one."""
    return [{}] if loss.weight is None else [{}, {"weight": weight_of(loss, p)}]


def call_kw(p: Problem, *parts: dict, **extra) -> dict:
    """The function's keywords for ``p`` (hyperparameters, per-call arguments), then ``parts``
    and ``extra`` (later ones win)."""
    out = {**p.hyper, **p.call}
    for part in parts:
        out.update(part)
    out.update(extra)
    return out


def module_of(loss: Loss, p: Problem, *parts: dict, **extra) -> nn.Module:
    """The Module with ``p``'s hyperparameters, then ``parts`` and ``extra``."""
    kw = {**p.hyper, **loss.module_extra}
    for part in parts:
        kw.update(part)
    kw.update(extra)
    return loss.module(**kw)


def frozen(loss: Loss, p: Problem, kw: dict) -> Callable[[Tensor], Tensor]:
    """``loss.fn`` of the input alone, with the detached factors frozen at ``p.input``."""
    if loss.freeze is not None:
        return loss.freeze(loss.fn, p.input, p.target, kw)
    return lambda x: loss.fn(x, p.target, **kw)


def form_cases(when: Callable[[Loss, Form], bool] = lambda loss, form: True) -> list:
    return [
        pytest.param(loss.name, form.name, id=f"{loss.name}-{form.name}")
        for loss in LOSSES
        for form in loss.forms
        if when(loss, form)
    ]


def variant_cases(when: Callable[[Loss, Form], bool] = lambda loss, form: True) -> list:
    return [
        pytest.param(loss.name, form.name, variant, id=f"{loss.name}-{form.name}-{variant}")
        for loss in LOSSES
        for form in loss.forms
        for variant in loss.variants()
        if when(loss, form)
    ]


@pytest.fixture(autouse=True, scope="module")
def one_intra_op_thread():
    """The problems are tiny: one intra-op thread. (With more, an op that opens a parallel
    region, softmax for one, can wait milliseconds for a descheduled thread on a busy
    machine, e.g. two xdist workers on two cores.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# the table itself
# --------------------------------------------------------------------------------------------


def test_the_table_has_one_row_per_public_loss():
    functions = {
        name for name in fk.__all__ if name.endswith("_loss") or name == "poly1_cross_entropy"
    }
    modules = {
        name
        for name in fk.__all__
        if isinstance(getattr(fk, name), type) and issubclass(getattr(fk, name), nn.Module)
    }
    assert sorted(loss.fn.__name__ for loss in LOSSES) == sorted(functions)
    assert sorted(loss.module.__name__ for loss in LOSSES) == sorted(modules)
    assert len(BY_NAME) == len(LOSSES)


@pytest.mark.parametrize("name", list(BY_NAME))
def test_the_row_declares_the_keywords_of_the_signatures(name):
    """The row's keywords are the function's and the Module's; the Module mirrors the
    function (every keyword in its constructor or forward, with the function's default)."""
    loss, _ = lookup(name)
    fn = inspect.signature(loss.fn).parameters
    ctor = inspect.signature(loss.module).parameters
    forward = inspect.signature(loss.module.forward).parameters
    assert list(fn)[:2] == [loss.input_name, loss.target_name]
    has = {
        "reduction": loss.reduction,
        "normalizer": loss.normalizer,
        "weight": loss.weight is not None,
        "backend": loss.dispatch is not None,
    }
    for keyword, declared in has.items():
        assert (keyword in fn) == declared, keyword
        assert (keyword in ctor) == declared, keyword
    for keyword in ("weight", "normalizer"):  # the per-call overrides
        assert (keyword in forward) == has[keyword], keyword
    for keyword, param in list(fn.items())[2:]:
        if keyword in loss.module_state:  # e.g. Wise-IoU's mean: a buffer of the Module
            assert keyword not in ctor and keyword not in forward, keyword
            continue
        assert keyword in ctor or keyword in forward, keyword
        other = ctor[keyword] if keyword in ctor else forward[keyword]
        if keyword not in loss.module_defaults_differ:
            assert other.default == param.default, keyword
    for form in loss.forms:
        p = problem(loss, form)
        assert set(p.hyper) <= set(ctor) and set(p.call) <= set(forward), form.name
    if loss.dispatch is not None:
        assert loss.dispatch in LOSS_BACKENDS
        assert fn["backend"].default == "auto"


# --------------------------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "form", "variant"), variant_cases())
def test_shape_per_reduction(name, form, variant):
    """Reduction "none" keeps the per-element / per-sample / per-box shape, "mean" and "sum"
    give a 0-dim tensor, in the input's dtype; "mean" with a normalizer (a number or a tensor)
    is sum / max(normalizer, 1)."""
    loss, f = lookup(name, form)
    p = problem(loss, f)
    vkw = loss.variants()[variant]
    out = loss.fn(p.input, p.target, **call_kw(p, vkw))
    assert out.dtype == p.input.dtype
    if vkw.get("reduction") == "none":
        assert out.shape == p.none_shape
    else:
        assert out.shape == ()
    if "normalizer" in vkw:
        total = loss.fn(p.input, p.target, **call_kw(p, reduction="sum"))
        for normalizer in (vkw["normalizer"], torch.tensor(4.0), 0.5, torch.tensor(0.0)):
            out = loss.fn(p.input, p.target, **call_kw(p, vkw, normalizer=normalizer))
            assert out.shape == () and out.dtype == p.input.dtype
            expected = total / max(float(normalizer), 1.0)  # clamped to >= 1
            torch.testing.assert_close(out, expected, **F32_TOL)


# --------------------------------------------------------------------------------------------
# the Module
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "form", "variant"), variant_cases())
def test_module_equals_function(name, form, variant):
    """The Module with the function's keywords (and the constructor's weight as the function's
    weight) gives exactly the function's value and gradient."""
    loss, f = lookup(name, form)
    p = problem(loss, f)
    vkw = loss.variants()[variant]
    for wkw in weights(loss, p):
        module = module_of(loss, p, vkw, wkw)
        got = value_and_grad(lambda x, t, m=module: m(x, t, **p.call), p.input, p.target)
        expected = value_and_grad(loss.fn, p.input, p.target, **call_kw(p, vkw, wkw))
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("name", "form", "variant"),
    variant_cases(lambda loss, form: loss.weight is not None or loss.normalizer),
)
def test_module_call_arguments_override_the_constructor(name, form, variant):
    """forward(..., weight=) replaces the constructor's weight for that call, for every
    reduction; with "mean", forward(..., normalizer=) replaces the constructor's normalizer
    (each one alone, and both)."""
    loss, f = lookup(name, form)
    p = problem(loss, f)
    vkw = dict(loss.variants()[variant])
    ctor, per_call = {}, {}
    if loss.weight is not None:
        ctor["weight"], per_call["weight"] = weight_of(loss, p, 1), weight_of(loss, p, 2)
    if loss.normalizer and vkw.get("reduction") == "mean":
        ctor["normalizer"] = vkw.pop("normalizer", 2.0)
        per_call["normalizer"] = torch.tensor(5.0)
    module = module_of(loss, p, vkw, ctor)
    overrides = [{k: v} for k, v in per_call.items()]
    if len(per_call) > 1:
        overrides.append(per_call)
    for override in overrides:
        got = value_and_grad(
            lambda x, t, o=override: module(x, t, **p.call, **o), p.input, p.target
        )
        expected = value_and_grad(loss.fn, p.input, p.target, **call_kw(p, vkw, ctor, override))
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", [loss.name for loss in LOSSES if loss.weight is not None])
def test_module_weight_is_a_buffer_in_the_state_dict(name):
    loss, form = lookup(name)
    p = problem(loss, form)
    w = weight_of(loss, p)
    module = module_of(loss, p, weight=w)
    assert "weight" in dict(module.named_buffers())
    torch.testing.assert_close(module.state_dict()["weight"], w, rtol=0, atol=0)
    fresh = module_of(loss, p, weight=torch.zeros_like(w))
    fresh.load_state_dict(module.state_dict())
    torch.testing.assert_close(fresh.weight, w, rtol=0, atol=0)


def _alpha_values(loss: Loss) -> list[float]:
    return ALPHA_SIGMOID if loss in (SIGMOID, POLY1_FOCAL) else ALPHA_SOFTMAX


# id -> (the Module attribute, its constructor keywords for a problem)
TENSOR_HYPERS: dict[str, tuple[str, Callable[[Loss, Problem], dict]]] = {
    "weight": ("weight", lambda loss, p: {"weight": weight_of(loss, p)}),
    "normalizer": ("normalizer", lambda loss, p: {"normalizer": torch.tensor(4.0)}),
    "alpha-tensor": ("alpha", lambda loss, p: {"alpha": torch.tensor(_alpha_values(loss))}),
    "alpha-list": ("alpha", lambda loss, p: {"alpha": list(_alpha_values(loss))}),
    "gamma-tensor": ("gamma", lambda loss, p: {"gamma": torch.tensor(1.5)}),
    "state": ("bin_count_ema", lambda loss, p: {}),  # the GHM Modules' EMA of the counts
    "wiou-state": ("iou_mean", lambda loss, p: {}),  # Wise-IoU's running mean of L_IoU
}


def _to_cases() -> list:
    cases = []
    for loss in LOSSES:
        for hyper in loss.tensor_hypers:
            for dest in ("float64", "meta", "cuda"):
                marks = []
                if dest == "cuda":
                    marks.append(
                        pytest.mark.skipif(
                            not torch.cuda.is_available(), reason="needs a CUDA device"
                        )
                    )
                cases.append(
                    pytest.param(
                        loss.name, hyper, dest, id=f"{loss.name}-{hyper}-{dest}", marks=marks
                    )
                )
    return cases


def _moved(value: object, dtype: torch.dtype | None = None, device: str | None = None) -> object:
    if isinstance(value, Tensor):
        return value.to(
            device=device, dtype=dtype if dtype is not None and value.is_floating_point() else None
        )
    return value


@pytest.mark.parametrize(("name", "hyper", "dest"), _to_cases())
def test_module_to_moves_tensor_hyperparameters(name, hyper, dest):
    """A tensor hyperparameter (given in float32) is a buffer: ``.to(torch.float64)`` converts
    it (and the Module then equals the function with float64 hyperparameters on float64
    inputs), ``.to(device)`` moves it."""
    loss, form = lookup(name)
    attr, make = TENSOR_HYPERS[hyper]
    ctor = make(loss, problem(loss, form))
    p = problem(loss, form, dtype=torch.float64 if dest == "float64" else torch.float32)
    module = module_of(loss, p, ctor)
    assert attr in dict(module.named_buffers()), f"{attr} is not a buffer"
    if dest == "float64":
        module.to(torch.float64)
        for key, buffer in module.named_buffers():
            if buffer.is_floating_point():
                assert buffer.dtype == torch.float64, key
        expected_kw = {k: _moved(v, dtype=torch.float64) for k, v in call_kw(p, ctor).items()}
        got = module(p.input, p.target, **p.call)
        expected = loss.fn(p.input, p.target, **expected_kw)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    else:
        module.to(dest)
        for key, buffer in module.named_buffers():
            assert buffer.device.type == dest, key
    assert getattr(module, attr).device.type == ("cpu" if dest == "float64" else dest)
    if dest == "cuda":
        got = module(
            p.input.cuda(),
            p.target.cuda(),
            **{k: _moved(v, device="cuda") for k, v in p.call.items()},
        )
        expected_kw = {k: _moved(v, device="cuda") for k, v in call_kw(p, ctor).items()}
        expected = loss.fn(p.input.cuda(), p.target.cuda(), **expected_kw)
        torch.testing.assert_close(got, expected, **F32_TOL)


# --------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "form", "variant"), variant_cases())
def test_gradcheck_float64(name, form, variant):
    """float64 gradcheck of the input, without and with a weight."""
    loss, f = lookup(name, form)
    p = problem(loss, f, dtype=torch.float64)
    vkw = loss.variants()[variant]
    for wkw in weights(loss, p):
        fn = frozen(loss, p, call_kw(p, vkw, wkw))
        x = p.input.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(fn, (x,), **GRADCHECK)


@pytest.mark.parametrize(("name", "form"), form_cases())
def test_double_backward(name, form):
    """float64 gradgradcheck ("none" and "mean") where the loss is built from differentiable
    ops; the losses whose gradient is formed in forward refuse create_graph=True (a second
    derivative would silently be 0) with a RuntimeError, for every reduction."""
    loss, f = lookup(name, form)
    p = problem(loss, f, dtype=torch.float64)
    for variant, vkw in loss.variants().items():
        kw = call_kw(p, vkw)
        x = p.input.clone().requires_grad_(True)
        if loss.double_backward is None:
            if variant in ("none", "mean"):
                assert torch.autograd.gradgradcheck(frozen(loss, p, kw), (x,), **GRADCHECK)
        else:
            out = loss.fn(x, p.target, **kw)
            with pytest.raises(RuntimeError, match=loss.double_backward):
                torch.autograd.grad(out.sum(), x, create_graph=True)


@pytest.mark.parametrize(("name", "form", "variant"), variant_cases())
def test_retained_graph_backward(name, form, variant):
    """A second backward through retain_graph=True gives the gradient for the new grad_output
    (3 times the first), equal to a fresh call's. The losses that keep their gradient from
    forward recompute it: for them both gradients also equal the float64 gradient of the same
    call within the float32 tolerance."""
    loss, f = lookup(name, form)
    p = problem(loss, f)
    kw = call_kw(p, loss.variants()[variant])
    g = None if kw.get("reduction", "mean") != "none" else upstream(p.none_shape, torch.float32)
    refs = [torch.float32, torch.float64] if loss.keeps_gradient else [torch.float32]
    for dtype in refs:
        x = p.input.detach().to(dtype).requires_grad_(True)
        t = p.target.to(dtype) if p.target.is_floating_point() else p.target
        out = loss.fn(x, t, **kw)
        out.backward(torch.ones_like(out) if g is None else g.to(dtype))
        assert_retained_graph_backward(
            loss.fn, p.input, p.target, x.grad, grad_output=g, tol=F32_TOL, **kw
        )


@pytest.mark.parametrize(("name", "form", "variant"), variant_cases(lambda loss, form: form.empty))
def test_empty_input(name, form, variant):
    """No rows: "mean" and "sum" give a 0 that is still connected to the graph (backward
    gives a zero gradient of the input's shape), "none" an empty tensor."""
    loss, f = lookup(name, form)
    p = problem(loss, f, n=0)
    kw = call_kw(p, loss.variants()[variant])
    x = p.input.clone().requires_grad_(True)
    out = loss.fn(x, p.target, **kw)
    if kw.get("reduction", "mean") == "none":
        assert out.shape == p.none_shape and out.numel() == 0
        out.sum().backward()
    else:
        assert out.shape == () and out.item() == 0.0
        assert out.requires_grad
        out.backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert bool((x.grad == 0).all())


# --------------------------------------------------------------------------------------------
# execution modes
# --------------------------------------------------------------------------------------------


COMPILE_VARIANTS = ("none", "mean", "sum", "mean-normalizer")


@pytest.mark.parametrize(("name", "form"), form_cases(lambda loss, form: form.compiled))
def test_compile_fullgraph_equals_eager(name, form):
    """The loss with backend="auto" under torch.compile(fullgraph=True) (Inductor): no graph
    break, and the values and the gradient of every reduction (with the weight where the
    loss has one, and "mean" without) equal eager."""
    loss, f = lookup(name, form)
    p = problem(loss, f)
    auto = {"backend": "auto"} if loss.dispatch is not None else {}
    variants = loss.variants()
    w = {} if loss.weight is None else {"weight": weight_of(loss, p)}
    calls = [variants["mean"]] if w else []
    calls += [{**variants[v], **w} for v in COMPILE_VARIANTS if v in variants]
    for c in calls:
        if "normalizer" in c:  # a tensor: read inside the graph, not baked in
            c["normalizer"] = torch.tensor(3.0)

    def every(x: Tensor, t: Tensor) -> list[Tensor]:
        return [loss.fn(x, t, **call_kw(p, c, auto)) for c in calls]

    torch._dynamo.reset()
    try:
        compiled = torch.compile(every, fullgraph=True)
        results = []
        for fn in (compiled, every):
            x = p.input.clone().requires_grad_(True)
            outs = fn(x, p.target)
            sum((o * upstream(o.shape, o.dtype, i)).sum() for i, o in enumerate(outs)).backward()
            results.append(([o.detach() for o in outs], x.grad))
    finally:
        torch._dynamo.reset()
    (got, got_grad), (expected, expected_grad) = results
    torch.testing.assert_close(got, expected, **COMPILE_TOL)
    torch.testing.assert_close(got_grad, expected_grad, **COMPILE_TOL)


def _autocast_cases() -> list:
    cases = []
    for loss in LOSSES:
        for form in loss.forms:
            dtypes = ["float32", "bfloat16"]
            if problem(loss, form).target.is_floating_point():
                dtypes.append("bfloat16-targets")
            cases += [
                pytest.param(loss.name, form.name, d, id=f"{loss.name}-{form.name}-{d}")
                for d in dtypes
            ]
    return cases


@pytest.mark.parametrize(("name", "form", "dtype"), _autocast_cases())
def test_autocast_bfloat16(name, form, dtype):
    """Under CPU bfloat16 autocast (inputs of ``dtype``; "bfloat16-targets": floating targets
    in bfloat16 too) the loss is float32 and equals the float32 call; the gradient comes back
    in the input's dtype. Every reduction."""
    loss, f = lookup(name, form)
    p = problem(loss, f)
    low = torch.bfloat16 if dtype.startswith("bfloat16") else torch.float32
    target = p.target.to(low) if dtype == "bfloat16-targets" else p.target
    ref_target = target.float() if target.is_floating_point() else target
    for vkw in loss.variants().values():
        kw = call_kw(p, vkw)
        assert_autocast_float32(
            lambda x, t, kw=kw: loss.fn(x, t, **kw), p.input.to(low), target, ref_target
        )


@pytest.mark.parametrize(
    ("name", "form", "backend"),
    [
        pytest.param(loss.name, form.name, backend, id=f"{loss.name}-{form.name}-{backend}")
        for loss in LOSSES
        for form in loss.forms
        for backend in loss.backends
    ],
)
def test_cpu_backend_equals_torch(name, form, backend):
    """Each CPU backend of the loss computes it (recorded_choices says so) with the value and
    gradient of backend="torch", for every reduction and weight; a backend that lacks an
    option of the form refuses it, naming backend."""
    loss, f = lookup(name, form)
    p = problem(loss, f)
    if backend in f.refused_by:
        with pytest.raises(
            ValueError, match=rf"^backend='{backend}' requires options the backend supports"
        ):
            loss.fn(p.input, p.target, **call_kw(p, backend=backend))
        return
    for vkw in loss.variants().values():
        for wkw in weights(loss, p):
            kw = call_kw(p, vkw, wkw)
            with recorded_choices() as choices:
                got = value_and_grad(loss.fn, p.input, p.target, backend=backend, **kw)
            assert [c.backend for c in choices] == [backend]
            expected = value_and_grad(loss.fn, p.input, p.target, backend="torch", **kw)
            torch.testing.assert_close(got, expected, **F32_TOL)


# --------------------------------------------------------------------------------------------
# argument errors
# --------------------------------------------------------------------------------------------

Call = Callable[[Problem], object]


def _bad_calls(loss: Loss) -> dict[str, tuple[type[Exception], str, Call]]:
    """id -> (exception, pattern of its message, the call on the base problem)."""
    fn = loss.fn
    cases: dict[str, tuple[type[Exception], str, Call]] = {}

    def named(name: str) -> str:
        return rf"^{name}:"

    if loss.reduction:
        cases["reduction-unknown"] = (
            ValueError,
            named("reduction"),
            lambda p: fn(p.input, p.target, **call_kw(p, reduction="avg")),
        )
        cases["reduction-unknown-module"] = (
            ValueError,
            named("reduction"),
            lambda p: module_of(loss, p, reduction="max"),
        )
    if loss.normalizer:
        for reduction in ("sum", "none"):
            for kind, n in (("float", 2.0), ("tensor", torch.tensor(3.0))):
                cases[f"normalizer-{kind}-with-{reduction}"] = (
                    ValueError,
                    named("normalizer"),
                    lambda p, r=reduction, n=n: fn(
                        p.input, p.target, **call_kw(p, reduction=r, normalizer=n)
                    ),
                )
        cases["normalizer-with-sum-module"] = (
            ValueError,
            named("normalizer"),
            lambda p: module_of(loss, p, reduction="sum", normalizer=2.0),
        )
    if loss.dispatch is not None:
        unknown = r"^backend: expected one of .*'auto'.*got 'cuda'"
        cases["backend-unknown"] = (
            ValueError,
            unknown,
            lambda p: fn(p.input, p.target, **call_kw(p, backend="cuda")),
        )
        cases["backend-unknown-module"] = (
            ValueError,
            unknown,
            lambda p: module_of(loss, p, backend="cuda"),
        )
        for other in sorted({"chunked", "triton"} - set(LOSS_BACKENDS[loss.dispatch])):
            cases[f"backend-{other}-not-of-this-loss"] = (
                ValueError,
                rf"^backend: expected one of .* for {loss.dispatch}, got '{other}'",
                lambda p, b=other: fn(p.input, p.target, **call_kw(p, backend=b)),
            )
    cases["integer-input"] = (
        TypeError,
        named(loss.input_name),
        lambda p: fn(p.input.long(), p.target, **call_kw(p)),
    )
    for bad in loss.bad_shapes:

        def call(p: Problem, bad: BadShape = bad) -> object:
            inp, target, kw = bad.make(p)
            return fn(inp, target, **call_kw(p, kw))

        cases[bad.id] = (ValueError, named(bad.name), call)
    return cases


BAD_CALLS = {loss.name: _bad_calls(loss) for loss in LOSSES}


@pytest.mark.parametrize(
    ("name", "case"),
    [
        pytest.param(name, case, id=f"{name}-{case}")
        for name, cases in BAD_CALLS.items()
        for case in cases
    ],
)
def test_bad_argument_raises_naming_it(name, case):
    """An unknown reduction or backend (function and Module), a normalizer without "mean",
    integer inputs, wrong shapes and a weight that would broadcast the loss to a larger shape
    raise ValueError / TypeError whose message starts with the argument's name."""
    loss, form = lookup(name)
    exc, pattern, call = BAD_CALLS[name][case]
    p = problem(loss, form)
    with pytest.raises(exc, match=pattern):
        call(p)
