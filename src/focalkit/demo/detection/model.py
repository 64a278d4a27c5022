"""A small RetinaNet-style single-stage detector for the detection study.

Backbone: stride-2 3x3 convolutions with GroupNorm + ReLU down to stride 8 (``C3``) and 16
(``C4``); a two-level FPN (1x1 laterals, ``P3 = L3(C3) + up(L4(C4))``, ``P4 = L4(C4)``); one
classification head and one box head shared by both levels (``head_convs`` 3x3 conv + ReLU,
then a 3x3 output conv, no normalisation, as RetinaNet). Output convs start from N(0, 0.01)
weights; the classification bias is ``fk.prior_bias(0.01)`` so every anchor starts at
foreground probability 0.01 (RetinaNet sec. 3.3), the box bias 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TinyRetinaNet"]


def _conv_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(min(8, cout // 4), cout),
        nn.ReLU(inplace=True),
    )


def _tower(width: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class TinyRetinaNet(nn.Module):
    """``forward(images (B, 3, S, S))`` returns ``(cls_logits (B, N, C), deltas (B, N, 4))``
    with ``N`` the anchors of both levels, in :func:`~focalkit.demo.detection.boxes.grid_anchors`
    order, P3 first."""

    def __init__(
        self,
        num_classes: int,
        num_anchors: int,
        *,
        width: int = 32,
        head_width: int = 64,
        head_convs: int = 1,
        prior: float = 0.01,
    ) -> None:
        super().__init__()
        import focalkit as fk

        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.stem = nn.Sequential(
            _conv_block(3, width // 2, 2),  # stride 2
            _conv_block(width // 2, width, 2),  # stride 4
            _conv_block(width, width, 1),
        )
        self.c3 = nn.Sequential(
            _conv_block(width, 2 * width, 2), _conv_block(2 * width, 2 * width, 1)
        )
        self.c4 = nn.Sequential(
            _conv_block(2 * width, 2 * width, 2), _conv_block(2 * width, 2 * width, 1)
        )
        self.lateral3 = nn.Conv2d(2 * width, head_width, 1)
        self.lateral4 = nn.Conv2d(2 * width, head_width, 1)
        self.cls_tower = _tower(head_width, head_convs)
        self.box_tower = _tower(head_width, head_convs)
        self.cls_out = nn.Conv2d(head_width, num_anchors * num_classes, 3, padding=1)
        self.box_out = nn.Conv2d(head_width, num_anchors * 4, 3, padding=1)
        for module in [*self.cls_tower, *self.box_tower, self.cls_out, self.box_out]:
            if isinstance(module, nn.Conv2d) and module.bias is not None:
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        if self.cls_out.bias is not None:
            nn.init.constant_(self.cls_out.bias, fk.prior_bias(prior))

    def _flatten(self, x: Tensor, k: int) -> Tensor:
        b, _, h, w = x.shape
        return x.view(b, self.num_anchors, k, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, k)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        c3 = self.c3(self.stem(images))
        c4 = self.c4(c3)
        p4 = self.lateral4(c4)
        p3 = self.lateral3(c3) + F.interpolate(p4, scale_factor=2.0, mode="nearest")
        logits, deltas = [], []
        for p in (p3, p4):
            logits.append(self._flatten(self.cls_out(self.cls_tower(p)), self.num_classes))
            deltas.append(self._flatten(self.box_out(self.box_tower(p)), 4))
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)
