"""Output checks of `ssl-bf embed | knn | linear | evaluate | inspect`: every output path is checked
before any compute starts (the argument types and the parser are `ssl_bf.cli_args`)."""
from __future__ import annotations

import os
from typing import Optional, Sequence


def check_outputs(outputs: Sequence[tuple[str, Optional[str]]], inputs: Sequence[Optional[str]] = ()) -> None:
    """Refuse, before any compute, every output (`(option, path)`; None: not asked for) that is a
    folder, a training checkpoint, one of `inputs`, unwritable, or the same file as another output.
    Raises `ssl_bf.io.OutputError` (a ValueError) naming the option and the path."""
    from ssl_bf.io import OutputError, check_output

    protected = [p for p in inputs if p]
    seen: dict[str, str] = {}
    for what, path in outputs:
        if not path:
            continue
        check_output(path, protected=protected, what=what)
        key = os.path.realpath(path)
        if key in seen:
            raise OutputError(f"{what} {path} is also the {seen[key]} file; give each output its own file")
        seen[key] = what


def same_file(a: Optional[str], b: Optional[str]) -> bool:
    """Whether two paths name one existing file (by path or inode)."""
    if not a or not b or not os.path.exists(a) or not os.path.exists(b):
        return False
    return os.path.realpath(a) == os.path.realpath(b) or os.path.samefile(a, b)
