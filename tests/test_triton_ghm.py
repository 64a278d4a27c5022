"""The Triton GHM-C / GHM-R kernels against the torch backend (Triton's interpreter on CPU).

Same set-up as ``test_triton_sigmoid_focal.py`` (``_triton_interp``): forward and gradient
equal the torch backend within the one tolerance table, over dtypes, odd sizes, strided and
empty inputs, every target form, ``valid``, reduction, weight and bins; the Modules' EMA
buffers are equal exactly; the kernel's bin counts are ``bincount`` of the reference bin
index; the triton path reads nothing back to the host; two ranks with ``sync`` match torch.

GHM-C's bins come from ``sigmoid``: under the interpreter numpy's ``exp`` can round differently
from torch's CPU one in the last bit, which moves an element across a bin edge only when ``g``
is within one ulp of ``j / bins`` (the inputs here stay clear of that; on CUDA the kernel calls
the ``expf`` torch's CUDA sigmoid calls).
"""

from __future__ import annotations

import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import focalkit as fk
from _triton_interp import (  # noqa: F401 (interpret: autouse fixture)
    DTYPES,
    compare_backends,
    import_kernel,
    interpret,
    sigmoid_targets,
)
from focalkit.functional import _targets
from focalkit.functional import ghm as ghm_impl
from focalkit.kernels import dispatch

kernels = import_kernel("focalkit.kernels.triton_ghm")

pytestmark = [
    pytest.mark.triton,
    # exp(-x) overflows to inf for x = -100 (sigmoid is 0 there, as on torch); numpy warns
    pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning"),
]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ghm_c(logits, targets, **kw):
    return compare_backends(fk.ghm_c_loss, logits, targets, **kw)


def _ghm_r(pred, target, **kw):
    return compare_backends(fk.ghm_r_loss, pred, target, **kw)


def _box_problem(shape, gen, dtype=torch.float32):
    pred = (torch.randn(shape, generator=gen) * 0.1).to(dtype)
    return pred, torch.randn(shape, generator=gen) * 0.1


# --------------------------------------------------------------------------------------------
# GHM-C
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["soft", "hard", "int_dense", "index"])
def test_ghm_c_matches_torch(dtype, kind):
    """Forward and gradient equal the torch backend for every reduction, bins and valid."""
    gen = _gen(0)
    shape = (13, 7)
    logits = (3 * torch.randn(shape, generator=gen)).to(dtype)
    targets = sigmoid_targets(kind, shape, gen)
    valid = torch.rand(shape, generator=gen) < 0.8
    for bins in (1, 10, 30):
        _ghm_c(logits, targets, bins=bins, valid=valid)
    for reduction in ("none", "mean", "sum"):
        _ghm_c(logits, targets, bins=10, reduction=reduction)
        _ghm_c(logits, targets, bins=10, reduction=reduction, valid=valid)


def test_ghm_c_valid_forms_and_ignore_index():
    """A broadcast valid mask, a float mask (read as > 0), a custom ignore_index."""
    gen = _gen(1)
    logits = 3 * torch.randn(11, 6, generator=gen)
    targets = sigmoid_targets("soft", (11, 6), gen)
    _ghm_c(logits, targets, valid=torch.rand(11, 1, generator=gen) < 0.6)
    _ghm_c(logits, targets, valid=torch.rand(11, 6, generator=gen) - 0.3)
    labels = torch.randint(0, 7, (11,), generator=gen)
    labels[::3] = 6  # = C: background, unless it is the ignore_index
    for ignore_index in (-100, 6):
        _ghm_c(logits, labels, ignore_index=ignore_index, reduction="sum")
    dense = torch.where(torch.rand(11, 6, generator=gen) < 0.3, 255, torch.randint(0, 2, (11, 6)))
    _ghm_c(logits, dense.to(torch.uint8), ignore_index=255, reduction="none")


@pytest.mark.parametrize("shape", [(1,), (7,), (1003,), (3, 1001)])
def test_ghm_c_odd_sizes(shape, monkeypatch):
    """Sizes that are not a multiple of the block; histogram programs walking several tiles."""
    monkeypatch.setattr(kernels, "MAX_PROGRAMS", 2)
    gen = _gen(2)
    logits = 3 * torch.randn(shape, generator=gen)
    for kind in ("soft", "index") if len(shape) > 1 else ("soft",):
        targets = sigmoid_targets(kind, shape, gen)
        for reduction in ("none", "mean"):
            _ghm_c(logits, targets, bins=30, reduction=reduction)


