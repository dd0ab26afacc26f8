"""Output checks of `ssl-bf embed | knn | linear | evaluate | inspect`: every output path passes the
output guard (`ssl_bf.outputs.check_output`) before any compute starts (the argument types and
the parser are `ssl_bf.cli_args`)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

from ssl_bf.file_kinds import FileKind
from ssl_bf.run_layout import Owner


@dataclass(frozen=True)
class Output:
    """One output of a command: the option that names it, its path (None: not asked for), the
    kind of file written, and the owner when it is one of a run folder's own files."""

    option: str
    path: Optional[str]
    kind: FileKind
    owner: Optional[Owner] = None


def check_outputs(outputs: Sequence[Output], inputs: Sequence[Optional[str]] = (), runs: Sequence[str] = ()) -> None:
    """Refuse, before any compute, every output the output guard refuses (a special file, a run
    file it does not own, another kind of file, one of `inputs`, unwritable, an impossible name;
    `runs`: folders this command makes run folders) or that is the same file as another output.
    Raises `ssl_bf.outputs.OutputError` (a ValueError) naming the option and the path."""
    from ssl_bf.outputs import OutputError, check_output

    protected = [p for p in inputs if p]
    seen: dict[str, str] = {}
    for out in outputs:
        if not out.path:
            continue
        key = check_output(out.path, out.kind, option=out.option, inputs=protected, owner=out.owner, runs=runs)
        if key in seen:
            raise OutputError(f"{out.option} {out.path} is also the {seen[key]} file; give each output its own file")
        seen[key] = out.option


def same_file(a: Optional[str], b: Optional[str]) -> bool:
    """Whether two paths name one existing file (by path or inode)."""
    if not a or not b or not os.path.exists(a) or not os.path.exists(b):
        return False
    return os.path.realpath(a) == os.path.realpath(b) or os.path.samefile(a, b)
