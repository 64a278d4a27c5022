"""Float targets as detection code writes them, negative class weights, and ``pos_weight``.

* A dense float label map masked with ``ignore_index`` (-100): those entries contribute no
  loss, no gradient and do not count in the mean's denominator, in ``sigmoid_focal_loss``,
  ``ghm_c_loss`` and their Modules, on every CPU backend and where values cannot be read.
* Other float targets outside [0, 1], negative class weights, alpha outside [0, 1]:
  ``ValueError`` by default where reading values is free (CPU, eager), elsewhere with
  ``validate=True``.
* ``pos_weight`` with ``BCEWithLogitsLoss``'s meaning.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import focalkit as fk
import focalkit.functional._targets as targets_impl
from _focal_refs import sigmoid_focal_ref
from _ghm_box_refs import ghm_c_reference

F64 = {"rtol": 1e-10, "atol": 1e-12}
IGNORE = -100


def _masked_problem(seed=0, shape=(6, 5)):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
    y = torch.rand(shape, generator=gen, dtype=torch.float64)
    y[(torch.rand(shape, generator=gen) < 0.4)] = 1.0
    ignored = torch.rand(shape, generator=gen) < 0.25
    y[ignored] = IGNORE
    return x, y, ignored


def _reading(monkeypatch, reads: bool):
    """Simulate a device where reading values would sync (``reads=False``)."""
    if not reads:
        monkeypatch.setattr(targets_impl, "may_read_values", lambda tensor: False)


@pytest.mark.parametrize("reads", [True, False], ids=["cpu-reads", "no-reads"])
@pytest.mark.parametrize("backend", ["torch", "chunked"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_sigmoid_focal_ignores_float_targets_equal_to_ignore_index(
    monkeypatch, reduction, backend, reads
):
    """Equal to the reference on the non-ignored entries (weight 0 elsewhere, mean over the
    non-ignored count); zero gradient at ignored entries; finite everywhere."""
    _reading(monkeypatch, reads)
    x, y, ignored = _masked_problem()
    xg = x.clone().requires_grad_(True)
    loss = fk.sigmoid_focal_loss(xg, y, reduction=reduction, backend=backend)
    xr = x.clone().requires_grad_(True)
    y_clean = torch.where(ignored, 0.0, y)
    ref = sigmoid_focal_ref(xr, y_clean, weight=(~ignored).double(), reduction="none")
    if reduction == "mean":
        ref = ref.sum() / (~ignored).sum()
    elif reduction == "sum":
        ref = ref.sum()
    torch.testing.assert_close(loss, ref, **F64)
    loss.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad, **F64)
    assert (xg.grad[ignored] == 0).all()


def test_sigmoid_focal_module_and_index_and_dense_forms_agree_on_ignored_rows():
    """A float one-hot map with whole rows at -100 equals the class-index form with those
    rows at ignore_index (the value -7.5e5 of a loss that used -100 as a target is gone)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, generator=gen)
    labels = torch.tensor([0, 3, 2, IGNORE, 1, 3, IGNORE, 0])
    dense = torch.zeros(8, 3)
    for row, c in enumerate(labels.tolist()):
        if c == IGNORE:
            dense[row] = IGNORE
        elif c < 3:
            dense[row, c] = 1.0
    crit = fk.SigmoidFocalLoss()
    torch.testing.assert_close(crit(x, dense), fk.sigmoid_focal_loss(x, labels))
    assert 0 < float(crit(x, dense)) < 1


@pytest.mark.parametrize("reads", [True, False], ids=["cpu-reads", "no-reads"])
@pytest.mark.parametrize("backend", ["torch", "chunked"])
def test_ghm_c_ignores_float_targets_equal_to_ignore_index(monkeypatch, backend, reads):
    """GHM-C: ignored entries get weight 0, count in no bin and not in N_valid (the per-bin
    loop reference with them masked through ``valid``)."""
    _reading(monkeypatch, reads)
    x, y, ignored = _masked_problem(seed=2)
    xg = x.clone().requires_grad_(True)
    loss = fk.ghm_c_loss(xg, y, bins=6, backend=backend)
    loss.backward()
    xr = x.clone().requires_grad_(True)
    ref, _ = ghm_c_reference(xr, torch.where(ignored, 0.0, y), ~ignored, bins=6)
    ref.backward()
    torch.testing.assert_close(loss, ref, **F64)
    torch.testing.assert_close(xg.grad, xr.grad, **F64)
    crit = fk.GHMCLoss(bins=6, momentum=0.0).eval()
    torch.testing.assert_close(crit(x, y), ref.detach(), **F64)


