"""`ssl-bf shard SRC OUT`: an image folder -> WebDataset tar shards and manifest.json (writer.py)."""
from __future__ import annotations

import sys
from typing import Optional

from ...cli_args import ArgumentError, Parser, fail, positive_float, seed

PROG = "ssl-bf shard"


def shard_parser() -> Parser:
    p = Parser(
        prog=PROG,
        description="Write an image folder as WebDataset tar shards of about --shard-size MB (KEY.jpg and, for "
        "class folders, KEY.cls members), a sample list per split and OUT/manifest.json, the data.root of "
        "`data.name: shards`. Rerunning it skips the shards already written (checked by size and sha256).",
        epilog="example: ssl-bf shard /data/imagenet /data/imagenet-shards --shard-size 256; then pretrain with "
        "data.name=shards data.root=/data/imagenet-shards/manifest.json")
    p.add_argument("src", metavar="SRC", help="image folder: train/ and val/ (or test/) of class folders, one folder "
                   "of class folders, or with --unlabeled any tree of images")
    p.add_argument("out", metavar="OUT", help="output folder (new, or one this command wrote from SRC)")
    p.add_argument("--shard-size", type=positive_float, default=256.0, metavar="MB",
                   help="target shard size in MB (default 256)")
    p.add_argument("--unlabeled", action="store_true", help="SRC is an unlabeled tree of images (no .cls members)")
    p.add_argument("--order", choices=["shuffled", "sorted"], default="shuffled",
                   help="sample order in the shards: shuffled by --seed (default; class-sorted shards give "
                   "one-class batches) or the folder readers' sorted order")
    p.add_argument("--seed", type=seed, default=0, help="seed of the shuffled order (default 0)")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="leave out images that do not decode (listed in the manifest) instead of stopping")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", metavar="OUT_JSON", help="also write a summary as JSON")
    return p


def shard_main(argv: Optional[list[str]] = None) -> int:
    """`ssl-bf shard`; a bad input is one line on stderr and exit 2."""
    from ...file_kinds import FileKind
    from ...outputs import OutputError, check_output
    from ..base import DataError
    from .writer import write_shards

    try:
        args = shard_parser().parse_args(argv)
        if args.json:
            check_output(args.json, FileKind.JSON, option="--json")
            _outside(args.json, args.out)
        report = write_shards(args.src, args.out, args.shard_size, unlabeled=args.unlabeled, order=args.order,
                              seed=args.seed, skip_unreadable=args.skip_unreadable, progress=not args.no_progress)
    except (ArgumentError, OutputError, DataError) as err:
        return fail(PROG, err)
    except OSError as err:
        return fail(PROG, f"{getattr(err, 'filename', None) or ''} {err.strerror or err}".strip())
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the shards written so far are kept: rerun the same command to finish",
              file=sys.stderr)
        return 130
    _print_summary(report)
    if args.json:
        from ...atomic_write import write_json
        from ...outputs import OutputError

        try:
            write_json(_summary(report), args.json, option="--json")
        except OutputError as err:
            return fail(PROG, f"{err}; the shards themselves are written in {args.out}")
    return 0


def _outside(path: str, out: str) -> None:
    """--json may not go into OUT, where the shards, sample lists and manifest are written."""
    import os

    if os.path.dirname(os.path.abspath(path)) == os.path.abspath(out):
        raise ArgumentError(f"--json {path} is inside OUT {out}, which holds the shards and the manifest; "
                            f"write the summary elsewhere")


def _summary(report) -> dict:
    m = report.manifest
    splits = {name: {"shards": len(s.shards), "samples": s.samples, "bytes": sum(e.bytes for e in s.shards)}
              for name, s in m.splits.items()}
    return {"manifest": m.path, "classes": len(m.classes), "splits": splits, "written": report.written,
            "reused": report.reused, "skipped": list(m.skipped), "removed": report.removed}


def _print_summary(report) -> None:
    m = report.manifest
    for name, s in m.splits.items():
        size = sum(e.bytes for e in s.shards) / 1e6
        print(f"{name}: {s.samples} images in {len(s.shards)} shards ({size:.1f} MB)")
    print(f"shards written {report.written}, reused {report.reused}"
          + (f", stale ones removed: {', '.join(report.removed)}" if report.removed else ""))
    for item in m.skipped:  # a file name need not be valid UTF-8: never fail on printing it
        line = f"skipped (unreadable): {item['split']}/{item['path']}: {item['reason']}"
        print(line.encode("utf-8", "backslashreplace").decode("utf-8"))
    print(f"manifest: {m.path}")