def test_ghm_c_non_contiguous():
    """Strided logits, targets and valid mask give the torch backend's values."""
    gen = _gen(3)
    base = 3 * torch.randn(9, 16, generator=gen)
    for logits in (base[:, ::2], base.t()):
        assert not logits.is_contiguous()
        targets = torch.rand(logits.shape[::-1], generator=gen).t()
        valid = (torch.rand(logits.shape[::-1], generator=gen) < 0.8).t()
        _ghm_c(logits, targets, valid=valid, reduction="none")
        _ghm_c(logits, sigmoid_targets("index", logits.shape, gen), reduction="mean")


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_ghm_c_empty(reduction):
    """Empty input: no launch, zero loss (not NaN) and an empty gradient."""
    logits = torch.empty(0, 4)
    for targets in (torch.empty(0, 4), torch.empty(0, dtype=torch.long)):
        loss, grad = _ghm_c(logits, targets, reduction=reduction)
        assert grad.shape == (0, 4) and torch.isfinite(loss).all()


def test_ghm_c_all_ignored_gives_zero_loss_and_zero_gradient():
    logits = torch.randn(4, 3)
    loss, grad = _ghm_c(logits, torch.full((4,), -100), bins=10)
    assert loss.item() == 0 and not grad.any()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ghm_c_extreme_logits_finite(dtype):
    """|logit| = 100 gives finite loss and gradient, equal to the torch backend."""
    logits = torch.tensor([[-100.0, 100.0, -100.0, 100.0], [0.0, 3.0, -100.0, 100.0]]).to(dtype)
    for targets in (
        torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]]),
        torch.tensor([[0.3, 0.9, 0.0, 1.0], [0.5, 0.2, 0.7, 1.0]]),
        torch.tensor([1, 4]),
    ):
        for reduction in ("none", "mean"):
            loss, grad = _ghm_c(logits, targets, bins=10, reduction=reduction)
            assert torch.isfinite(loss).all() and torch.isfinite(grad).all()


# --------------------------------------------------------------------------------------------
# GHM-R
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ghm_r_matches_torch(dtype):
    """Every weight form (none, per element with fractions and zeros, per row, scalar-like,
    bool, float64, negative), mu and bins."""
    gen = _gen(4)
    pred, target = _box_problem((23, 4), gen, dtype)
    frac = torch.rand(23, 4, generator=gen) * (torch.rand(23, 4, generator=gen) < 0.7)
    per_row = (torch.rand(23, 1, generator=gen) < 0.6).float()
    weights = [
        None,
        frac,
        per_row,
        torch.tensor([0.5]),
        per_row.bool(),
        frac.double(),
        torch.randn(23, 4, generator=gen),  # negative weights: dropped, but summed into N
    ]
    for weight in weights:
        _ghm_r(pred, target, weight=weight)
    for bins in (1, 10, 30):
        for mu in (0.02, 0.5):
            _ghm_r(pred, target, weight=frac, mu=mu, bins=bins)


@pytest.mark.parametrize("shape", [(1,), (7,), (1003,), (3, 1001)])
def test_ghm_r_odd_sizes(shape, monkeypatch):
    monkeypatch.setattr(kernels, "MAX_PROGRAMS", 2)
    gen = _gen(5)
    pred, target = _box_problem(shape, gen)
    _ghm_r(pred, target, bins=30)
    _ghm_r(pred, target, weight=torch.rand(shape, generator=gen) - 0.2)


def test_ghm_r_non_contiguous_and_empty():
    gen = _gen(6)
    base, target = _box_problem((8, 10), gen)
    weight = torch.rand(10, 8, generator=gen).t()
    _ghm_r(base[:, ::2], target[:, 1::2], weight=weight[:, ::2])
    _ghm_r(base.t(), target.t(), weight=weight.t())
    loss, grad = _ghm_r(torch.empty(0, 4), torch.empty(0, 4), weight=torch.empty(0, 1))
    assert loss.item() == 0 and grad.shape == (0, 4)


