r"""The IoU family's one plain formula: the geometry of two boxes computed once, the bases'
penalties over it, and the modifiers that compose with every base.

This is the ``"torch"`` backend of every IoU-family loss (autograd through it) and the
reference the Triton kernel (:mod:`focalkit.kernels.triton_box`) is tested against. A
:class:`BoxSpec` names what to compute; :func:`torch_per_box` computes it for xyxy boxes in
the compute dtype:

.. math::

    L = \underbrace{1 - o}_{\text{overlap term}} + \sum_k P_k
    \qquad (\text{Wise-IoU v1: } L = R\,(1 - o))

* **the overlap term** ``o``: the IoU, or Inner-IoU's IoU of the auxiliary boxes (same
  centres, sides times ``inner_ratio``), then Focaler-IoU's ``clamp((o - d) / (u - d), 0, 1)``,
  then Alpha-IoU's ``o ** power``. So ``L_Inner-X = L_X + IoU - IoU_inner`` and
  ``L_Focaler-X = L_X + IoU - IoU_f`` for every base ``X``: the penalties ``P_k`` always use
  the original boxes and the original IoU (CIoU's trade-off too);
* **the penalties** of the base (GIoU's empty enclosing area, DIoU's centre distance, CIoU's
  aspect term, EIoU's side terms, SIoU's distance and shape costs, MPDIoU's corner distances,
  Shape-IoU's weighted distance and shape cost), each raised to ``power`` for Alpha-IoU
  (``((|C| - |A ∪ B|) / |C|)^a``, ``(rho^2 / c^2)^a``, ``(a_CIoU v)^a``);
* factors that are constants in backward (computed under no-grad): CIoU's trade-off ``a``,
  Focal-EIoU's ``IoU^gamma``, Wise-IoU's enclosing diagonal in ``R``.

``eps`` is added as in every focalkit box loss: ``inter / (union + eps)`` and ``+ eps`` in
every other denominator (SIoU's ``(dx / (C_w + eps))^2``, ``|w - w_g| / (max(w, w_g) + eps)``,
``2 |dx| |dy| / (dx^2 + dy^2 + eps)``), so identical, disjoint and zero-area boxes give finite
values and gradients. MPDIoU divides by ``W^2 + H^2 > 0`` (no eps).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["BASES", "BoxSpec", "torch_per_box"]

_FOUR_OVER_PI2 = 4.0 / math.pi**2

# the bases of the per-box loss ("wiou": Wise-IoU v1's R (1 - o); "shape": Shape-IoU)
BASES = (
    "iou",
    "giou",
    "diou",
    "ciou",
    "eiou",
    "focal_eiou",
    "siou",
    "mpdiou",
    "shape",
    "wiou",
)


class BoxSpec(NamedTuple):
    """What the per-box loss is: a base and its modifiers, as plain Python values (hashable,
    no tensors; MPDIoU's image diagonal travels separately, it may be a tensor)."""

    base: str  # one of BASES
    eps: float = 1e-7
    log: bool = False  # iou_loss(mode="log"): -log(max(o, eps)) instead of 1 - o
    power: float = 1.0  # Alpha-IoU
    inner_ratio: float | None = None  # Inner-IoU
    focaler: tuple[float, float] | None = None  # Focaler-IoU (d, u)
    aspect_gate: bool = False  # CIoU: the trade-off only where IoU > 0.5 (mmdetection)
    clamp: bool = False  # the loss clamped to [0, 2] (mmdetection's SIoU and CIoU)
    theta: float = 4.0  # SIoU's shape-cost exponent
    paper_sign: bool = True  # SIoU: exp(-gamma rho) (paper) or exp(+gamma rho) (mmdetection)
    scale: float = 0.0  # Shape-IoU's exponent of the target's sides (0: weights off)
    gamma: float = 0.0  # Focal-EIoU's exponent


def _pow(x: Tensor, exponent: float) -> Tensor:
    """``x ** exponent`` for ``x >= 0`` (rounding below 0 is clamped), a Python exponent."""
    return x if exponent == 1 else x.clamp(min=0).pow(exponent)


def _exp_cost(omega: Tensor, theta: float) -> Tensor:
    """SIoU's and Shape-IoU's shape cost of one side, ``(1 - exp(-omega))^theta``."""
    return _pow(1 - torch.exp(-omega), theta)


class _Geometry:
    """The quantities shared by the IoU family, for xyxy boxes in the compute dtype (each
    computed once; the bases read what they need)."""

    def __init__(self, pred: Tensor, target: Tensor, eps: float) -> None:
        px1, py1, px2, py2 = pred.unbind(-1)
        tx1, ty1, tx2, ty2 = target.unbind(-1)
        self.pred, self.target = (px1, py1, px2, py2), (tx1, ty1, tx2, ty2)
        self.eps = eps
        self.pw, self.ph = px2 - px1, py2 - py1
        self.tw, self.th = tx2 - tx1, ty2 - ty1
        iw = (torch.minimum(px2, tx2) - torch.maximum(px1, tx1)).clamp(min=0)
        ih = (torch.minimum(py2, ty2) - torch.maximum(py1, ty1)).clamp(min=0)
        inter = iw * ih
        self.area_sum = self.pw * self.ph + self.tw * self.th
        self.union = self.area_sum - inter
        self.iou = inter / (self.union + eps)
        # smallest enclosing box
        self.cw = torch.maximum(px2, tx2) - torch.minimum(px1, tx1)
        self.ch = torch.maximum(py2, ty2) - torch.minimum(py1, ty1)
        # twice the offset of the centres (prediction - target): exact halves below
        self._centres = (px1 + px2 - tx1 - tx2, py1 + py2 - ty1 - ty2)

    # ---- shared pieces ----------------------------------------------------------------------

    @property
    def offsets(self) -> tuple[Tensor, Tensor]:
        """The offset of the centres, prediction - target (``dx, dy``)."""
        return 0.5 * self._centres[0], 0.5 * self._centres[1]

    @property
    def rho2(self) -> Tensor:
        """Squared distance of the box centres."""
        dx, dy = self._centres
        return 0.25 * (dx * dx + dy * dy)

    @property
    def diag2(self) -> Tensor:
        """Squared diagonal of the enclosing box, ``C_w^2 + C_h^2``."""
        return self.cw * self.cw + self.ch * self.ch

    def _shape_omegas(self) -> tuple[Tensor, Tensor]:
        """``|w - w_g| / (max(w, w_g) + eps)`` and the same for the heights."""
        eps = self.eps
        om_w = (self.pw - self.tw).abs() / (torch.maximum(self.pw, self.tw) + eps)
        om_h = (self.ph - self.th).abs() / (torch.maximum(self.ph, self.th) + eps)
        return om_w, om_h

    # ---- the overlap term -------------------------------------------------------------------

    def inner_iou(self, ratio: float) -> Tensor:
        """Inner-IoU: the IoU of the auxiliary boxes, the same centres and sides times
        ``ratio`` (ratio 1 gives the IoU)."""
        half = 0.5 * ratio
        px1, py1, px2, py2 = self.pred
        tx1, ty1, tx2, ty2 = self.target
        pcx, pcy, tcx, tcy = (
            0.5 * (px1 + px2),
            0.5 * (py1 + py2),
            0.5 * (tx1 + tx2),
            0.5 * (ty1 + ty2),
        )
        phw, phh, thw, thh = self.pw * half, self.ph * half, self.tw * half, self.th * half
        iw = torch.minimum(pcx + phw, tcx + thw) - torch.maximum(pcx - phw, tcx - thw)
        ih = torch.minimum(pcy + phh, tcy + thh) - torch.maximum(pcy - phh, tcy - thh)
        inter = iw.clamp(min=0) * ih.clamp(min=0)
        return inter / (ratio * ratio * self.area_sum - inter + self.eps)

    def overlap(self, spec: BoxSpec) -> Tensor:
        """``o``: the IoU (or Inner-IoU), Focaler's mapping, Alpha's power, in that order."""
        o = self.iou if spec.inner_ratio is None else self.inner_iou(spec.inner_ratio)
        if spec.focaler is not None:
            d, u = spec.focaler
            o = ((o - d) / (u - d)).clamp(0, 1)
        return _pow(o, spec.power)

    # ---- the bases' penalties ---------------------------------------------------------------

    def giou_penalty(self) -> Tensor:
        area_c = self.cw * self.ch
        return (area_c - self.union) / (area_c + self.eps)

    def diou_penalty(self) -> Tensor:
        return self.rho2 / (self.diag2 + self.eps)

    def ciou_trade_off(self, gate: bool) -> Tensor:
        """CIoU's aspect term ``v`` times its trade-off ``a = v / ((1 - IoU) + v)``, which is a
        constant in backward; ``gate``: ``a = 0`` where ``IoU <= 0.5`` (the CIoU authors'
        later code and mmdetection)."""
        eps = self.eps
        delta = torch.atan(self.tw / (self.th + eps)) - torch.atan(self.pw / (self.ph + eps))
        v = _FOUR_OVER_PI2 * delta * delta
        with torch.no_grad():
            a = v / ((1 - self.iou) + v + eps)
            if gate:
                a = torch.where(self.iou > 0.5, a, 0.0)
        return a * v

    def eiou_penalty(self) -> Tensor:
        eps = self.eps
        cw2, ch2 = self.cw * self.cw, self.ch * self.ch
        dw, dh = self.pw - self.tw, self.ph - self.th
        return self.rho2 / (cw2 + ch2 + eps) + dw * dw / (cw2 + eps) + dh * dh / (ch2 + eps)

    def siou_penalty(self, theta: float, paper_sign: bool) -> Tensor:
        """``(Delta + Omega) / 2``: SIoU's angle-weighted distance cost and shape cost."""
        eps = self.eps
        dx, dy = self.offsets
        # Lambda = sin(2 alpha) = 2 |dx| |dy| / (dx^2 + dy^2): no arcsin, finite at dx = dy = 0
        angle = 2 * dx.abs() * dy.abs() / (dx * dx + dy * dy + eps)
        gamma = 2 - angle
        rx, ry = dx / (self.cw + eps), dy / (self.ch + eps)
        rate = -gamma if paper_sign else gamma
        distance = (1 - torch.exp(rate * (rx * rx))) + (1 - torch.exp(rate * (ry * ry)))
        om_w, om_h = self._shape_omegas()
        shape = _exp_cost(om_w, theta) + _exp_cost(om_h, theta)
        return 0.5 * (distance + shape)

    def mpdiou_penalty(self, diag2: float | Tensor) -> Tensor:
        """``(d1^2 + d2^2) / (W^2 + H^2)``: the top-left and bottom-right corners' distances."""
        px1, py1, px2, py2 = self.pred
        tx1, ty1, tx2, ty2 = self.target
        d1 = (px1 - tx1) ** 2 + (py1 - ty1) ** 2
        d2 = (px2 - tx2) ** 2 + (py2 - ty2) ** 2
        return (d1 + d2) / diag2

    def shape_weights(self, scale: float) -> tuple[Tensor | float, Tensor | float]:
        """Shape-IoU's ``ww = 2 w_g^s / (w_g^s + h_g^s)``, ``hh = 2 h_g^s / (w_g^s + h_g^s)``
        from the target box; 1 and 1 at ``scale = 0`` and for a target of zero area."""
        if scale == 0:
            return 1.0, 1.0

        def side(x: Tensor) -> Tensor:  # x^s with a zero gradient at x = 0 (s may be < 1)
            pos = x > 0
            return torch.where(pos, x, 1.0).pow(scale) * pos

        ws, hs = side(self.tw), side(self.th)
        den = ws + hs
        ok = den > 0
        safe = torch.where(ok, den, 1.0)
        return torch.where(ok, 2 * ws / safe, 1.0), torch.where(ok, 2 * hs / safe, 1.0)

    def shape_iou_terms(self, scale: float) -> tuple[Tensor, Tensor]:
        """Shape-IoU's ``dist = (hh dx^2 + ww dy^2) / c^2`` and ``Omega / 2`` with
        ``omega_w = hh |w - w_g| / max(w, w_g)``, ``omega_h = ww |h - h_g| / max(h, h_g)``."""
        ww, hh = self.shape_weights(scale)
        dx, dy = self.offsets
        dist = (hh * (dx * dx) + ww * (dy * dy)) / (self.diag2 + self.eps)
        om_w, om_h = self._shape_omegas()
        shape = _exp_cost(hh * om_w, 4.0) + _exp_cost(ww * om_h, 4.0)
        return dist, 0.5 * shape

    def wiou_distance(self) -> Tensor:
        """Wise-IoU v1's ``R = exp(rho^2 / c^2)`` with the enclosing diagonal ``c^2`` a
        constant in backward (``rho^2`` is differentiated)."""
        return torch.exp(self.rho2 / (self.diag2.detach() + self.eps))

    def penalties(self, spec: BoxSpec, diag2: float | Tensor | None) -> list[Tensor]:
        """The base's terms beyond the overlap term, in the order they are added (Alpha's
        power applied to each for IoU, GIoU, DIoU and CIoU)."""
        base, a = spec.base, spec.power
        if base == "giou":
            return [_pow(self.giou_penalty(), a)]
        if base in ("diou", "ciou"):
            terms = [_pow(self.diou_penalty(), a)]
            if base == "ciou":
                terms.append(_pow(self.ciou_trade_off(spec.aspect_gate), a))
            return terms
        if base in ("eiou", "focal_eiou"):
            return [self.eiou_penalty()]
        if base == "siou":
            return [self.siou_penalty(spec.theta, spec.paper_sign)]
        if base == "mpdiou":
            if diag2 is None:
                raise ValueError("mpdiou: the image diagonal is required")
            return [self.mpdiou_penalty(diag2)]
        if base == "shape":
            return list(self.shape_iou_terms(spec.scale))
        return []  # iou, wiou


def torch_per_box(
    spec: BoxSpec, pred: Tensor, target: Tensor, diag2: float | Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The per-box loss of ``spec`` for xyxy boxes, and the plain IoU (detached: Wise-IoU's
    focusing factor reads it). ``diag2``: MPDIoU's ``W^2 + H^2`` (broadcast to the boxes)."""
    geo = _Geometry(pred, target, spec.eps)
    o = geo.overlap(spec)
    loss = -torch.log(o.clamp(min=spec.eps)) if spec.log else 1 - o
    if spec.base == "wiou":
        loss = geo.wiou_distance() * loss
    for term in geo.penalties(spec, diag2):
        loss = loss + term
    if spec.base == "focal_eiou" and spec.gamma != 0:
        loss = geo.iou.detach().clamp(min=0).pow(spec.gamma) * loss
    if spec.clamp:
        loss = loss.clamp(0, 2)
    return loss, geo.iou.detach()
