"""What `ssl-bf embed | knn | linear | evaluate | inspect` share: the runner and the output helpers.

`run_command` parses a command's arguments and runs its body, turning every bad input into the
one line `ssl-bf CMD: error: ...` on stderr and exit code 2 (3: a failed check; Ctrl-C: 130),
never a traceback. Every number is checked at parse time (`ssl_bf.cli_args`) and every output path
before any compute (`options.check_outputs`, the output guard); heavy imports wait until after parsing, so `--help`
is instant. The rest are small pieces more than one command uses: the result tables, `--json`
writing, notes on stderr, `--device`, the torchrun process group, and checks of inputs.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, Sequence

from ssl_bf.cli_args import ArgumentError, Parser, device_name, fail, unique

from .options import same_file

EXIT_OK, EXIT_CHECK, EXIT_INTERRUPTED = 0, 3, 130  # a bad input: 2 (ssl_bf.cli_args.EXIT_BAD_INPUT)


def run_command(prog: str, parser: Callable[[], Parser], body: Callable[[argparse.Namespace], int],
                argv: Optional[list[str]]) -> int:
    """Parse `argv` and run `body(args)`; a bad input becomes one error line and exit code 2."""
    try:
        args = parser().parse_args(argv)
        return body(args)
    except ArgumentError as err:
        return fail(prog, err)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _input_errors() as err:
        return fail(prog, err)


def _input_errors() -> tuple[type[BaseException], ...]:
    from ssl_bf.config import ConfigError
    from ssl_bf.data import DataError
    from ssl_bf.process_env import ProcessEnvError

    # RuntimeError: a mismatched checkpoint (load_state_dict), no CUDA. OSError: a file that
    # cannot be read or written (the message names it). ProcessEnvError: torchrun's or SLURM's
    # variables incomplete (the message names the variable).
    return (ValueError, OSError, ConfigError, DataError, KeyError, RuntimeError, ProcessEnvError)


# --- output --------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Right-aligned columns under a header and a rule."""
    cells = [[str(h) for h in headers]] + [[fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt(v: object) -> str:
    """A table cell: floats to two decimals (small ones in full), None as '-'."""
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) >= 0.1 or v == 0 else f"{v:g}"
    return "-" if v is None else str(v)


GROUP_COLUMNS = ("many", "medium", "few", "class_std")


def knn_table(results: list[dict]) -> str:
    """The k-NN results of `ssl-bf knn` and `ssl-bf evaluate`: one row per (k, T), with the
    many / medium / few top-1 and the per-class std when the rows carry `per_group`."""
    grouped = all(r.get("per_group") for r in results)
    extra = ["many %", "medium %", "few %", "class std"] if grouped else []
    return table(["k", "T", "top-1 %", "top-5 %", *extra],
                 [[r["k"], r["temperature"], r["top1"], r["top5"],
                   *([r["per_group"].get(g) for g in GROUP_COLUMNS] if grouped else [])] for r in results])


def write_json(obj: dict, path: Optional[str], inputs: Sequence[Optional[str]] = ()) -> None:
    """Write `obj` to `--json PATH` through the output guard, atomically (nothing when the option
    was not given)."""
    if path:
        from ssl_bf import atomic_write

        atomic_write.write_json(obj, path, option="--json", inputs=inputs)


def print_note(prog: str, text: str) -> None:
    """A line `PROG: note: TEXT` on stderr."""
    print(f"{prog}: note: {text}", file=sys.stderr)


def input_notes(prog: str, metadata: dict) -> None:
    """Say on stderr how a checkpoint of another project was read and how its input was adapted."""
    if metadata.get("checkpoint_format"):
        print_note(prog, f"read {metadata.get('checkpoint')} as a {metadata['checkpoint_format']} checkpoint "
                   f"(`ssl-bf inspect` lists what was loaded and dropped)")
    if metadata.get("input_adapted"):
        print_note(prog, metadata["input_adapted"])


# --- options and inputs --------------------------------------------------------------------------


def add_device(p: argparse.ArgumentParser) -> None:
    """`--device auto | cpu | cuda[:N]`."""
    p.add_argument("--device", type=device_name, default="auto",
                   help="auto (CUDA when available) | cpu | cuda[:N] (default auto)")


def add_progress_and_json(p: argparse.ArgumentParser, json_help: str) -> None:
    """`--no-progress` and `--json OUT` (`json_help`: what the JSON holds), the last options of a command."""
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", metavar="OUT", help=json_help)


def add_skip_unreadable(p: argparse.ArgumentParser) -> None:
    """`--skip-unreadable`: image folders leave out (or, in a probe's training, replace) unreadable images."""
    p.add_argument("--skip-unreadable", action="store_true",
                   help="image folders: leave out an image that cannot be read (truncated, empty, not an image, "
                   "too many pixels) and list it, instead of stopping with exit 2 naming the file")


def skipped_summary(metadata: dict) -> dict:
    """`{"unreadable_skipped": [paths]}` from embeddings metadata when rows were left out, else {}."""
    import json

    listed = metadata.get("unreadable_skipped")
    return {"unreadable_skipped": json.loads(listed)} if listed else {}


def check_device(device: str) -> None:
    """Resolve `--device` now (CUDA asked for where there is none fails before any compute)."""
    from ssl_bf.devices import resolve_device

    resolve_device(device)


def unique_values(prog: str, option: str, values: Sequence) -> list:
    """`values` without repeats (in order); a note names the option when some were dropped."""
    kept, repeated = unique(values)
    if repeated:
        print_note(prog, f"{option} lists {', '.join(map(str, repeated))} more than once; each value is used once")
    return kept


def sidecar(checkpoint: Optional[str]) -> Optional[str]:
    """The `ssl-bf export` sidecar JSON of an exported backbone (an input too)."""
    from ssl_bf.checkpoints.checkpoint import sidecar_path

    return sidecar_path(checkpoint) if checkpoint else None


def check_inputs_exist(inputs: Sequence[tuple[str, Optional[str]]]) -> None:
    """Refuse, before any compute, an input (`(option, path)`; None: not given) that does not exist."""
    import os

    for option, path in inputs:
        if path and not os.path.exists(path):
            raise ArgumentError(f"{option} {path}: no such file")


def check_train_test(args: argparse.Namespace, why: str) -> None:
    """Refuse a `--test` file that is the `--train` file (`why`: what would go wrong)."""
    if same_file(args.train, args.test):
        raise ArgumentError(f"--test {args.test} is the --train file: {why}; give the test split's embeddings")


def leave_group(had_group: bool, wait: bool = False) -> None:
    """Destroy the process group that a torchrun-launched command joined. `wait` (the command
    succeeded on this rank): first meet the others on the long-wait group, so no rank tears the
    group down while a peer still talks to it (gloo aborts the process then); a rank that failed
    leaves at once and never keeps the others waiting."""
    from ssl_bf import distributed as dist_utils

    if not had_group:
        dist_utils.shut_down(wait=wait)
