"""Every docstring example under ``src/focalkit`` runs and prints what it claims: one test per
module with examples, found by walking the package (this is the only place doctests of the
source run; ``make test`` passes no ``--doctest-modules``).

Left out, as optional dependencies: the command line (``focalkit.cli``), the demo
(``focalkit.demo``), the benchmarks (``focalkit.bench``), the integrations with other
training stacks (``focalkit.integrations``), every ``__main__`` module (it runs a command on
import) and the Triton kernels (``kernels/triton_*.py`` and ``kernels/_triton_*.py`` import
triton). Examples run with no
option flags: a directive such as ``# doctest: +ELLIPSIS`` is written on its example.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from types import ModuleType

import pytest

import focalkit

OPTIONAL = ("focalkit.cli", "focalkit.demo", "focalkit.bench", "focalkit.integrations")


def _optional(name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return (
        name.startswith(OPTIONAL) or leaf == "__main__" or leaf.startswith(("triton_", "_triton_"))
    )


def _modules(package: ModuleType = focalkit) -> list[str]:
    """The names of ``package`` and of its modules and subpackages, depth first, without the
    optional ones (which are not imported)."""
    names = [package.__name__]
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        if _optional(info.name):
            continue
        if info.ispkg:
            names += _modules(importlib.import_module(info.name))
        else:
            names.append(info.name)
    return names


def _doctests(name: str) -> list[doctest.DocTest]:
    tests = doctest.DocTestFinder().find(importlib.import_module(name))
    return sorted((t for t in tests if t.examples), key=lambda t: t.name)


def _runnable(test: doctest.DocTest) -> int:
    """The number of examples of ``test`` that run (not marked ``+SKIP``)."""
    return sum(not ex.options.get(doctest.SKIP, False) for ex in test.examples)


MODULES = _modules()
WITH_EXAMPLES = [name for name in MODULES if sum(map(_runnable, _doctests(name)))]


def test_the_walk_finds_the_modules_with_examples():
    assert "focalkit.kernels.dispatch" in MODULES  # a subpackage's module
    assert not [name for name in MODULES if _optional(name)]
    assert {
        "focalkit.distributed",
        "focalkit.functional.box",
        "focalkit.functional.focal",
        "focalkit.functional.ghm",
        "focalkit.kernels.dispatch",
        "focalkit.nn.box",
        "focalkit.nn.focal",
        "focalkit.nn.ghm",
    } <= set(WITH_EXAMPLES)


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples(name):
    runner = doctest.DocTestRunner(verbose=False, optionflags=0)
    report: list[str] = []
    tests = _doctests(name)
    for test in tests:
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
    assert runner.tries == sum(map(_runnable, tests)) > 0
