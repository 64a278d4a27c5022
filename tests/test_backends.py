"""Every CPU backend against the plain formula and the float64 references, and the dispatch
table that chooses between them.

The ``"torch"`` backend is the one plain formula of each loss; ``"chunked"`` is the CPU fast
path (scratch buffers, cache-sized chunks, specialised hard and class-index targets). Each is
held to the independent float64 references of ``_focal_refs`` / ``_ghm_box_refs`` and to the
other on float32 inputs, in small chunks so that one call walks many of them. (The Triton
backend is held to ``backend="torch"`` in the ``test_triton_*`` files.)
"""

from __future__ import annotations

import pytest
import torch

import focalkit as fk
from _focal_refs import sigmoid_focal_ref, softmax_focal_ref
from _ghm_box_refs import ghm_c_reference
from focalkit.kernels import chunked, dispatch
from focalkit.kernels.dispatch import recorded_choices, resolve_backend

IGNORE = -100
F32 = {"rtol": 1e-5, "atol": 1e-6}
F64 = {"rtol": 1e-10, "atol": 1e-12}
CPU_BACKENDS = ["torch", "chunked"]


def _value_and_grad(fn, logits, targets, **kw):
    x = logits.clone().requires_grad_(True)
    loss = fn(x, targets, **kw)
    (
        loss * torch.linspace(0.5, 1.5, loss.numel()).reshape(loss.shape).to(loss.dtype)
    ).sum().backward()
    return loss.detach(), x.grad


def _ref_value_and_grad(ref, logits, targets, **kw):
    x = logits.detach().double().requires_grad_(True)
    loss = ref(x, targets, **kw)
    (loss * torch.linspace(0.5, 1.5, loss.numel()).reshape(loss.shape).double()).sum().backward()
    return loss.detach(), x.grad


def _sigmoid_problem(shape, kind, gen):
    logits = torch.randn(shape, generator=gen, dtype=torch.float64) * 4
    flat = logits.view(-1)
    flat[::11] = 30.0  # saturated: p = 1 to float precision
    flat[5::13] = -30.0
    num_classes = shape[-1]
    if kind == "soft":
        targets = torch.rand(shape, generator=gen, dtype=torch.float64)
        targets.view(-1)[::3] = 1.0  # soft and hard entries in one tensor
    elif kind == "binary":
        targets = (torch.rand(shape, generator=gen) < 0.3).double()
    elif kind == "int_dense":
        targets = (torch.rand(shape, generator=gen) < 0.3).long()
        targets.view(-1)[2::9] = IGNORE
    else:  # index: C = background, some rows ignored
        targets = torch.randint(0, num_classes + 1, shape[:-1], generator=gen)
        targets.view(-1)[3::7] = IGNORE
        targets.view(-1)[::5] = num_classes
    return logits, targets


SIGMOID_CASES = [
    # (shape, target kind, alpha, gamma, weight shape or None)
    ((29, 7), "binary", 0.25, 2.0, None),
    ((29, 7), "binary", "vector", 0.5, None),
    ((29, 7), "soft", 0.25, 2.0, None),
    ((29, 7), "soft", None, 0.5, (29, 1)),
    ((29, 7), "int_dense", 0.25, 1.0, None),
    ((29, 7), "int_dense", "vector", 0.0, None),
    ((29, 7), "index", 0.25, 2.0, None),
    ((29, 7), "index", "vector", 0.5, None),
    ((29, 7), "index", None, "flsd53", None),
    ((29, 7), "index", 0.25, 2.0, (7,)),
    ((301,), "binary", 0.25, 2.0, None),
    ((301,), "soft", 0.75, 2.0, None),
    ((3, 1, 11, 9), "binary", 0.25, 2.0, None),
    ((3, 1, 11, 9), "int_dense", None, 2.0, (1, 1, 1, 9)),
    ((64, 1), "binary", 0.25, 2.0, None),
    ((64, 1), "index", 0.25, 2.0, None),
]


