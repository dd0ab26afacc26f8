"""Safe loading: tensor files are read with `torch.load(weights_only=True)`, and pickles of plain
arrays (CIFAR's) with a restricted unpickler: nothing in a data file is ever executed.

(Writing is `ssl_bf/atomic_write.py`, through the output guard of `ssl_bf/outputs.py`.)
"""
from __future__ import annotations

import codecs
import contextlib
import os
import pickle
import re
from typing import Any, Mapping

import numpy as np
import torch

try:  # numpy >= 2
    from numpy._core import multiarray as _np_multiarray
    from numpy._core import numeric as _np_numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _np_multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _np_numeric  # type: ignore[no-redef]


class UnreadableFileError(ValueError):
    """A file that cannot be loaded safely; the message names the file and what is wrong."""


def _metadata_globals() -> list[tuple[object, str]]:
    """The named allow-list of harmless types that other projects pickle beside their weights, each
    as (what it is rebuilt as, the name in the file). Only plain attribute records: rebuilding one
    sets data, never runs code.
    - `argparse.Namespace`: DINO's `args`, MoCo forks' saved command lines;
    - Lightning's `AttributeDict` (solo-learn's `hyper_parameters`), a dict subclass, rebuilt as a
      plain dict so Lightning need not be installed (all the names it has lived under)."""
    import argparse

    names = ("pytorch_lightning.utilities.parsing.AttributeDict", "lightning.fabric.utilities.data.AttributeDict",
             "lightning_fabric.utilities.data.AttributeDict", "lightning.pytorch.utilities.parsing.AttributeDict")
    return [(argparse.Namespace, "argparse.Namespace")] + [(dict, name) for name in names]


def metadata_global_names() -> list[str]:
    """The names of `_metadata_globals`, for messages and docs."""
    return [name for _, name in _metadata_globals()]


def load_tensors(path: str, map_location: str | torch.device = "cpu", metadata_types: bool = False) -> Any:
    """Load a torch file with `weights_only=True` (no arbitrary code from the file).

    `metadata_types`: also rebuild the named harmless types of `_metadata_globals` (checkpoints of
    other projects: DINO's argparse `args`, Lightning's hyper-parameters); anything else is still
    refused. A missing file raises FileNotFoundError; an empty, corrupt or non-torch file, or one
    that holds a Python object a weights-only load refuses, raises UnreadableFileError naming the
    file (and the refused type). It never suggests an unrestricted load.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file not found: {path}")
    if os.path.getsize(path) == 0:
        raise UnreadableFileError(f"{path} is empty (0 bytes): not a checkpoint")
    try:
        allowed = torch.serialization.safe_globals(_metadata_globals()) if metadata_types else contextlib.nullcontext()
        with allowed:
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        blocked = re.findall(r"GLOBAL ([\w.]+)", str(err))
        if blocked:
            also = f", plain containers and {', '.join(metadata_global_names())}" if metadata_types else \
                " and plain containers"
            raise UnreadableFileError(
                f"{path} holds a Python object of type {blocked[0]}, which ssl-bf refuses to load "
                f"(only tensors{also} are read from checkpoints; nothing in a file is "
                f"ever executed)") from None
        raise UnreadableFileError(f"{path} is not a torch checkpoint (corrupt or another format)") from None
    except Exception as err:  # a decode boundary: whatever torch raises on a bad file
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise UnreadableFileError(f"{path} is not a torch checkpoint (corrupt, truncated or another "
                                  f"format: {first})") from None


# ----------------------------------------------------------------------------------------------
# Restricted unpickling: only the globals of an allow-list are ever looked up
# ----------------------------------------------------------------------------------------------

# The globals a pickle of numpy arrays needs: array reconstruction (numpy 1.x and 2.x module
# names, pickle protocols 2-5) and `_codecs.encode`, which Python 3 uses for bytes in protocol 2.
NUMPY_ARRAY_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy.core.multiarray", "_reconstruct"): _np_multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_multiarray._reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _np_numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _np_numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class BlockedGlobalError(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list; `module` and `name` say which."""

    def __init__(self, module: str, name: str, what: str) -> None:
        super().__init__(f"refusing to load global {module}.{name}: only {what} is allowed "
                         f"(the file may be malicious or not the kind of file expected)")
        self.module, self.name = module, name


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds plain containers and the allowed globals, and refuses anything
    else. `allowed`: (module, name) -> object; `what` describes it for the error message."""

    def __init__(self, file: Any, allowed: Mapping[tuple[str, str], object], what: str,
                 **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.allowed, self.what = allowed, what

    def find_class(self, module: str, name: str) -> object:
        obj = self.allowed.get((module, name))
        if obj is None:
            raise BlockedGlobalError(module, name, self.what)
        return obj


def safe_unpickle(path: str, allowed: Mapping[tuple[str, str], object], what: str,
                  encoding: str = "bytes") -> Any:
    """Load a pickle with `RestrictedUnpickler`, e.g. `safe_unpickle(path, NUMPY_ARRAY_GLOBALS,
    "numpy array reconstruction")`; bytes stay bytes by default (Python-2 pickles). Raises
    BlockedGlobalError on a global outside `allowed`; a corrupt file raises what pickle raises
    (UnpicklingError, EOFError, ValueError...), a missing one OSError."""
    with open(path, "rb") as f:
        return RestrictedUnpickler(f, allowed, what, encoding=encoding).load()
