"""Command-line argument helpers shared by every layer's commands (the one of each kind).

- `argparse` `type=` functions (`positive_int`, `nonneg_int`, `positive_float`, `nonneg_float`,
  `open_fraction`, `seed`, `device_name`): a bad value is refused at parse time with a message
  naming the option, the value and what is expected. NaN and infinities are never accepted.
- `Parser`: the argument parser of every `ssl-bf` subcommand. A parse error raises `ArgumentError`
  (one line naming the option, ending `(see PROG --help)`); the command's `main(argv)` catches it,
  prints it with `fail` and returns 2. `--help` prints the help and exits 0, as argparse does. An
  option given twice is merged (a list option) or refused (a single-value option), never dropped.
- `fail`: the one error line `PROG: error: MESSAGE` on stderr, returning the exit code (2);
  `refuse`: a line `PROG: MESSAGE` for commands whose messages carry their own kind of error.
- `one_line`: any error message on one line, shortened.
- `unique`: a list without repeats, in order, with the repeated values (for a note).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import re
import sys
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")


class ArgumentError(ValueError):
    """A command-line argument that cannot be used; the message names the option."""


EXIT_BAD_INPUT = 2  # the exit code of every refused argument or input


class Parser(argparse.ArgumentParser):
    """The argument parser of every `ssl-bf` subcommand: a parse error raises `ArgumentError`
    (never argparse's usage dump and exit), one line that names the option and ends with
    `(see PROG --help)`. `--help` still prints the help and exits 0.

    An option given twice never silently drops the first value (argparse keeps the last): a list
    option (nargs '+' or '*', e.g. `--k 20 --k 200`) merges the values in order; a single-value
    option (`--config a.yaml --config b.yaml`, `--json a --json b`) is refused naming both; a flag
    (`--no-progress`) may be repeated, but two flags that set one setting to different values are
    refused. `append` options (`--sweep`, `--setup`) collect every use, as documented."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name, action in (("store", _StoreOnce), (None, _StoreOnce), ("store_const", _ConstOnce),
                             ("store_true", _TrueOnce), ("store_false", _FalseOnce)):
            self.register("action", name, action)
        self._given: dict[str, tuple[str, object]] | None = None  # dest -> (option, value) of this parse

    def parse_known_args(self, args=None, namespace=None):
        with self._one_parse():
            return super().parse_known_args(args, namespace)

    def parse_known_intermixed_args(self, args=None, namespace=None):  # parses twice: one record for both
        with self._one_parse():
            return super().parse_known_intermixed_args(args, namespace)

    @contextlib.contextmanager
    def _one_parse(self):
        outer = self._given is None
        if outer:
            self._given = {}
        try:
            yield
        finally:
            if outer:
                self._given = None

    def error(self, message: str):  # argparse's hook for every parse error
        raise ArgumentError(f"{one_line(message, limit=900)} (see {self.prog} --help)")


class _GivenOnce:
    """An option action that records each use in its parser's `_given` and applies the repeat
    rule of `Parser` (mixed into argparse's store actions)."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = getattr(parser, "_given", None)
        if option_string is None or given is None:  # a positional, or a parser of another class
            return super().__call__(parser, namespace, values, option_string)
        if self.dest in given:
            first_option, first = given[self.dest]
            if self.nargs in ("+", "*"):
                setattr(namespace, self.dest, [*getattr(namespace, self.dest), *values])
                return None
            if self.nargs == 0 and first == self.const:
                return None
            shown = (lambda option, value: option if self.nargs == 0 else
                     f"{option} {' '.join(map(str, value)) if isinstance(value, list) else value}")
            raise argparse.ArgumentError(self, f"given twice ({shown(first_option, first)} and "
                                               f"{shown(option_string, self.const if self.nargs == 0 else values)}), "
                                               f"which would drop the first; give it once")
        given[self.dest] = (option_string, self.const if self.nargs == 0 else values)
        return super().__call__(parser, namespace, values, option_string)


class _StoreOnce(_GivenOnce, argparse._StoreAction):
    pass


class _ConstOnce(_GivenOnce, argparse._StoreConstAction):
    pass


class _TrueOnce(_GivenOnce, argparse._StoreTrueAction):
    pass


class _FalseOnce(_GivenOnce, argparse._StoreFalseAction):
    pass


def fail(prog: str, err: BaseException | str, code: int = EXIT_BAD_INPUT) -> int:
    """Print the one error line `PROG: error: MESSAGE` on stderr; returns `code`."""
    print(f"{prog}: error: {one_line(err, limit=1000)}", file=sys.stderr, flush=True)
    return code


def refuse(prog: str, message: str, code: int = EXIT_BAD_INPUT) -> int:
    """Print `PROG: MESSAGE` as one line on stderr (white space folded); returns `code`."""
    print(f"{prog}: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    return code


def _number(text: str, kind: type, what: str):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"'{text}' is not {what}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got '{text}'")
    return value


def _bounded(kind: type, what: str, ok: Callable[[float], bool], must: str, doc: str) -> Callable[[str], float]:
    """An argparse `type=` function: a finite `kind` for which `ok(value)` holds."""
    def parse(text: str):
        value = _number(text, kind, what)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must {must}, got {text}")
        return value
    parse.__doc__ = doc
    return parse


positive_int = _bounded(int, "an integer", lambda v: v >= 1, "be at least 1",
                        "An integer >= 1 (batch sizes, epochs, iterations, k, subsets, image sizes).")
nonneg_int = _bounded(int, "an integer", lambda v: v >= 0, "be 0 or more",
                      "An integer >= 0 (worker counts, sample sizes where 0 means off).")
seed = _bounded(int, "an integer", lambda v: 0 <= v < 2 ** 32, "be an integer in [0, 2**32)",
                "A random seed: an integer in [0, 2**32).")
positive_float = _bounded(float, "a number", lambda v: v > 0, "be a positive number",
                          "A finite number > 0 (temperatures, learning rates, L2 strengths, memory budgets).")
nonneg_float = _bounded(float, "a number", lambda v: v >= 0, "be 0 or a positive number",
                        "A finite number >= 0 (weight decay).")
open_fraction = _bounded(float, "a number", lambda v: 0 < v < 1, "lie strictly between 0 and 1",
                         "A number strictly between 0 and 1 (held-out fractions).")


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


def one_line(err: BaseException | str, limit: int = 400) -> str:
    """An error message on one line (torch's and YAML's often span several), shortened to `limit`."""
    if isinstance(err, KeyError) and err.args:  # str(KeyError) is the repr of its key
        err = str(err.args[0])
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    if not text and isinstance(err, BaseException):
        text = type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."

