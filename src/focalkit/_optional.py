"""Optional peers (comparison libraries, the demo's and the integrations' stacks).

A package that is installed but fails to import is common: a torchvision wheel built for
another torch build raises ``RuntimeError: operator torchvision::nms does not exist`` at
``import torchvision``, a CUDA-only build raises on a machine without its libraries. Every
optional import goes through :func:`optional_import`, which turns any such failure into
"not available" with the reason, so the caller can say why in its output and its results
instead of crashing with a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["optional_import"]

_FAILED: dict[str, str] = {}  # a failed import is not retried (its side effects ran once)


def optional_import(name: str) -> tuple[ModuleType | None, str]:
    """``(module, "")``, or ``(None, reason)`` where ``reason`` is ``"not installed"`` or
    ``"import failed: <exception type>: <message>"``."""
    if name in _FAILED:
        return None, _FAILED[name]
    try:
        return importlib.import_module(name), ""
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (name == missing or name.startswith(missing + ".")):
            reason = "not installed"
        else:  # the package is there, one of its own imports is not
            reason = f"import failed: ModuleNotFoundError: {exc}"
    except Exception as exc:  # any failure of an installed package: report it, carry on
        reason = f"import failed: {type(exc).__name__}: {exc}"
    _FAILED[name] = reason
    return None, reason
