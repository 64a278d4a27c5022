"""What the loss tests share: seeded generators, one tolerance table by dtype, value-and-grad
helpers, the autograd/autocast checks and the random problem builders of each family.

The test modules import these names (``from conftest import ...``: pytest puts ``tests/`` on
``sys.path``, as for ``_focal_refs`` and ``_ghm_box_refs``, the independent float64
references, which import nothing from focalkit). ``tests/test_contract.py`` checks the
properties every public loss shares, over one table; the per-family files keep what is
specific to a family.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from hypothesis import settings
from torch import Tensor

IGNORE = -100  # the default ignore_index of every loss that has one
REDUCTIONS = ("none", "mean", "sum")

# Tolerances for a loss or gradient computed in ``dtype`` against a float64 reference (or
# against another computation in that dtype). Lower precisions have their own, per test.
TOL: dict[torch.dtype, dict[str, float]] = {
    torch.float32: {"rtol": 1e-5, "atol": 1e-6},
    torch.float64: {"rtol": 1e-10, "atol": 1e-12},
}
F32 = TOL[torch.float32]
F64 = TOL[torch.float64]

# hypothesis settings of the property tests
HYP = settings(max_examples=50, deadline=None)


def make_gen(seed: int = 0) -> torch.Generator:
    """A CPU generator seeded with ``seed``: every random input of the tests comes from one."""
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# values and gradients
# --------------------------------------------------------------------------------------------


def upstream(shape: torch.Size, dtype: torch.dtype, seed: int = 0) -> Tensor:
    """A fixed random ``grad_output`` of ``shape`` (float64 draws, cast to ``dtype``)."""
    r = torch.rand(shape, generator=make_gen(seed), dtype=torch.float64)
    return r.to(dtype)


def value_and_grad(
    fn: Callable[..., Tensor], inp: Tensor, target: Tensor, upstream_seed: int = 0, **kw
) -> tuple[Tensor, Tensor]:
    """``fn(inp, target, **kw)`` and d(sum(loss * r))/d inp for a fixed random r (r = 1 for a
    scalar loss)."""
    x = inp.detach().clone().requires_grad_(True)
    out = fn(x, target, **kw)
    if out.dim() == 0:
        out.backward()
    else:
        (out * upstream(out.shape, out.dtype, upstream_seed)).sum().backward()
    return out.detach(), x.grad


def assert_close_as(actual: Tensor, expected: Tensor, tol: dict[str, float]) -> None:
    """``actual`` (cast to ``expected``'s dtype) equals ``expected`` within ``tol``."""
    torch.testing.assert_close(actual.to(expected.dtype), expected, **tol)


def assert_raises(exc: type[Exception], match: str, fn: Callable, *args, **kw) -> None:
    """``fn(*args, **kw)`` raises ``exc`` with a message that matches ``match``."""
    with pytest.raises(exc, match=match):
        fn(*args, **kw)


def assert_retained_graph_backward(
    loss_fn: Callable[..., Tensor],
    inp: Tensor,
    target: Tensor,
    ref_grad: Tensor,
    grad_output: Tensor | None = None,
    tol: dict[str, float] = F32,
    **kw,
) -> None:
    """A loss that keeps its gradient from forward and scales it in place in backward must
    recompute it for a second backward through the retained graph: the first gradient
    (``grad_output``, default 1) equals ``ref_grad`` and the second (``3 * grad_output``)
    equals ``3 * ref_grad``, both within ``tol``."""
    x = inp.detach().clone().requires_grad_(True)
    loss = loss_fn(x, target, **kw)
    g = torch.ones_like(loss) if grad_output is None else grad_output
    loss.backward(g, retain_graph=True)
    first = x.grad.clone()
    x.grad = None
    loss.backward(3 * g)
    torch.testing.assert_close(first.to(ref_grad.dtype), ref_grad, **tol)
    torch.testing.assert_close(x.grad.to(ref_grad.dtype), 3 * ref_grad, **tol)


def assert_autocast_float32(
    loss_fn: Callable[..., Tensor],
    inp: Tensor,
    target: Tensor,
    ref_target: Tensor | None = None,
) -> None:
    """Under CPU bfloat16 autocast the loss is computed and returned in float32 (equal to the
    float32 call, with ``ref_target`` if given) and the gradient comes back in the input's
    dtype."""
    x32 = inp.detach().float().clone().requires_grad_(True)
    ref = loss_fn(x32, target if ref_target is None else ref_target)
    ref.backward(torch.ones_like(ref))
    x = inp.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(x, target)
    assert loss.dtype == torch.float32
    loss.backward(torch.ones_like(loss))
    assert x.grad.dtype == inp.dtype
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-6, atol=1e-7)
    tol = (
        {"rtol": 1e-6, "atol": 1e-8} if inp.dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-4}
    )
    torch.testing.assert_close(x.grad.float(), x32.grad, **tol)


