"""Argument checking for `ssl-bf embed | knn | linear | evaluate`: every number, name and output
path is checked before any compute starts.

- `argparse` `type=` functions (`positive_int`, `nonneg_int`, `positive_float`, `nonneg_float`,
  `open_fraction`, `seed`, `device_name`): a bad value is refused at parse time with a message
  naming the option, the value and what is expected. NaN and infinities are never accepted.
- `Parser`: an ArgumentParser whose errors are one line (`ssl-bf CMD: error: ...`) and come back
  to the command as `ArgumentError` (the command returns exit code 2; `--help` still exits 0).
- `check_outputs`: every output path of a command, checked with `ssl_bf.io.check_output` against
  the command's inputs, and against each other.
- `unique`: a list without repeats, in order, with the repeated values (for a note).
"""
from __future__ import annotations

import argparse
import math
import os
import re
from typing import Iterable, Optional, Sequence, TypeVar

T = TypeVar("T")


class ArgumentError(ValueError):
    """A command-line argument that cannot be used; the message names the option."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise ArgumentError (one line) instead of printing the usage."""

    def error(self, message: str):  # argparse's hook for every parse error
        raise ArgumentError(f"{message} (see {self.prog} --help)")


def _number(text: str, kind: type, what: str):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"'{text}' is not {what}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got '{text}'")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (batch sizes, epochs, iterations, k, subsets, image sizes)."""
    value = _number(text, int, "an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def nonneg_int(text: str) -> int:
    """An integer >= 0 (worker counts, sample sizes where 0 means off)."""
    value = _number(text, int, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def seed(text: str) -> int:
    """A random seed: an integer in [0, 2**32)."""
    value = _number(text, int, "an integer")
    if not 0 <= value < 2 ** 32:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**32), got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (temperatures, learning rates, L2 strengths, memory budgets)."""
    value = _number(text, float, "a number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def nonneg_float(text: str) -> float:
    """A finite number >= 0 (weight decay)."""
    value = _number(text, float, "a number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive number, got {text}")
    return value


def open_fraction(text: str) -> float:
    """A number strictly between 0 and 1 (held-out fractions)."""
    value = _number(text, float, "a number")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {text}")
    return value


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def device_name(text: str) -> str:
    """auto | cpu | cuda | cuda:N (the names `ssl_bf.devices.resolve_device` takes)."""
    if not _DEVICE.match(text):
        raise argparse.ArgumentTypeError(f"unknown device '{text}'; use auto, cpu, cuda or cuda:N")
    return text


def unique(values: Iterable[T]) -> tuple[list[T], list[T]]:
    """(values without repeats in their first order, the values that were repeated)."""
    kept: list[T] = []
    repeated: list[T] = []
    for v in values:
        if v in kept:
            if v not in repeated:
                repeated.append(v)
        else:
            kept.append(v)
    return kept, repeated


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
