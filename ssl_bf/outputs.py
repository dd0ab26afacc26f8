"""The output guard: the one check every file ssl-bf writes passes, before any compute and again
at the moment it is written (`ssl_bf/atomic_write.py` calls it for every write).

`check_output(path, kind, option=..., inputs=..., owner=...)` refuses, with one line naming the
option and the path:
- a name that cannot be a file: empty, ending in `/` (or `/.`, `/..`), holding a NUL byte;
- an existing path that is not a regular file: a folder, a character or block device, a FIFO, a
  socket (an atomic rename would replace the device node with a regular file);
- a symbolic link that leads nowhere. A link to a regular file is followed: every check applies
  to the file it points to, and the write replaces that file (the link stays a link). A link to
  a folder or a special file is refused like the thing it points to;
- one of the command's own `inputs` (by path or by inode);
- a training checkpoint (`.../checkpoints/*.pt`) for anyone but pretrain; a file of a run folder
  that `owner` does not own (`ssl_bf/run_layout.py`);
- an existing non-empty file of another kind than `kind` (recognised by its content,
  `ssl_bf/file_kinds.py`): an embeddings file is never replaced by a torch pickle;
- a folder that cannot be created or written, an existing file that is not writable;
- a name the file system would refuse (a component longer than NAME_MAX bytes, a path longer
  than PATH_MAX), found by creating and removing the temp file the write will use (its name has a
  fixed short length, so any final name the file system accepts works).

It returns the path the bytes go to (links resolved). `check_output_folder` is the same guard for
a folder a command writes into (a report folder, a job folder, a probe's work folder).
"""
from __future__ import annotations

import os
import stat
import tempfile
from typing import Optional, Sequence

from .file_kinds import FileKind, file_kind
from .run_layout import Owner, ownership_problem

TEMP_PREFIX, TEMP_SUFFIX = ".ssl-bf-", ".tmp"  # mkstemp adds 8 characters: 20 in all
_FALLBACK_NAME_MAX, _FALLBACK_PATH_MAX = 255, 4096
_SPECIAL = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
            (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a file"))


class OutputError(ValueError):
    """An output that must not be written; the message names the option, the path and the fix."""


def make_temp(folder: str) -> tuple[int, str]:
    """A new temp file in `folder` (descriptor, path), named so that it never adds length to a name."""
    return tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX)


def folder_problem(folder: str) -> Optional[str]:
    """Why `folder` could not be created or written (its nearest existing ancestor is a file or is
    not writable), or None. Reads only; nothing is created."""
    existing = _nearest_existing(os.path.abspath(folder))
    if not os.path.isdir(existing):
        return f"{existing} is a file, so the folder cannot be created"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"the folder {existing} is not writable"
    return None


def check_output(path: str, kind: Optional[FileKind], *, option: str = "output", inputs: Sequence[Optional[str]] = (),
                 owner: Optional[Owner] = None, runs: Sequence[str] = (), appended: bool = False) -> str:
    """Refuse `path` as an output of `kind` (see the module docstring); returns the path to write.

    `kind` None: the caller has already established that a file at `path` is its own earlier
    output (`ssl-bf shard` by its ledger), whatever it now holds, so its kind is not compared;
    `runs`: folders this command makes run folders (a fresh run.dir has no marker yet);
    `appended`: the file is appended to in place (no temp file)."""
    problem, target = _file_problem(path, kind, inputs, owner, runs, appended)
    if problem:
        raise OutputError(_sentence(option, path, problem))
    return target


def check_output_folder(path: str, *, option: str = "output folder", owner: Optional[Owner] = None) -> str:
    """Refuse `path` as a folder to write into: an existing non-folder (file, device, FIFO, socket,
    dangling link), a run folder's entry `owner` does not own, a folder that cannot be created or
    written. Returns the folder (links resolved)."""
    if not path or "\x00" in path:
        raise OutputError(f"{option} {path!r} is not a folder name")
    problem, target = _followed(path)
    if problem is None and os.path.exists(target) and not os.path.isdir(target):
        problem = f"is {_what(os.stat(target))}; give a folder"
    problem = problem or _name_problem(target) or _ownership(target, owner)
    if problem is None:
        why = folder_problem(target)
        problem = f": {why}" if why else (_temp_problem(target) if os.path.isdir(target) else None)
    if problem:
        raise OutputError(_sentence(option, path, problem))
    return target


def _sentence(option: str, path: str, problem: str) -> str:
    """'OPTION PATH is ...' or 'OPTION PATH: why ...' (a problem may start with ': ')."""
    return f"{option} {path}{problem}" if problem.startswith(":") else f"{option} {path} {problem}"


# --- the checks, in order ------------------------------------------------------------------------