def test_ignore_index_none_reads_nothing_as_ignored():
    """``ignore_index=None``: -100 is no label then; on the CPU it is an out-of-range target."""
    with pytest.raises(ValueError, match=r"targets: expected float targets in \[0, 1\], got"):
        fk.sigmoid_focal_loss(torch.zeros(2), torch.tensor([0.5, -100.0]), ignore_index=None)
    x, y = torch.randn(3, 2), torch.rand(3, 2)
    torch.testing.assert_close(
        fk.sigmoid_focal_loss(x, y, ignore_index=None), fk.sigmoid_focal_loss(x, y)
    )


@pytest.mark.parametrize(
    "targets",
    [[0.5, 1.5], [-0.1, 0.5], [float("nan"), 0.5], [-99.0, 0.5]],
    ids=["above", "below", "nan", "near-ignore"],
)
def test_float_targets_outside_unit_interval_raise_where_reading_is_free(monkeypatch, targets):
    t = torch.tensor(targets)
    for fn in (fk.sigmoid_focal_loss, fk.ghm_c_loss):
        with pytest.raises(ValueError, match=r"targets: expected float targets in \[0, 1\]"):
            fn(torch.zeros(2), t)
    _reading(monkeypatch, False)
    fk.sigmoid_focal_loss(torch.zeros(2), t)  # not read: no sync, no error
    with pytest.raises(ValueError, match=r"targets: expected float targets in \[0, 1\]"):
        fk.sigmoid_focal_loss(torch.zeros(2), t, validate=True)


@pytest.mark.parametrize(
    "call",
    [
        lambda v: fk.softmax_focal_loss(torch.zeros(2, 3), torch.tensor([0, 1]), weight=v),
        lambda v: fk.softmax_focal_loss(torch.zeros(2, 3), torch.tensor([0, 1]), alpha=v),
        lambda v: fk.sigmoid_focal_loss(torch.zeros(2, 3), torch.tensor([0, 3]), pos_weight=v),
    ],
    ids=["softmax-weight", "softmax-alpha", "sigmoid-pos_weight"],
)
def test_negative_class_weights_raise_where_reading_is_free(call):
    bad = torch.tensor([1.0, -0.5, 2.0])
    with pytest.raises(ValueError, match=r"(weight|alpha|pos_weight): expected values >= 0"):
        call(bad)
    assert torch.isfinite(call(torch.tensor([1.0, 0.5, 2.0])))


def test_negative_class_weights_unchecked_off_the_cpu_unless_validate(monkeypatch):
    import focalkit.functional.focal as focal_impl

    monkeypatch.setattr(focal_impl, "may_read_values", lambda tensor: False)
    bad = torch.tensor([1.0, -0.5, 2.0])
    fk.softmax_focal_loss(torch.zeros(2, 3), torch.tensor([0, 1]), weight=bad, validate=False)
    with pytest.raises(ValueError, match=r"weight: expected values >= 0"):
        fk.softmax_focal_loss(torch.zeros(2, 3), torch.tensor([0, 1]), weight=bad, validate=True)


def test_alpha_numbers_outside_their_range_always_raise():
    """alpha weights the positives of the sigmoid losses: in [0, 1] (torchvision's alpha=-1
    'off' is alpha=None here); the softmax loss's global alpha is a scale >= 0."""
    with pytest.raises(ValueError, match=r"alpha: expected a number in \[0, 1\].*alpha=None"):
        fk.sigmoid_focal_loss(torch.zeros(2, 3), torch.tensor([0, 1]), alpha=-1.0)
    with pytest.raises(ValueError, match=r"alpha: expected values in \[0, 1\]"):
        fk.sigmoid_focal_loss(
            torch.zeros(2, 3), torch.tensor([0, 1]), alpha=torch.tensor([0.5, 1.5, 0.2])
        )
    with pytest.raises(ValueError, match=r"alpha: expected a number >= 0"):
        fk.softmax_focal_loss(torch.zeros(2, 3), torch.tensor([0, 1]), alpha=-1.0)
    assert float(fk.softmax_focal_loss(torch.zeros(2, 3), torch.tensor([0, 1]), alpha=2.0)) > 0