def assert_auto_gamma_schedule(
    module: torch.nn.Module,
    loss_fn: Callable[..., Tensor],
    mean_p_correct: Callable[[Tensor, Tensor], float],
    batches: tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]],
    eval_batch: tuple[Tensor, Tensor],
    **kw,
) -> Tensor:
    """``gamma="auto"`` (Weber et al.) on a fresh ``module``, against ``loss_fn(..., gamma=g,
    **kw)``: ``p_hat`` (in the state_dict) starts at 1; before any update gamma = -log(1) =
    0, and eval mode does not update ``p_hat``;
    the first training batch sets ``p_hat`` to its ``mean_p_correct`` (value and gradient of
    gamma = -log(p_hat)); the second moves it by the EMA with momentum 0.95; eval on
    ``eval_batch`` leaves ``p_hat`` alone and uses gamma = -log(p_hat). Returns that eval
    loss."""
    assert "p_hat" in module.state_dict()
    assert float(module.p_hat) == 1.0
    (x1, t1), (x2, t2) = batches
    module.eval()
    loss0 = module(x1, t1)
    assert float(module.p_hat) == 1.0
    torch.testing.assert_close(loss0, loss_fn(x1, t1, gamma=0.0, **kw))

    module.train()
    a, ga = value_and_grad(module, x1, t1)
    p1 = mean_p_correct(x1, t1)
    assert float(module.p_hat) == pytest.approx(p1, rel=1e-5)
    b, gb = value_and_grad(loss_fn, x1, t1, gamma=-math.log(p1), **kw)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-7)

    value_and_grad(module, x2, t2)
    p2 = 0.95 * p1 + 0.05 * mean_p_correct(x2, t2)
    assert float(module.p_hat) == pytest.approx(p2, rel=1e-5)

    module.eval()
    xe, te = eval_batch
    c = module(xe, te)
    assert float(module.p_hat) == pytest.approx(p2, rel=1e-5)
    torch.testing.assert_close(c, loss_fn(xe, te, gamma=-math.log(p2), **kw), rtol=1e-5, atol=1e-7)
    return c


# --------------------------------------------------------------------------------------------
# random problems, per family
# --------------------------------------------------------------------------------------------


def sigmoid_targets(kind: str, n: int, c: int, gen: torch.Generator) -> Tensor:
    """Targets of ``(n, c)`` sigmoid logits. soft: float64 in [0, 1]; binary: float64 {0, 1};
    index: ``(n,)`` labels in [0, c] (c = background) with a background row, an ignored row and
    a class-0 row (``n >= 3``); int_dense: int64 {0, 1} with ``IGNORE`` entries (an entry of
    row 0 and all of row 3, ``n >= 4``)."""
    if kind == "soft":
        return torch.rand(n, c, generator=gen, dtype=torch.float64)
    if kind == "binary":
        return (torch.rand(n, c, generator=gen) < 0.3).double()
    if kind == "index":
        labels = torch.randint(0, c + 1, (n,), generator=gen)
        labels[0] = c  # background
        labels[1] = IGNORE
        labels[2] = 0
        return labels
    assert kind == "int_dense", kind
    t = (torch.rand(n, c, generator=gen) < 0.3).long()
    t[0, 1] = IGNORE
    t[3, :] = IGNORE
    return t