def _alpha_of(alpha, shape):
    if alpha == "vector":
        return torch.linspace(0.1, 0.9, shape[-1], dtype=torch.float64)
    return alpha


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("case", SIGMOID_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}-{c[3]}-{c[4]}")
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_sigmoid_cpu_backends_match_reference(monkeypatch, backend, case, reduction):
    """float64 inputs, chunks of 40 elements: values and gradients equal the reference."""
    monkeypatch.setattr(chunked, "FOCAL_CHUNK_ELEMENTS", 40)
    shape, kind, alpha, gamma, weight_shape = case
    gen = torch.Generator().manual_seed(sum(shape) + len(kind))
    logits, targets = _sigmoid_problem(shape, kind, gen)
    kw = {"alpha": _alpha_of(alpha, shape), "gamma": gamma, "reduction": reduction}
    if weight_shape is not None:
        kw["weight"] = torch.rand(weight_shape, generator=gen, dtype=torch.float64) + 0.5
    with recorded_choices() as choices:
        got, got_g = _value_and_grad(fk.sigmoid_focal_loss, logits, targets, backend=backend, **kw)
    assert [c.backend for c in choices] == [backend]
    exp, exp_g = _ref_value_and_grad(sigmoid_focal_ref, logits, targets, **kw)
    torch.testing.assert_close(got, exp, **F64)
    torch.testing.assert_close(got_g, exp_g, **F64)


@pytest.mark.parametrize("case", SIGMOID_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}-{c[3]}-{c[4]}")
def test_sigmoid_chunked_equals_plain_formula_in_float32(monkeypatch, case):
    """float32, chunks of 40 elements: the chunked backend gives the plain formula's loss and
    gradient (every reduction)."""
    monkeypatch.setattr(chunked, "FOCAL_CHUNK_ELEMENTS", 40)
    shape, kind, alpha, gamma, weight_shape = case
    gen = torch.Generator().manual_seed(7 + sum(shape))
    logits, targets = _sigmoid_problem(shape, kind, gen)
    logits = logits.float()
    if targets.is_floating_point():
        targets = targets.float()
    kw = {"alpha": _alpha_of(alpha, shape), "gamma": gamma}
    if weight_shape is not None:
        kw["weight"] = torch.rand(weight_shape, generator=gen) + 0.5
    for reduction in ["none", "mean", "sum"]:
        plain = _value_and_grad(
            fk.sigmoid_focal_loss, logits, targets, reduction=reduction, backend="torch", **kw
        )
        fast = _value_and_grad(
            fk.sigmoid_focal_loss, logits, targets, reduction=reduction, backend="chunked", **kw
        )
        torch.testing.assert_close(fast[0], plain[0], **F32)
        torch.testing.assert_close(fast[1], plain[1], **F32)


def test_sigmoid_chunked_walks_a_1d_input_in_element_chunks(monkeypatch):
    """A (N,) logit vector is cut into chunks of FOCAL_CHUNK_ELEMENTS elements (not one row of
    N): the scratch buffers are chunk-sized, and the result is the plain formula's."""
    sizes = []
    real = chunked._Scratch

    def spy(rows, cols, *args):
        sizes.append(rows * cols)
        return real(rows, cols, *args)

    monkeypatch.setattr(chunked, "FOCAL_CHUNK_ELEMENTS", 64)
    monkeypatch.setattr(chunked, "_Scratch", spy)
    gen = torch.Generator().manual_seed(3)
    logits, targets = _sigmoid_problem((1000,), "binary", gen)
    fast = fk.sigmoid_focal_loss(logits.float(), targets.float(), backend="chunked")
    plain = fk.sigmoid_focal_loss(logits.float(), targets.float(), backend="torch")
    assert sizes == [64]
    torch.testing.assert_close(fast, plain, **F32)


SOFTMAX_CASES = [
    # (shape, alpha, gamma, weighted)
    ((37, 6), None, 2.0, False),
    ((37, 6), 0.5, 0.5, True),
    ((37, 6), "vector", 0.0, True),
    ((37, 6), "vector", "flsd53", False),
    ((4, 5, 3, 7), None, 2.0, True),
    ((6,), "vector", 2.0, False),
]


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("case", SOFTMAX_CASES, ids=str)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_softmax_cpu_backends_match_reference(monkeypatch, backend, case, reduction):
    """Class-index targets with ignored rows, float64: equal to the reference."""
    monkeypatch.setattr(chunked, "FOCAL_CHUNK_ELEMENTS", 20)
    shape, alpha, gamma, weighted = case
    gen = torch.Generator().manual_seed(len(shape) * 13 + shape[0])
    num_classes = shape[1] if len(shape) > 1 else shape[0]
    logits = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
    index_shape = (shape[0], *shape[2:]) if len(shape) > 1 else ()
    targets = torch.randint(0, num_classes, index_shape, generator=gen)
    if targets.dim():
        targets.view(-1)[2::5] = IGNORE
    kw = {"gamma": gamma, "reduction": reduction}
    if alpha == "vector":
        kw["alpha"] = torch.linspace(0.2, 0.8, num_classes, dtype=torch.float64)
    elif alpha is not None:
        kw["alpha"] = alpha
    if weighted:
        kw["weight"] = torch.rand(num_classes, generator=gen, dtype=torch.float64) + 0.5
    with recorded_choices() as choices:
        got, got_g = _value_and_grad(fk.softmax_focal_loss, logits, targets, backend=backend, **kw)
    assert [c.backend for c in choices] == [backend]
    exp, exp_g = _ref_value_and_grad(softmax_focal_ref, logits, targets, **kw)
    torch.testing.assert_close(got, exp, **F64)
    torch.testing.assert_close(got_g, exp_g, **F64)