# --------------------------------------------------------------------------------------------
# pos_weight
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "chunked"])
@pytest.mark.parametrize("form", ["soft", "binary", "index"])
@pytest.mark.parametrize("pos_weight", ["scalar", "vector"])
def test_pos_weight_at_gamma_zero_equals_bce_with_logits(pos_weight, form, backend):
    """gamma 0, alpha None: F.binary_cross_entropy_with_logits(pos_weight=...) in value and
    gradient, every reduction, every target form (index targets against their one-hot)."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(9, 4, generator=gen, dtype=torch.float64) * 4
    pw = torch.tensor(2.5, dtype=torch.float64)
    if pos_weight == "vector":
        pw = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    if form == "index":
        targets = torch.randint(0, 5, (9,), generator=gen)
        dense = F.one_hot(targets, 5)[:, :4].double()
    else:
        dense = torch.rand(9, 4, generator=gen, dtype=torch.float64)
        if form == "binary":
            dense = (dense < 0.4).double()
        targets = dense
    for reduction in ["none", "mean", "sum"]:
        xg = x.clone().requires_grad_(True)
        loss = fk.sigmoid_focal_loss(
            xg, targets, alpha=None, gamma=0.0, pos_weight=pw, reduction=reduction, backend=backend
        )
        xt = x.clone().requires_grad_(True)
        ref = F.binary_cross_entropy_with_logits(xt, dense, pos_weight=pw, reduction=reduction)
        torch.testing.assert_close(loss, ref, **F64)
        loss.sum().backward()
        ref.sum().backward()
        torch.testing.assert_close(xg.grad, xt.grad, **F64)


@pytest.mark.parametrize("backend", ["torch", "chunked"])
@pytest.mark.parametrize("form", ["binary", "index", "soft"])
def test_pos_weight_multiplies_the_positive_term_of_focal_loss(form, backend):
    """With gamma 2 and a per-class alpha: a_t q^g BCE_w, BCE_w = -(w y log p + (1-y) log(1-p));
    for hard targets the positives' terms are w times those without pos_weight."""
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(7, 3, generator=gen, dtype=torch.float64) * 3
    pw = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64)
    alpha = torch.tensor([0.2, 0.5, 0.7], dtype=torch.float64)
    if form == "index":
        targets = torch.tensor([0, 3, 2, IGNORE, 1, 3, 0])
    else:
        targets = torch.rand(7, 3, generator=gen, dtype=torch.float64)
        if form == "binary":
            targets = (targets < 0.5).double()
    kw = {"alpha": alpha, "reduction": "none", "backend": backend}
    with_pw = fk.sigmoid_focal_loss(x, targets, pos_weight=pw, **kw)
    if form == "soft":
        p = torch.sigmoid(x)
        q = p * (1 - targets) + (1 - p) * targets
        bce = -(pw * targets * F.logsigmoid(x) + (1 - targets) * F.logsigmoid(-x))
        a_t = alpha * targets + (1 - alpha) * (1 - targets)
        torch.testing.assert_close(with_pw, a_t * q**2 * bce, **F64)
        return
    without = fk.sigmoid_focal_loss(x, targets, **kw)
    if form == "index":
        positive = F.one_hot(targets.clamp(0, 3), 4)[:, :3].bool() & (targets != IGNORE)[:, None]
    else:
        positive = targets.bool()
    expected = torch.where(positive, without * pw, without)
    torch.testing.assert_close(with_pw, expected, **F64)


def test_pos_weight_module_keeps_it_as_a_buffer():
    crit = fk.SigmoidFocalLoss(pos_weight=torch.tensor([1.0, 3.0]), gamma=0.0, alpha=None)
    assert "pos_weight" in crit.state_dict()
    x, y = torch.randn(4, 2), (torch.rand(4, 2) < 0.5).float()
    torch.testing.assert_close(
        crit(x, y), F.binary_cross_entropy_with_logits(x, y, pos_weight=torch.tensor([1.0, 3.0]))
    )
    with pytest.raises(ValueError, match=r"pos_weight: expected a finite number >= 0"):
        fk.SigmoidFocalLoss(pos_weight=-1.0)
    with pytest.raises(ValueError, match=r"pos_weight: expected a number or a tensor of shape"):
        fk.sigmoid_focal_loss(x, y, pos_weight=torch.ones(3))
