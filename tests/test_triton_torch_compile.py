"""The backends inside ``torch.compile`` (Triton's interpreter on CPU stands in for CUDA, so
``backend="auto"`` would pick the kernels in eager mode here).

* ``"auto"`` compiles with ``fullgraph=True``: it takes the torch path, which dynamo traces
  whole (a kernel launch inside the graph would make ``fullgraph=True`` fail), and gives the
  torch backend's eager values and gradients.
* A forced ``"triton"`` runs the kernels eagerly outside the graph (a graph break): the same
  values and gradients as in eager mode, the kernels launched once per loss call.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import focalkit as fk
import test_cuda
from _triton_interp import import_kernel, interpret  # noqa: F401 (interpret: autouse fixture)

pytestmark = pytest.mark.triton

KERNELS = {
    name: import_kernel(f"focalkit.kernels.triton_{name}")
    for name in ("sigmoid_focal", "softmax_focal", "ghm", "box", "dfl")
}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _boxes(n: int, gen: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen) * 10
    return torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=gen) * 5], dim=-1)


def _cases():
    """(name, loss(x, target, backend), x, target, module holding the launch, its name)."""
    gen = _gen(0)
    logits = torch.randn(12, 5, generator=gen)
    labels = torch.randint(0, 6, (12,), generator=gen)  # 5 = background for the sigmoid loss
    soft = torch.rand(12, 5, generator=gen)
    pred = _boxes(10, gen)
    target = (pred + torch.randn(10, 4, generator=gen) * 0.3).detach()
    target = torch.cat([target[:, :2], torch.maximum(target[:, 2:], target[:, :2] + 0.1)], -1)
    sig = KERNELS["sigmoid_focal"]
    ghm = KERNELS["ghm"]
    scores = torch.rand(12, generator=gen)
    iou = torch.where(soft > 0.8, soft, 0.0)
    dfl_pred = torch.randn(6, 4, 9, generator=gen)
    dfl_target = torch.rand(6, 4, generator=gen) * 8
    return [
        ("sigmoid dense", fk.sigmoid_focal_loss, logits, soft, sig, "_launch"),
        ("sigmoid index", fk.sigmoid_focal_loss, logits, labels, sig, "_launch"),
        (
            "softmax",
            lambda x, t, backend: fk.softmax_focal_loss(x, t.clamp_max(4), backend=backend),
            logits,
            labels,
            KERNELS["softmax_focal"],
            "_launch",
        ),
        ("ghm_c", fk.ghm_c_loss, logits, soft.round(), ghm, "_ghm_c_launch"),
        ("ghm_r", fk.ghm_r_loss, pred * 0.01, target * 0.01, ghm, "_ghm_r_launch"),
        ("ciou", fk.ciou_loss, pred, target, KERNELS["box"], "_launch"),
        (
            "qfl index",
            lambda x, t, backend: fk.quality_focal_loss(x, t, scores, backend=backend),
            logits,
            labels,
            sig,
            "_launch",
        ),
        ("vfl dense", fk.varifocal_loss, logits, iou, sig, "_launch"),
        ("dfl", fk.distribution_focal_loss, dfl_pred, dfl_target, KERNELS["dfl"], "_launch"),
        (
            "poly1 ce",
            lambda x, t, backend: fk.poly1_cross_entropy(x, t.clamp_max(4), backend=backend),
            logits,
            labels,
            KERNELS["softmax_focal"],
            "_launch",
        ),
    ]


CASES = _cases()
IDS = [c[0] for c in CASES]


def _value_and_grad(fn, x, target):
    x = x.detach().clone().requires_grad_(True)
    loss = fn(x, target)
    loss.backward()
    return loss.detach(), x.grad


def _count_launches(monkeypatch, module, name) -> list[int]:
    calls = [0]
    launch = getattr(module, name)

    def counted(*args, **kwargs):
        calls[0] += 1
        return launch(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_auto_compiles_fullgraph_on_the_torch_path(case, monkeypatch):
    _, loss_fn, x, target, module, launch = case
    calls = _count_launches(monkeypatch, module, launch)
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda a, t: loss_fn(a, t, backend="auto"), fullgraph=True, backend="aot_eager"
    )
    loss, grad = _value_and_grad(compiled, x, target)
    assert calls[0] == 0, "a Triton kernel ran inside the compiled graph"
    ref_loss, ref_grad = _value_and_grad(lambda a, t: loss_fn(a, t, backend="torch"), x, target)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-6, atol=1e-7)
    # in eager mode, on the same inputs, "auto" does pick the kernel (TRITON_INTERPRET=1)
    _value_and_grad(lambda a, t: loss_fn(a, t, backend="auto"), x, target)
    assert calls[0] == 1


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forced_triton_runs_the_kernel_outside_the_graph(case, monkeypatch):
    _, loss_fn, x, target, module, launch = case
    calls = _count_launches(monkeypatch, module, launch)
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, t: loss_fn(a, t, backend="triton"), backend="aot_eager")
    loss, grad = _value_and_grad(compiled, x, target)
    assert calls[0] == 1, "the forward launch ran once, eagerly (its gradient is stored)"
    ref_loss, ref_grad = _value_and_grad(lambda a, t: loss_fn(a, t, backend="triton"), x, target)
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=0)


def test_import_focalkit_loads_neither_triton_nor_dynamo():
    """``import focalkit`` stays light and leaves triton unimported (so TRITON_INTERPRET,
    read when a kernel is decorated, can still be set afterwards); ``outside_compiled_graph``
    applies ``torch.compiler.disable``, which imports both, only at a call under compile."""
    code = (
        "import sys, focalkit\n"
        "loaded = sorted({'triton', 'torch._dynamo'} & set(sys.modules))\n"
        "assert not loaded, loaded\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


# the GPU module's checks, small and on CPU, so that they cannot rot while CI has no GPU
SMALL_CASES = test_cuda.build_cases(device="cpu", rows=37, classes=7, boxes=45)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", test_cuda.NAMES)
def test_gpu_module_checks_hold_small_on_cpu(name, dtype):
    test_cuda.check_triton_equals_torch(SMALL_CASES[name], dtype)
    if dtype == torch.float32:
        test_cuda.check_compiled(SMALL_CASES[name])
