"""Numbers that must be exact: per-element BCE in float32, and sums over many elements.

* Every BCE focalkit computes (the focal losses, GHM-C, on every CPU backend and in the Triton
  kernels) is within 1e-6 relative of float64 per element for |x| <= 50, hard and soft
  targets (PyTorch's ``F.binary_cross_entropy_with_logits`` is not: it cancels).
* GHM-C over 2^24 + 4096 logits (16,780,312 easy negatives at x = -8, 1,000 hard ones at
  x = 8, bins 10) is within 1e-6 relative of its closed form: chunk sums are accumulated in
  float64, not float32.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import focalkit as fk
from focalkit.bench.precision import TARGETS, grid, implementations, reference

TOLERANCE = 1e-6


def _rel(got: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return (got.double() - ref).abs() / ref.abs().clamp(min=1e-300)


FOCALKIT = [name for name in implementations() if not name.startswith("torch ")]


@pytest.mark.parametrize("y", TARGETS)
@pytest.mark.parametrize("name", FOCALKIT)
def test_bce_per_element_relative_error_in_float32(name, y):
    x = grid()
    got = implementations()[name](x, torch.full_like(x, y))
    rel = _rel(got, reference(x, y))
    assert float(rel.max()) <= TOLERANCE, (name, y, float(x[rel.argmax()]), float(rel.max()))


def test_torch_bce_cancels_where_focalkit_does_not():
    """The baseline the table compares with: at x = -8, y = 0 torch loses 8.6e-4 relative
    (log(1 + 3.4e-4) after a cancelling subtraction); at x = -50 it returns 0."""
    x = torch.tensor([-8.0, -50.0])
    y = torch.zeros(2)
    rel = _rel(F.binary_cross_entropy_with_logits(x, y, reduction="none"), reference(x, 0.0))
    assert float(rel[0]) > 1e-4 and float(rel[1]) == 1.0
    fixed = _rel(fk.ghm_c_loss(x, y, bins=1, reduction="none"), reference(x, 0.0))
    assert float(fixed.max()) <= TOLERANCE


@pytest.mark.parametrize("kernel", ["sigmoid", "ghm_c"])
def test_triton_kernels_bce_per_element_in_the_interpreter(monkeypatch, kernel):
    from _triton_interp import import_kernel

    import_kernel(f"focalkit.kernels.triton_{'sigmoid_focal' if kernel == 'sigmoid' else 'ghm'}")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = grid(401)
    for y in TARGETS:
        t = torch.full_like(x, y)
        if kernel == "sigmoid":
            got = fk.sigmoid_focal_loss(
                x, t, alpha=None, gamma=0.0, reduction="none", backend="triton"
            )
        else:
            got = fk.ghm_c_loss(x, t, bins=1, reduction="none", backend="triton")
        rel = _rel(got, reference(x, y))
        assert float(rel.max()) <= TOLERANCE, (kernel, y, float(x[rel.argmax()]))


@pytest.mark.parametrize("backend", ["torch", "chunked"])
def test_ghm_c_sum_over_2_pow_24_plus_4096_elements(backend):
    """Two non-empty bins: every element weighs N / (2 R_j), so the loss is the mean of the
    two BCE values, (log1p(e^-8) + 8 + log1p(e^-8)) / 2, whatever the counts."""
    easy, hard = 16_780_312, 1_000
    assert easy + hard == 2**24 + 4096
    expected = (math.log1p(math.exp(-8)) + 8 + math.log1p(math.exp(-8))) / 2
    # hard ones first: a float32 running sum is then ~6.7e7 when each chunk of easy
    # negatives (~11) is added, and loses about a quarter of it (1.1e-5 relative in all)
    for x in (
        torch.cat([torch.full((hard,), 8.0), torch.full((easy,), -8.0)]),
        torch.cat([torch.full((easy,), -8.0), torch.full((hard,), 8.0)]),
    ):
        loss = fk.ghm_c_loss(x, torch.zeros_like(x), bins=10, backend=backend)
        assert abs(float(loss) - expected) / expected <= TOLERANCE, float(loss)