def test_ghm_r_gradient_to_target():
    """Where target requires grad it gets minus pred's gradient, as on torch."""
    gen = _gen(7)
    pred, target = _box_problem((9, 4), gen)
    grads = []
    for backend in ("torch", "triton"):
        p, t = pred.clone().requires_grad_(True), target.clone().requires_grad_(True)
        fk.ghm_r_loss(p, t, backend=backend).backward()
        grads.append((p.grad, t.grad))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[1][1], -grads[1][0])


def test_extreme_regression_inputs():
    pred = torch.tensor([[100.0, -100.0, 0.0, 1e-4]])
    _ghm_r(pred, torch.zeros(1, 4), bins=10)


# --------------------------------------------------------------------------------------------
# the histogram
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bins", [1, 10, 30])
def test_ghm_c_histogram_is_bincount_of_the_reference_bin_index(bins):
    """Kernel counts = bincount of ``bin_index`` (torch), including g on the bin edges: at
    x = -100, g = y, and g = float32(0.7) is in bin 6 of 10 (the product in float64)."""
    gen = _gen(8)
    edges = torch.tensor([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0, 0.35, 2 / 3])
    logits = torch.cat([3 * torch.randn(500, generator=gen), torch.full((9,), -100.0)])
    targets = torch.cat([torch.rand(500, generator=gen), edges])
    keep = torch.cat([torch.rand(500, generator=gen) < 0.9, torch.ones(9, dtype=torch.bool)])
    inp = kernels.ghm_c_inputs(
        logits, targets, keep, index_form=False, ignore_index=-100, bins=bins, reduce_sum=True
    )
    counts = kernels.ghm_c_histogram(inp)
    index = ghm_impl.bin_index((torch.sigmoid(logits) - targets).abs(), bins, keep)
    assert counts.dtype == torch.int64
    assert torch.equal(counts, torch.bincount(index, minlength=bins + 1)[:bins])
    if bins == 10:
        assert index[504].item() == 6 and counts.sum().item() == keep.sum().item()


def test_ghm_r_histogram_is_bincount_and_weight_sum():
    gen = _gen(9)
    pred, target = _box_problem((60, 4), gen)
    weight = torch.rand(60, 4, generator=gen) * (torch.rand(60, 4, generator=gen) < 0.7)
    inp = kernels.ghm_r_inputs(pred, target, weight, mu=0.02, bins=10)
    counts, weight_sum = kernels.ghm_r_histogram(inp)
    d = pred - target
    index = ghm_impl.bin_index(d.abs() / torch.sqrt(d * d + 0.02**2), 10, weight > 0)
    assert torch.equal(counts, torch.bincount(index.reshape(-1), minlength=11)[:10])
    torch.testing.assert_close(weight_sum, weight.sum(dtype=torch.float64))


def test_per_element_atomics_above_hist_max_bins(monkeypatch):
    """Above HIST_MAX_BINS the counts come from per-element atomics: same results."""
    monkeypatch.setattr(kernels, "HIST_MAX_BINS", 16)
    gen = _gen(10)
    logits = 3 * torch.randn(37, 5, generator=gen)
    for bins in (10, 30):
        _ghm_c(logits, torch.rand(37, 5, generator=gen), bins=bins)
        _ghm_r(*_box_problem((37, 5), gen), bins=bins)


# --------------------------------------------------------------------------------------------
# Modules, EMA, autograd
# --------------------------------------------------------------------------------------------


def _module_steps(make, batches, train_steps=3):
    """Run a fresh Module per backend through the batches (``train_steps`` training steps,
    then eval); returns per backend the losses, gradients and final EMA buffer."""
    out = {}
    for backend in ("torch", "triton"):
        crit = make(backend)
        results = []
        for step, (x, *rest) in enumerate(batches):
            crit.train(step < train_steps)
            x = x.clone().requires_grad_(True)
            loss = crit(x, *rest)
            loss.backward()
            results.append((loss.detach(), x.grad))
        out[backend] = results, crit.bin_count_ema.clone()
    return out["torch"], out["triton"]


def _assert_modules_match(ref, got):
    (ref_steps, ref_ema), (steps, ema) = ref, got
    assert torch.equal(ema, ref_ema)  # same counts, same float64 arithmetic
    for (ref_loss, ref_grad), (loss, grad) in zip(ref_steps, steps, strict=True):
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)


