"""The docstring examples of the loss modules run and print what they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "focalkit.functional.focal",
        "focalkit.nn.focal",
        "focalkit.functional.gfl",
        "focalkit.nn.gfl",
        "focalkit.functional.asymmetric",
        "focalkit.nn.asymmetric",
        "focalkit.functional.poly",
        "focalkit.nn.poly",
    ],
)
def test_doctests(module):
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{module} has no doctest examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctest examples failed"
