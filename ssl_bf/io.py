"""Atomic writes and safe loading: the one place ssl-bf writes result files and reads tensors.

Every file ssl-bf produces (checkpoints, JSON results, embeddings, configs, metrics rewrites) is
written to a temp file beside its target and renamed over it, so a crash never leaves a
half-written file. Tensor files are read with `torch.load(weights_only=True)`: nothing in a data
file is ever executed.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Callable, Iterator

import torch


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc); else set and restore."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def usual_file_mode() -> int:
    """0666 minus the umask: the mode `open()` would give (mkstemp's temp files are 0600)."""
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temp path beside `path`; when the block succeeds, give it the usual file mode and
    rename it over `path`. On any error the temp file is removed and `path` is untouched."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, usual_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str, write_fn: Callable[[Any], Any]) -> None:
    """Call `write_fn(binary file object)` on a temp file beside `path` (flushed and fsynced),
    then rename it over `path`."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())


def save_atomic(obj: Any, path: str) -> None:
    """torch.save to a temp file, then rename: a crash never leaves a half-written `path`."""
    atomic_write_bytes(path, lambda f: torch.save(obj, f))


def write_json_atomic(obj: Any, path: str) -> None:
    atomic_write_bytes(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def load_tensors(path: str, map_location: str | torch.device = "cpu") -> Any:
    """Load a torch file with `weights_only=True` (no arbitrary code from the file)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=True)