def test_ghm_c_module_ema_matches_torch_over_steps():
    gen = _gen(11)
    batches = [
        (3 * torch.randn(17, 5, generator=gen), sigmoid_targets("index", (17, 5), gen))
        for _ in range(4)
    ]
    ref, got = _module_steps(lambda b: fk.GHMCLoss(bins=30, momentum=0.75, backend=b), batches)
    _assert_modules_match(ref, got)
    assert ref[1].any()


def test_ghm_r_module_ema_matches_torch_over_steps():
    gen = _gen(12)
    batches = [
        (*_box_problem((15, 4), gen), (torch.rand(15, 1, generator=gen) < 0.7).float())
        for _ in range(4)
    ]
    ref, got = _module_steps(lambda b: fk.GHMRLoss(momentum=0.7, backend=b), batches)
    _assert_modules_match(ref, got)


def test_modules_store_and_show_backend():
    crit = fk.GHMCLoss(backend="triton")
    assert crit.backend == "triton" and "backend='triton'" in repr(crit)
    assert "backend='auto'" in repr(fk.GHMRLoss())
    for cls in (fk.GHMCLoss, fk.GHMRLoss):
        with pytest.raises(ValueError, match="backend: expected one of"):
            cls(backend="cuda")


def test_retained_graph_second_backward():
    """A second backward through a retained graph relaunches the loss pass: same gradient."""
    gen = _gen(13)
    logits = torch.randn(6, 3, generator=gen, requires_grad=True)
    pred = torch.randn(6, 4, generator=gen, requires_grad=True)
    for x, loss in (
        (logits, fk.ghm_c_loss(logits, torch.tensor([0, 3, 2, 1, 3, 0]), backend="triton")),
        (pred, fk.ghm_r_loss(pred, torch.zeros(6, 4), backend="triton")),
    ):
        loss.backward(retain_graph=True)
        first = x.grad.clone()
        x.grad = None
        loss.backward()
        torch.testing.assert_close(x.grad, first)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("scale", [1.0, 0.37, 2.0**12])
def test_ghm_c_mean_in_the_weights_and_any_grad_output(dtype, reduction, scale):
    """The mean's 1 / N_valid is folded into the per-bin weights and grad_output is applied
    on the device (skipped at 1): equal to the torch backend for ``loss.backward()``, a loss
    weight and a large loss scale, with ignored rows."""
    gen = _gen(16)
    logits = torch.randn(12, 5, generator=gen).to(dtype)
    targets = sigmoid_targets("index", (12, 5), gen)
    _ghm_c(logits, targets, bins=6, reduction=reduction, scale=scale)


def test_double_backward_is_refused():
    """The kernels' gradient is formed in forward: create_graph=True raises (GHM-R names the
    torch backend, whose second derivative is exact) instead of a silently zero one."""
    gen = _gen(14)
    logits = torch.randn(6, 3, generator=gen, requires_grad=True)
    pred = torch.randn(6, 4, generator=gen, requires_grad=True)
    loss_c = fk.ghm_c_loss(logits, torch.tensor([0, 3, 2, 1, 3, 0]), backend="triton")
    with pytest.raises(RuntimeError, match=r"GHM-C .*double backward \(create_graph=True\)"):
        torch.autograd.grad(loss_c, logits, create_graph=True)
    loss_r = fk.ghm_r_loss(pred, torch.zeros(6, 4), backend="triton")
    with pytest.raises(RuntimeError, match=r"GHM-R .*create_graph=True\); use backend='torch'"):
        torch.autograd.grad(loss_r, pred, create_graph=True)


# --------------------------------------------------------------------------------------------
# dispatch and host syncs
# --------------------------------------------------------------------------------------------


