"""Every write of every command: through the output guard, then atomically.

Each writer first passes its target through `ssl_bf.outputs.check_output` (the guard refuses
special files, other commands' run files, other kinds of file, inputs, impossible names), then
writes a temp file beside the target (flushed and fsynced), gives it the usual file mode and
renames it over the target: a crash never leaves a half-written file. Appends (metrics.jsonl,
evaluations.jsonl) write one whole line. `all_or_nothing()` holds every rename and append of a
block until the whole block succeeded (`ssl-bf evaluate`). No other module writes files
(tests/test_output_guard.py scans the sources for writers that bypass this one).
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from .file_kinds import FileKind
from .outputs import OutputError, check_output, check_output_folder, make_temp
from .run_layout import Owner


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


def strict_json(obj: Any) -> Any:
    """`obj` with every NaN/inf float replaced by None, so it serialises as strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


# --- all or nothing ------------------------------------------------------------------------------


@dataclass
class _Batch:
    renames: list[tuple[str, str]] = field(default_factory=list)  # (temp file, target)
    appends: list[tuple[str, bytes]] = field(default_factory=list)  # (target, line)


_BATCH: contextvars.ContextVar[Optional[_Batch]] = contextvars.ContextVar("ssl_bf_write_batch", default=None)


@contextlib.contextmanager
def all_or_nothing() -> Iterator[None]:
    """Inside the block every write goes to its temp file and every append waits; when the block
    succeeds the temp files are renamed into place and the lines appended, else every temp file
    is removed and no target has changed."""
    batch = _Batch()
    token = _BATCH.set(batch)
    try:
        yield
    except BaseException:
        for tmp, _ in batch.renames:
            _remove(tmp)
        raise
    finally:
        _BATCH.reset(token)
    try:  # every file was written and checked: renames in one folder, then whole-line appends
        for tmp, target in batch.renames:
            os.replace(tmp, target)
        for target, line in batch.appends:
            _append(target, line)
    except OSError as err:
        for tmp, _ in batch.renames:
            _remove(tmp)
        raise OutputError(f"{err.filename or 'output'}: cannot write it ({err.strerror or err})") from None


# --- the writers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _temp_for(path: str, kind: Optional[FileKind], option: str, owner: Optional[Owner],
              inputs: Sequence[Optional[str]], runs: Sequence[str] = ()) -> Iterator[str]:
    """Check `path`, yield a temp file beside its target, then move it into place (or hand it to
    the open `all_or_nothing` block). On any error the temp file is removed; a failure of the
    file system becomes an OutputError naming the option and the path."""
    target = check_output(path, kind, option=option, inputs=inputs, owner=owner, runs=runs)
    tmp = None
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fd, tmp = make_temp(os.path.dirname(target))
        os.close(fd)
        yield tmp
        os.chmod(tmp, usual_file_mode())
        batch = _BATCH.get()
        if batch is not None:
            batch.renames.append((tmp, target))
        else:
            os.replace(tmp, target)
    except OSError as err:
        _remove(tmp)
        raise OutputError(f"{option} {path}: cannot write it ({err.strerror or err}); choose another place") from None
    except BaseException:
        _remove(tmp)
        raise


def write_with(path: str, kind: Optional[FileKind], write_fn: Callable[[Any], Any], *, option: str = "output",
               owner: Optional[Owner] = None, inputs: Sequence[Optional[str]] = (), runs: Sequence[str] = ()) -> None:
    """Call `write_fn(binary file object)` on the temp file of `path` (flushed and fsynced), then
    move it into place; `kind` is what `write_fn` writes (the other arguments: `check_output`'s)."""
    with _temp_for(path, kind, option, owner, inputs, runs) as tmp:
        with open(tmp, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())


def write_json(obj: Any, path: str, *, option: str = "--json", owner: Optional[Owner] = None,
               inputs: Sequence[Optional[str]] = (), runs: Sequence[str] = (),
               kind: Optional[FileKind] = FileKind.JSON) -> None:
    """Strict JSON (NaN/inf written as null), atomically (`kind` None: see `check_output`)."""
    text = json.dumps(strict_json(obj), indent=2, allow_nan=False) + "\n"
    write_with(path, kind, lambda f: f.write(text.encode()), option=option, owner=owner, inputs=inputs,
               runs=runs)


def write_text(text: str, path: str, *, kind: Optional[FileKind] = FileKind.TEXT, option: str = "output",
               owner: Optional[Owner] = None) -> None:
    """UTF-8 text (YAML, Markdown, CSV; `kind` JSON for JSON lines), atomically."""
    write_with(path, kind, lambda f: f.write(text.encode()), option=option, owner=owner)


def write_torch(obj: Any, path: str, *, option: str = "output", owner: Optional[Owner] = None,
                inputs: Sequence[Optional[str]] = ()) -> None:
    """`torch.save(obj)`, atomically (read back with `torch.load(weights_only=True)`)."""
    import torch

    write_with(path, FileKind.TORCH, lambda f: torch.save(obj, f), option=option, owner=owner, inputs=inputs)


def write_npy(array: Any, path: str, *, option: str = "output", owner: Optional[Owner] = None) -> None:
    """A numpy .npy array (never pickled: read back with `allow_pickle=False`), atomically."""
    import numpy as np

    write_with(path, FileKind.NPY, lambda f: np.save(f, np.asarray(array), allow_pickle=False), option=option,
               owner=owner)


def write_pickle(obj: Any, path: str, *, option: str = "output", inputs: Sequence[Optional[str]] = ()) -> None:
    """A pickle (protocol 4) of plain containers and numpy arrays, atomically."""
    import pickle

    write_with(path, FileKind.PICKLE, lambda f: pickle.dump(obj, f, protocol=4), option=option, inputs=inputs)


def write_safetensors(tensors: Mapping[str, Any], metadata: Mapping[str, str], path: str, *,
                      option: str = "output", owner: Optional[Owner] = None) -> None:
    """A safetensors file of `tensors` with string `metadata`, atomically."""
    from safetensors.torch import save_file

    with _temp_for(path, FileKind.SAFETENSORS, option, owner, ()) as tmp:
        save_file(dict(tensors), tmp, metadata=dict(metadata))


def write_figure(fig: Any, path: str, *, option: str = "output", owner: Optional[Owner] = None,
                 **savefig_options: Any) -> None:
    """A matplotlib figure as PNG, atomically."""
    write_with(path, FileKind.PNG, lambda f: fig.savefig(f, format="png", **savefig_options), option=option,
               owner=owner)


def append_line(line: str, path: str, *, kind: FileKind = FileKind.JSON, option: str = "output",
                owner: Optional[Owner] = None) -> None:
    """Append one line (a newline is added) in a single write, then fsync; the file is only ever
    appended to. Inside `all_or_nothing` the line waits for the block's end."""
    target = check_output(path, kind, option=option, owner=owner, appended=True)
    data = (line.rstrip("\n") + "\n").encode()
    batch = _BATCH.get()
    if batch is not None:
        batch.appends.append((target, data))
        return
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        _append(target, data)
    except OSError as err:
        raise OutputError(f"{option} {path}: cannot append to it ({err.strerror or err})") from None


def event_writer(folder: str, *, owner: Optional[Owner] = None):
    """A TensorBoard SummaryWriter on `folder`, checked as an output folder first (ImportError
    when tensorboard is not installed)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(check_output_folder(folder, option="the TensorBoard folder", owner=owner))


def _append(target: str, data: bytes) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(tmp: Optional[str]) -> None:
    if tmp and os.path.lexists(tmp):
        os.unlink(tmp)
