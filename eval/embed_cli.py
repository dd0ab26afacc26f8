"""`ssl-bf embed`: a checkpoint's frozen encoder -> one split's embeddings file (safetensors).

Under torchrun every rank embeds a shard and rank 0 alone writes and prints.
"""
from __future__ import annotations

import argparse
import time
from typing import Optional

from ssl_bf.cli_args import ArgumentError, Parser, nonneg_int, positive_int
from ssl_bf.file_kinds import FileKind
from ssl_bf.run_layout import Owner

from .cli_common import (EXIT_OK, add_device, add_progress_and_json, add_skip_unreadable, check_device,
                         check_inputs_exist, input_notes, leave_group, run_command, sidecar, skipped_summary, table,
                         write_json)
from .import_choices import ImportChoices, add_import_options
from .options import Output, check_outputs


def embed_parser() -> Parser:
    p = Parser(
        prog="ssl-bf embed",
        description="Extract features of one split with a checkpoint's frozen encoder (eval mode, eval "
        "transform, never BatchFormer) and write them as a safetensors embeddings file holding "
        "'embeddings' (N, D) and 'labels' (N,) with metadata.",
        epilog="example: ssl-bf embed --checkpoint runs/demo/checkpoints/last.pt --split test "
        "--out runs/demo/embeddings/test.safetensors")
    p.add_argument("--checkpoint", required=True,
                   help="training checkpoint (RUN/checkpoints/last.pt), exported backbone, or a checkpoint of "
                   "another project (MoCo, MoCo-v3, DINO, solo-learn, torchvision, timm: see `ssl-bf inspect`)")
    p.add_argument("--data", help="dataset name (fashion-mnist, cifar10, cifar100, imagefolder, folder, shards), an "
                   "image folder, or a shard manifest (`ssl-bf shard`); default: the checkpoint's config")
    p.add_argument("--root", help="data root for a dataset name (default: the config's, or the usual places)")
    p.add_argument("--split", choices=["train", "test"], required=True)
    p.add_argument("--out", required=True, help="output file (.safetensors)")
    p.add_argument("--features", choices=["backbone", "projection"], default="backbone",
                   help="backbone output (default) or projector output")
    p.add_argument("--batch-size", type=positive_int, default=256)
    add_device(p)
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="stored precision")
    p.add_argument("--normalise", "--normalize", dest="normalise", action="store_true",
                   help="store L2-normalised features")
    p.add_argument("--image-size", type=positive_int, help="eval crop size (default: the run's "
                   "augment.image_size, else the native size; 224 for image folders and 224 px checkpoints)")
    add_import_options(p)
    p.add_argument("--workers", type=nonneg_int, default=4, help="DataLoader workers for image folders and shards")
    p.add_argument("--subset", type=positive_int, help="embed only the first N images")
    p.add_argument("--no-paths", action="store_true", help="do not store image paths (folders; shards: shard:key)")
    add_skip_unreadable(p)
    add_progress_and_json(p, "also write a summary as JSON")
    return p


def embed_main(argv: Optional[list[str]] = None) -> int:
    """`ssl-bf embed`; under torchrun every rank embeds a shard and rank 0 alone writes and prints."""
    return run_command("ssl-bf embed", embed_parser, _embed_command, argv)


def check_inputs(args: argparse.Namespace) -> None:
    """What `ssl-bf embed` checks before any compute, the device aside (`ssl-bf submit` runs it too):
    the checkpoint exists, --out and --json may be written, --out is a .safetensors name."""
    check_outputs([Output("--out", args.out, FileKind.SAFETENSORS, Owner.EMBED),
                   Output("--json", args.json, FileKind.JSON)], inputs=[args.checkpoint, sidecar(args.checkpoint)])
    if not args.out.lower().endswith(".safetensors"):
        raise ArgumentError(f"--out {args.out}: embeddings are written as safetensors; give a file name "
                            f"ending in .safetensors")
    check_inputs_exist([("--checkpoint", args.checkpoint)])


def _embed_command(args: argparse.Namespace) -> int:
    from ssl_bf import distributed as dist_utils

    from .embed import embed

    check_inputs(args)
    check_device(args.device)
    tic = time.perf_counter()
    had_group = dist_utils.is_initialized()
    ok = False  # this rank finished its part
    try:
        emb = embed(args.checkpoint, args.data, args.split, args.out, features=args.features, root=args.root,
                    batch_size=args.batch_size, device=args.device, dtype=args.dtype, normalise=args.normalise,
                    image_size=args.image_size, num_workers=args.workers, save_paths=not args.no_paths,
                    subset=args.subset, progress=not args.no_progress, choices=ImportChoices.from_args(args),
                    skip_unreadable=args.skip_unreadable)
        ok = True
    finally:
        leave_group(had_group, wait=ok)
    if emb is None:  # a rank other than 0: its rows went to rank 0
        return EXIT_OK
    input_notes("ssl-bf embed", emb.metadata)
    summary = {"out": args.out, "rows": len(emb), "dim": emb.dim, "dtype": args.dtype,
               "dataset": emb.metadata.get("dataset"), "split": args.split, "features": args.features,
               "num_classes": emb.num_classes, "seconds": round(time.perf_counter() - tic, 2),
               **skipped_summary(emb.metadata)}
    print(table(["file", "rows", "dim", "dtype", "dataset", "split", "features", "seconds"],
                [[args.out, len(emb), emb.dim, args.dtype, summary["dataset"], args.split, args.features,
                  summary["seconds"]]]))
    write_json(summary, args.json)
    return EXIT_OK