def test_forced_triton_raises_where_it_cannot_run(monkeypatch):
    x64 = torch.randn(4, 3, dtype=torch.float64)
    for fn in (fk.ghm_c_loss, fk.ghm_r_loss):
        with pytest.raises(ValueError, match=r"backend='triton' requires dtype"):
            fn(x64, torch.rand(4, 3, dtype=torch.float64), backend="triton")
        torch.testing.assert_close(
            fn(x64, torch.zeros(4, 3, dtype=torch.float64), backend="auto"),
            fn(x64, torch.zeros(4, 3, dtype=torch.float64), backend="torch"),
        )
        with pytest.raises(ValueError, match="backend: expected one of"):
            fn(torch.randn(3), torch.rand(3), backend="cuda")
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    with pytest.raises(ValueError, match=r"backend='triton' requires triton"):
        fk.GHMCLoss(backend="triton")(torch.randn(3), torch.rand(3))
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    with pytest.raises(ValueError, match=r"backend='triton' requires a CUDA tensor"):
        fk.GHMRLoss(backend="triton")(torch.randn(3), torch.zeros(3))


def _forbid(*args, **kwargs):
    raise AssertionError("host sync on the triton path")


def test_triton_path_makes_no_host_sync(monkeypatch):
    """With value checks off (as on CUDA), forward, EMA update and backward never read a
    tensor back: item / tolist / bool / int / float / nonzero / bincount all raise."""
    gen = _gen(14)
    logits = torch.randn(9, 4, generator=gen, requires_grad=True)
    pred = torch.randn(9, 4, generator=gen, requires_grad=True)
    monkeypatch.setattr(_targets, "may_read_values", lambda t: False)
    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero"):
        monkeypatch.setattr(torch.Tensor, name, _forbid)
    monkeypatch.setattr(torch, "bincount", _forbid)
    monkeypatch.setattr(torch, "nonzero", _forbid)
    crit_c = fk.GHMCLoss(bins=30, backend="triton")
    crit_r = fk.GHMRLoss(backend="triton")
    losses = [
        crit_c(logits, torch.tensor([0, 4, 2, -100, 1, 4, 3, 0, 2])),
        crit_c(logits, torch.randint(0, 2, (9, 4), generator=gen), torch.rand(9, 1) > 0.2),
        fk.ghm_c_loss(logits, torch.rand(9, 4, generator=gen), reduction="none", backend="triton"),
        crit_r(pred, torch.zeros(9, 4), torch.rand(9, 1, generator=gen)),
    ]
    torch.autograd.backward([loss.sum() for loss in losses])
    monkeypatch.undo()
    assert logits.grad.abs().sum() > 0 and pred.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------
# two ranks (gloo) with sync on
# --------------------------------------------------------------------------------------------

WORLD = 2


def _rendezvous() -> str:
    """A fresh file for gloo's rendezvous: unlike a TCP port picked in advance, no other
    process (e.g. the spawn of a test in the other xdist worker) can take it meanwhile."""
    return f"file://{tempfile.mkdtemp(prefix='focalkit-dist-')}/store"


def _rank_entry(rank: int, init: str) -> None:
    """Each rank: the Modules with sync=True on its half of the batch, torch against triton
    (losses, logit gradients and EMA buffers over 2 training steps)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        gen = _gen(15)
        rows = slice(rank * 8, rank * 8 + 8)  # each rank: 8 of the 16 rows of 2 batches
        logits = 3 * torch.randn(2, 16, 4, generator=gen)
        labels = torch.randint(0, 5, (2, 16), generator=gen)
        pred, target = _box_problem((2, 16, 4), gen)
        weight = (torch.rand(2, 16, 1, generator=gen) < 0.7).float()
        cases = {
            "C": (
                lambda b: fk.GHMCLoss(bins=10, momentum=0.75, sync=True, backend=b),
                [(logits[s, rows], labels[s, rows]) for s in (0, 1)],
            ),
            "R": (
                lambda b: fk.GHMRLoss(momentum=0.7, sync=True, backend=b),
                [(pred[s, rows], target[s, rows], weight[s, rows]) for s in (0, 1)],
            ),
        }
        for key, (make, batches) in cases.items():
            ref, got = _module_steps(make, batches, train_steps=2)
            assert ref[1].any(), f"GHM-{key}: empty EMA"
            _assert_modules_match(ref, got)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_ranks_sync_triton_equals_torch():
    """2 gloo ranks, sync=True: the triton backend's losses, gradients and (global) EMA
    buffers equal the torch backend's on every rank."""
    try:
        mp.spawn(_rank_entry, args=(_rendezvous(),), nprocs=WORLD, join=True)
    except mp.ProcessRaisedException as exc:
        pytest.fail(str(exc), pytrace=False)