def _file_problem(path: str, kind: Optional[FileKind], inputs: Sequence[Optional[str]], owner: Optional[Owner],
                  runs: Sequence[str], appended: bool) -> tuple[Optional[str], str]:
    """(why `path` must not be written, or None; the resolved path)."""
    if not path or "\x00" in path or os.path.basename(path) in ("", ".", ".."):
        return "is not a file name (it names a folder or nothing); give a file name", path
    problem, target = _followed(path)
    if problem:
        return problem, target
    exists = os.path.lexists(target)
    if exists:
        st = os.stat(target)
        if not stat.S_ISREG(st.st_mode):
            return f"is {_what(st)}, not a regular file; ssl-bf writes only regular files: give a file name", target
    for check in (lambda: _name_problem(target), lambda: _input_problem(path, target, inputs),
                  lambda: _checkpoint_problem(target, owner) if exists else None,
                  lambda: _ownership(target, owner, runs),
                  lambda: _kind_problem(target, kind) if exists and kind is not None else None,
                  lambda: _writable_problem(target, exists, appended)):
        problem = check()
        if problem:
            return problem, target
    return None, target


def _followed(path: str) -> tuple[Optional[str], str]:
    """(a refusal for a link that leads nowhere, or None; the absolute path with links resolved)."""
    target = os.path.abspath(path)
    try:
        if os.path.islink(target):
            real = os.path.realpath(target)
            os.stat(target)  # a dangling link or a loop raises
            return None, real
    except OSError:
        return (f"is a symbolic link to {os.readlink(target)}, which does not exist; ssl-bf does not write "
                f"through a dangling link: remove the link or give another name"), target
    except ValueError:  # a name the OS cannot take
        return "is not a valid file name", target
    return None, os.path.realpath(target)


def _what(st: os.stat_result) -> str:
    for test, name in _SPECIAL:
        if test(st.st_mode):
            return name
    return "not a regular file"


def _ownership(target: str, owner: Optional[Owner], runs: Sequence[str] = ()) -> Optional[str]:
    problem = ownership_problem(target, owner, [os.path.realpath(r) for r in runs])
    return f"{problem}: write to another file" if problem else None


def _checkpoint_problem(target: str, owner: Optional[Owner]) -> Optional[str]:
    """An existing `.../checkpoints/*.pt` (a training checkpoint) is pretrain's alone."""
    in_checkpoints = os.path.basename(os.path.dirname(target)) == "checkpoints" and target.endswith(".pt")
    if in_checkpoints and owner is not Owner.PRETRAIN:
        return "is a training checkpoint; refusing to overwrite it: write to another file"
    return None


def _input_problem(path: str, target: str, inputs: Sequence[Optional[str]]) -> Optional[str]:
    for given in inputs:
        if not given or not os.path.exists(given):
            continue
        if os.path.abspath(given) in (os.path.abspath(path), target) or os.path.realpath(given) == target \
                or (os.path.exists(target) and os.path.samefile(given, target)):
            return "is this command's own input; write to another file"
    return None


def _kind_problem(target: str, kind: FileKind) -> Optional[str]:
    try:
        found = file_kind(target)
    except OSError as err:
        return f"exists but cannot be read ({err.strerror or err}), so what it holds is unknown; give another name"
    if found is not None and found is not kind:
        return (f"holds {found.value}; this would replace it with {kind.value}: give another name (or move the "
                f"file away first)")
    return None


def _writable_problem(target: str, exists: bool, appended: bool) -> Optional[str]:
    if exists and not os.access(target, os.W_OK):
        return "exists and is not writable"
    if exists and appended:
        return None
    folder = os.path.dirname(target)
    why = folder_problem(folder)
    if why:
        return f": {why}"
    return _temp_problem(folder) if os.path.isdir(folder) and not appended else None


def _nearest_existing(path: str) -> str:
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _name_problem(target: str) -> Optional[str]:
    """A component longer than the file system's NAME_MAX, or a path longer than PATH_MAX (bytes)."""
    try:
        encoded = os.fsencode(target)
    except UnicodeError:
        return "cannot be encoded as a file name; give another name"
    existing = _nearest_existing(target)
    name_max = _pathconf(existing, "PC_NAME_MAX", _FALLBACK_NAME_MAX)
    path_max = _pathconf(existing, "PC_PATH_MAX", _FALLBACK_PATH_MAX)
    for part in os.path.relpath(target, existing).split(os.sep):
        size = len(os.fsencode(part))
        if size > name_max:
            return (f"has a name of {size} bytes ({part[:24]}...); the file system allows {name_max}: "
                    f"give a shorter name")
    if len(encoded) >= path_max:
        return f"is a path of {len(encoded)} bytes; the file system allows {path_max - 1}: give a shorter path"
    return None


def _pathconf(path: str, name: str, fallback: int) -> int:
    try:
        value = os.pathconf(path if os.path.isdir(path) else os.path.dirname(path) or ".", name)
    except (OSError, ValueError):
        return fallback
    return value if value and value > 0 else fallback


def _temp_problem(folder: str) -> Optional[str]:
    """Create and remove the temp file a write in `folder` will use."""
    try:
        fd, tmp = make_temp(folder)
    except OSError as err:
        return f": cannot create a file in {folder} ({err.strerror or err}); choose another place"
    os.close(fd)
    os.unlink(tmp)
    return None
