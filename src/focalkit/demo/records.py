"""Run records on disk: atomic JSON writes, tolerant reads, run configurations and the
environment (versions) stored with every record."""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "canonical",
    "environment",
    "read_record",
    "record_path",
]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees the old file or the whole new one, never a
    part: a temporary file in the same directory, fsync, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_json(path: Path, obj: Any) -> None:
    """:func:`atomic_write_bytes` of ``obj`` as indented JSON (NaN/inf are refused)."""
    text = json.dumps(obj, indent=1, allow_nan=False, sort_keys=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def read_record(path: Path) -> dict | None:
    """The JSON object at ``path``, or ``None`` if it is missing, unreadable or not an object
    (a corrupt record is simply recomputed)."""
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def canonical(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists, keys strings), so a requested
    configuration compares equal to the stored one."""
    return json.loads(json.dumps(obj, allow_nan=False))


def record_path(out_dir: Path, study: str, name: str, seed: int) -> Path:
    """``<out>/runs/<study>/<name>-seed<k>.json``."""
    return Path(out_dir) / "runs" / study / f"{name}-seed{seed}.json"


def environment(device: str) -> dict[str, str]:
    """Versions and machine the records were produced with."""
    import numpy
    import torch

    import focalkit

    env = {
        "focalkit": focalkit.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": device,
        "torch_threads": str(torch.get_num_threads()),
    }
    if device.startswith("cuda"):
        env["device_name"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = str(torch.version.cuda)
    return env