@pytest.mark.parametrize(
    "kw",
    [{"label_smoothing": 0.1}, {"probabilities": True}],
    ids=["label_smoothing", "probabilities"],
)
def test_softmax_chunked_refuses_what_only_the_plain_formula_has(kw):
    """The chunked softmax path covers class indices without smoothing: "auto" takes torch
    for the rest, and naming "chunked" raises, naming the option."""
    logits = torch.randn(5, 4)
    targets = torch.randint(0, 4, (5,))
    if kw.pop("probabilities", False):
        targets = torch.softmax(torch.randn(5, 4), -1)
    with recorded_choices() as choices:
        fk.softmax_focal_loss(logits, targets, **kw)
    assert choices[0].backend == "torch"
    assert "chunked skipped, features" in choices[0].reason
    with pytest.raises(ValueError, match=r"backend='chunked' requires options the backend"):
        fk.softmax_focal_loss(logits, targets, backend="chunked", **kw)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_ghm_c_cpu_backends_match_reference(monkeypatch, backend, reduction):
    """GHM-C, float64, chunks of 50 elements: the per-bin loop reference (values and
    gradients; the weights are constants)."""
    monkeypatch.setattr(chunked, "GHM_CHUNK_ELEMENTS", 50)
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(41, 7, generator=gen, dtype=torch.float64) * 3
    targets = (torch.rand(41, 7, generator=gen) < 0.3).double()
    valid = torch.rand(41, 7, generator=gen) > 0.1
    x = logits.clone().requires_grad_(True)
    loss = fk.ghm_c_loss(x, targets, bins=10, valid=valid, reduction=reduction, backend=backend)
    xr = logits.clone().requires_grad_(True)
    ref_mean, w = ghm_c_reference(xr, targets, valid, bins=10)
    total = max(float(valid.sum()), 1.0)
    ref = {"mean": ref_mean, "sum": ref_mean * total, "none": None}[reduction]
    if ref is None:
        bce = torch.nn.functional.binary_cross_entropy_with_logits(xr, targets, reduction="none")
        ref = w * bce
    torch.testing.assert_close(loss, ref, **F64)
    loss.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, **F64)


def test_ghm_c_chunked_counts_equal_the_plain_counts(monkeypatch):
    """The chunked histogram (bincount per chunk) equals the plain one (one scatter_add)."""
    from focalkit.functional.ghm import bin_pass_plain

    monkeypatch.setattr(chunked, "GHM_CHUNK_ELEMENTS", 64)
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(1001, generator=gen) * 4
    y = (torch.rand(1001, generator=gen) < 0.5).float()
    keep = torch.rand(1001, generator=gen) > 0.2
    index, counts = chunked.ghm_bin_pass(x, y, keep, 30)
    index_plain, counts_plain = bin_pass_plain(x, y, keep, 30)
    assert torch.equal(index, index_plain)
    assert torch.equal(counts, counts_plain)


# --------------------------------------------------------------------------------------------
# the dispatch table
# --------------------------------------------------------------------------------------------


def test_every_loss_backend_pair_of_the_table_is_accepted_and_others_refused():
    """Each loss accepts "auto", "torch" and its own fast backends, and refuses the rest
    with a ValueError that lists what it has."""
    x = torch.randn(3, 4)
    for loss, fast in dispatch.LOSS_BACKENDS.items():
        for name in dispatch.BACKENDS:
            if name in ("auto", "torch", *fast):
                dispatch.check_backend(name, loss)
            else:
                with pytest.raises(ValueError, match=rf"backend: expected one of .* for {loss}"):
                    resolve_backend(loss, name, x)


