"""The contract every fuzz suite checks on a command given generated input (tests/test_fuzz_*.py):

- it exits 0 or 2 (3 where the command documents it), never with a traceback or a signal;
- a refusal (exit 2) prints a message naming the file or option that caused it;
- files it must not write stay byte-identical (`digest` before and after);
- an accepted input gives the result an independent float64 numpy reference gives.

`run_cli` runs `ssl-bf ARGV` in-process and returns (exit code, stdout + stderr); `Tally` counts
the generated inputs each suite tried, for the closing tally (pytest -s prints it);
`fuzz_examples(n)` is a suite's example budget (also importable from conftest.py; import it from
here: in a whole run tests/cluster/conftest.py can be the module named `conftest`).
"""
from __future__ import annotations

import collections
import io
import os
from contextlib import redirect_stderr, redirect_stdout

from bad_inputs_harness import TRACEBACK, digest

FUZZ_SCALE = max(1, int(os.environ.get("SSL_BF_FUZZ_SCALE", "1") or 1))
TRIED: collections.Counter = collections.Counter()  # suite name -> generated inputs tried
FUZZ_SCALE = max(1, int(os.environ.get("SSL_BF_FUZZ_SCALE", "1") or 1))


def fuzz_examples(n: int) -> int:
    """The example budget of one fuzz test: `n` times SSL_BF_FUZZ_SCALE (import it from here:
    `from conftest import` may find tests/cluster/conftest.py in a whole-tree run)."""
    return n * FUZZ_SCALE


def run_cli(argv: list[str]) -> tuple[int, str]:
    """`ssl-bf ARGV` in this process: (exit code, stdout + stderr). An exception escaping main()
    propagates (the caller's test then fails with it: a traceback is a broken contract)."""
    from ssl_bf.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return int(code or 0), out.getvalue() + err.getvalue()


def snapshot(paths: list[str]) -> dict[str, str]:
    return {p: digest(p) for p in paths}


def check_contract(code: int, output: str, names: tuple[str, ...] = (), before: dict[str, str] | None = None,
                   allowed: tuple[int, ...] = (0, 2)) -> None:
    """Assert the contract: an allowed exit code, no traceback, a refusal names one of `names`
    (any of them), and every watched file is byte-identical to `before`."""
    assert TRACEBACK not in output, output[-3000:]
    assert code in allowed, (code, output[-3000:])
    if code != 0 and names:
        assert any(n in output for n in names), (names, output[-3000:])
    for path, was in (before or {}).items():
        assert digest(path) == was, f"{path} changed"


def count(suite: str, n: int = 1) -> None:
    TRIED[suite] += n


def tried_report() -> str:
    total = sum(TRIED.values())
    lines = [f"{name}: {n}" for name, n in sorted(TRIED.items())]
    return f"generated inputs tried: {total}" + ("\n" + "\n".join(lines) if lines else "")


def watched_files(folder: str) -> list[str]:
    """Every file under `folder` (for `snapshot`)."""
    return [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files]