def focal_alpha(kind: str, c: int, dtype: torch.dtype = torch.float64) -> float | Tensor | None:
    """alpha of the focal losses: "none" (None), "float" (0.25) or "vector" (c values from
    0.1 to 0.9 in ``dtype``)."""
    if kind == "none":
        return None
    if kind == "float":
        return 0.25
    assert kind == "vector", kind
    return torch.linspace(0.1, 0.9, c, dtype=dtype)


def softmax_problem(
    shape: tuple[int, ...],
    form: str,
    gen: torch.Generator,
    *,
    ignore: bool = True,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Softmax logits of ``shape`` ((C,), (N, C) or (N, C, d...)) and targets of ``form``:
    "index" (class indices; the second and last entries ``IGNORE`` if ``ignore``) or "prob"
    (probabilities of the logits' shape, in ``dtype``)."""
    logits = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2).to(dtype)
    c = shape[0] if len(shape) == 1 else shape[1]
    if form == "index":
        index_shape = () if len(shape) == 1 else (shape[0], *shape[2:])
        targets = torch.randint(0, c, index_shape, generator=gen)
        if ignore and targets.numel() > 1:
            flat = targets.view(-1)
            flat[1] = IGNORE
            flat[-1] = IGNORE
        return logits, targets
    assert form == "prob", form
    raw = torch.rand(shape, generator=gen, dtype=torch.float64) * 3
    targets = torch.softmax(raw, dim=0 if len(shape) == 1 else 1).to(dtype)
    return logits, targets


def ghm_c_problem(
    shape: tuple[int, ...] = (37, 5),
    seed: int = 0,
    soft: bool = False,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor, Tensor]:
    """GHM-C logits (spread 3), float targets (binary with P(1) = 0.3, or soft) and a bool
    ``valid`` mask (P(True) = 0.8), all of ``shape``."""
    gen = make_gen(seed)
    logits = torch.randn(shape, generator=gen, dtype=dtype) * 3
    if soft:
        targets = torch.rand(shape, generator=gen, dtype=dtype)
    else:
        targets = (torch.rand(shape, generator=gen) < 0.3).to(dtype)
    valid = torch.rand(shape, generator=gen) < 0.8
    return logits, targets, valid


# --------------------------------------------------------------------------------------------
# degenerate boxes
# --------------------------------------------------------------------------------------------

# (pred, target) xyxy pairs where the IoU family's ties, clamps and zero areas decide the values
# and gradients (tests/test_box.py; tests/test_triton_box.py adds containment and shared edges)
DEGENERATE_BOXES = {
    "identical": ([0.0, 0, 4, 4], [0.0, 0, 4, 4]),
    "disjoint": ([0.0, 0, 1, 1], [5.0, 5, 6, 7]),
    "touching": ([0.0, 0, 1, 1], [1.0, 0, 2, 1]),
    "zero_width_pred": ([1.0, 1, 1, 4], [0.0, 0, 4, 4]),
    "zero_height_target": ([0.0, 0, 4, 4], [1.0, 2, 3, 2]),
    "points_apart": ([2.0, 2, 2, 2], [3.0, 3, 3, 3]),
    "points_identical": ([2.0, 2, 2, 2], [2.0, 2, 2, 2]),
    "zero_width_both": ([1.0, 0, 1, 4], [1.0, 1, 1, 5]),
    "zero_height_both_identical": ([0.0, 1, 4, 1], [0.0, 1, 4, 1]),
}
# Two zero-area boxes that overlap along a segment: the float32 gradient of IoU there is
# ~ length / eps (1e7 scale), finite in float32/bfloat16 but beyond float16's range.
FP16_OVERFLOW = {"zero_width_both", "zero_height_both_identical"}


@pytest.fixture(scope="session")
def wheel():
    """The deepforest wheel holding Study 3's NEON images (fetched once into the cache); the
    test is skipped where it cannot be had."""
    from focalkit.demo.detection import neon

    try:
        return neon.fetch_wheel()
    except neon.DataUnavailable as exc:
        pytest.skip(f"the tree-crown data is not available here: {exc}")