def test_auto_on_cpu_takes_chunked_where_a_loss_has_it_and_says_why():
    x = torch.randn(4, 3)
    for loss, fast in dispatch.LOSS_BACKENDS.items():
        choice = resolve_backend(loss, "auto", x)
        expected = "chunked" if "chunked" in fast else "torch"
        assert choice.backend == expected, loss
        if "triton" in fast:
            assert "triton skipped, device: a tensor on cpu" in choice.reason or (
                "triton skipped, triton:" in choice.reason
            )
    assert (
        resolve_backend("focal_l1_loss", "auto", x).reason == "auto: no fast backend for this loss"
    )


def test_auto_inside_torch_compile_takes_the_plain_formula(monkeypatch):
    """While dynamo traces, "auto" is "torch" (Inductor fuses the plain formula) and nothing
    is recorded from inside the graph."""
    monkeypatch.setattr(dispatch, "is_compiling", lambda: True)
    with recorded_choices() as choices:
        choice = resolve_backend("sigmoid_focal_loss", "auto", torch.randn(3))
    assert choice.backend == "torch"
    assert choice.reason == "auto: inside torch.compile (Inductor fuses it)"
    assert choices == []


def test_named_chunked_backend_off_the_cpu_raises():
    x = torch.randn(3, device="meta")
    with pytest.raises(
        ValueError, match=r"backend='chunked' requires a CPU tensor, found a tensor on meta"
    ):
        resolve_backend("sigmoid_focal_loss", "chunked", x)


def test_named_chunked_backend_runs_under_torch_compile():
    """A named "chunked" backend inside torch.compile runs eagerly outside the graph and
    gives the eager result."""
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(9, 4, generator=gen)
    labels = torch.randint(0, 5, (9,), generator=gen)

    def fn(x):
        return fk.sigmoid_focal_loss(x, labels, backend="chunked")

    compiled = torch.compile(fn, backend="eager")
    torch.testing.assert_close(compiled(logits), fn(logits), rtol=0, atol=0)


def test_recorded_choices_nest_and_see_only_their_own_calls():
    x, y = torch.randn(2, 3), torch.tensor([0, 3])
    with recorded_choices() as outer:
        fk.sigmoid_focal_loss(x, y)
        with recorded_choices() as inner:
            fk.softmax_focal_loss(x, torch.tensor([0, 2]), backend="torch")
        fk.giou_loss(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([[0.0, 0, 2, 2]]))
    assert [(c.loss, c.backend) for c in inner] == [("softmax_focal_loss", "torch")]
    assert [(c.loss, c.backend) for c in outer] == [
        ("sigmoid_focal_loss", "chunked"),
        ("box_loss", "torch"),
    ]
    assert inner[0].reason == "requested"


def test_auto_takes_triton_only_where_the_kernel_is_verified(monkeypatch):
    """On a device whose architecture is not in TRITON_VERIFIED, "auto" passes the kernel by
    (and says so) while a named "triton" still runs it; the interpreter is verified."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = torch.randn(4, 3)
    assert dispatch.device_arch(x) == "interpreter"
    assert resolve_backend("sigmoid_focal_loss", "auto", x).backend == "triton"
    monkeypatch.setattr(dispatch, "device_arch", lambda tensor: "sm_90")
    choice = resolve_backend("sigmoid_focal_loss", "auto", x)
    assert choice.backend == "chunked"
    assert "triton skipped, verified: the sigmoid_focal_loss kernel is not verified on sm_90" in (
        choice.reason
    )
    assert resolve_backend("sigmoid_focal_loss", "triton", x).backend == "triton"
    monkeypatch.setitem(
        dispatch.TRITON_VERIFIED, "sigmoid_focal_loss", frozenset({"interpreter", "sm_90"})
    )
    assert resolve_backend("sigmoid_focal_loss", "auto", x).backend == "triton"


def test_no_kernel_is_verified_on_a_gpu_yet():
    """The record the README states: every kernel has run in the interpreter only."""
    assert set(dispatch.TRITON_VERIFIED) == {
        loss for loss, fast in dispatch.LOSS_BACKENDS.items() if "triton" in fast
    }
    assert all(archs == {"interpreter"} for archs in dispatch.TRITON_VERIFIED.values())
