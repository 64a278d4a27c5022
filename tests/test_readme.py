"""The README's Python examples run as written, and its benchmark tables match the JSON."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_first_commands_are_the_make_targets_ci_uses():
    """The README opens with exactly the two set-up commands, and CI runs the test one."""
    first_block = re.search(r"```bash\n(.*?)```", README, flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
    """Each usage example executes and yields finite gradients."""
    namespace: dict = {}
    exec(compile(BLOCKS[index], f"README block {index}", "exec"), namespace)
    import torch

    tensors = [
        v
        for v in namespace.values()
        if isinstance(v, torch.Tensor) and v.is_leaf and v.grad is not None
    ]
    modules = [v for v in namespace.values() if isinstance(v, torch.nn.Module)]
    grads = tensors + [p for m in modules for p in m.parameters() if p.grad is not None]
    assert grads, "the example should backpropagate into something"
    assert all(torch.isfinite(g.grad).all() for g in grads)


def test_readme_benchmark_tables_are_generated_from_results():
    """The tables between the bench markers are exactly what render_readme.py makes now."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "render_readme.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
