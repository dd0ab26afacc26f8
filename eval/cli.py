"""Command-line entry points `ssl-bf embed|knn|linear|evaluate` (dispatched by ssl_bf/cli.py).

Each `*_main(argv)` parses its own arguments, prints a readable table, writes `--json OUT`
atomically when asked, and returns an exit code: 0 success, 2 bad input, 3 a failed check.
Heavy imports happen after parsing, so `--help` is instant.

Bad input never gives a wrong number, never destroys work and never a traceback: every number is
checked at parse time (`options.py`), every output path before any compute (`check_outputs`:
never a folder, a training checkpoint or the command's own input), and every error is one line
`ssl-bf CMD: error: ...` on stderr naming the option or file at fault, with exit code 2.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, Optional, Sequence

from ssl_bf.cli_args import (ArgumentError, Parser, device_name, nonneg_float, nonneg_int, one_line, open_fraction,
                             positive_float, positive_int, seed, unique)

from .import_choices import ImportChoices, add_import_options
from .options import check_outputs, same_file

EXIT_OK, EXIT_INPUT, EXIT_CHECK, EXIT_INTERRUPTED = 0, 2, 3, 130
DEFAULT_PROBE_SAVE_EVERY = 500  # steps between mid-epoch saves of an image probe with --work-dir


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) >= 0.1 or v == 0 else f"{v:g}"
    return "-" if v is None else str(v)


def _write_json(obj: dict, path: Optional[str]) -> None:
    if path:
        from ssl_bf.io import write_json_atomic

        write_json_atomic(obj, path)


def _fail(prog: str, err: "BaseException | str", code: int = EXIT_INPUT) -> int:
    """Print the one error line `PROG: error: MESSAGE` on stderr; returns `code`."""

    print(f"{prog}: error: {one_line(err, limit=1000)}", file=sys.stderr)
    return code


def _note(prog: str, text: str) -> None:
    print(f"{prog}: note: {text}", file=sys.stderr)


def _input_errors() -> tuple[type[BaseException], ...]:
    from ssl_bf.config import ConfigError
    from ssl_bf.data import DataError

    # RuntimeError: a mismatched checkpoint (load_state_dict), no CUDA. OSError: a file that
    # cannot be read or written (the message names it).
    return (ValueError, OSError, ConfigError, DataError, KeyError, RuntimeError)


def _run(prog: str, parser: Callable[[], argparse.ArgumentParser], body: Callable[[argparse.Namespace], int],
         argv: Optional[list[str]]) -> int:
    """Parse `argv` and run `body(args)`; a bad input becomes one error line and exit code 2."""
    try:
        args = parser().parse_args(argv)
        return body(args)
    except ArgumentError as err:
        return _fail(prog, err)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _input_errors() as err:
        return _fail(prog, err)


def _unique(prog: str, option: str, values: Sequence) -> list:
    """`values` without repeats (in order); a note names the option when some were dropped."""
    kept, repeated = unique(values)
    if repeated:
        _note(prog, f"{option} lists {', '.join(map(str, repeated))} more than once; each value is used once")
    return kept


def _sidecar(checkpoint: Optional[str]) -> Optional[str]:
    """The `ssl-bf export` sidecar JSON of an exported backbone (an input too)."""
    from ssl_bf.checkpoints.checkpoint import sidecar_path

    return sidecar_path(checkpoint) if checkpoint else None


def _check_device(device: str) -> None:
    """Resolve `--device` now (CUDA asked for where there is none fails before any compute)."""
    from ssl_bf.devices import resolve_device

    resolve_device(device)


def _input_notes(prog: str, metadata: dict) -> None:
    """Say on stderr how a checkpoint of another project was read and how its input was adapted."""
    if metadata.get("checkpoint_format"):
        _note(prog, f"read {metadata.get('checkpoint')} as a {metadata['checkpoint_format']} checkpoint "
                    f"(`ssl-bf inspect` lists what was loaded and dropped)")
    if metadata.get("input_adapted"):
        _note(prog, metadata["input_adapted"])


def knn_table(results: list[dict]) -> str:
    return _table(["k", "T", "top-1 %", "top-5 %"],
                  [[r["k"], r["temperature"], r["top1"], r["top5"]] for r in results])


# ----------------------------------------------------------------------------------------------
# embed
# ----------------------------------------------------------------------------------------------


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=device_name, default="auto",
                   help="auto (CUDA when available) | cpu | cuda[:N] (default auto)")


def embed_parser() -> argparse.ArgumentParser:
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
    p.add_argument("--data", help="dataset name (fashion-mnist, cifar10, cifar100, imagefolder, folder) or an "
                   "image folder; default: the checkpoint's config")
    p.add_argument("--root", help="data root for a dataset name (default: the config's, or the usual places)")
    p.add_argument("--split", choices=["train", "test"], required=True)
    p.add_argument("--out", required=True, help="output file (.safetensors)")
    p.add_argument("--features", choices=["backbone", "projection"], default="backbone",
                   help="backbone output (default) or projector output")
    p.add_argument("--batch-size", type=positive_int, default=256)
    _add_device(p)
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="stored precision")
    p.add_argument("--normalize", action="store_true", help="store L2-normalised features")
    p.add_argument("--image-size", type=positive_int, help="eval crop size (default: the run's "
                   "augment.image_size, else the native size; 224 for image folders and 224 px checkpoints)")
    add_import_options(p)
    p.add_argument("--workers", type=nonneg_int, default=4, help="DataLoader workers for image folders")
    p.add_argument("--subset", type=positive_int, help="embed only the first N images")
    p.add_argument("--no-paths", action="store_true", help="do not store image paths (folders)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", metavar="OUT", help="also write a summary as JSON")
    return p


def _leave_group(had_group: bool) -> None:
    """Destroy the process group that a torchrun-launched command joined. No barrier: a rank
    that failed must not leave the others waiting for it."""
    from ssl_bf import distributed as dist_utils

    if dist_utils.is_initialized() and not had_group:
        import torch.distributed

        torch.distributed.destroy_process_group()


def embed_main(argv: Optional[list[str]] = None) -> int:
    """`ssl-bf embed`; under torchrun every rank embeds a shard and rank 0 alone writes and prints."""
    return _run("ssl-bf embed", embed_parser, _embed_command, argv)


def _embed_command(args: argparse.Namespace) -> int:
    from ssl_bf import distributed as dist_utils

    from .embed import embed

    check_outputs([("--out", args.out), ("--json", args.json)], inputs=[args.checkpoint, _sidecar(args.checkpoint)])
    if not args.out.lower().endswith(".safetensors"):
        raise ArgumentError(f"--out {args.out}: embeddings are written as safetensors; give a file name "
                            f"ending in .safetensors")
    _check_device(args.device)
    tic = time.perf_counter()
    had_group = dist_utils.is_initialized()
    try:
        emb = embed(args.checkpoint, args.data, args.split, args.out, features=args.features, root=args.root,
                    batch_size=args.batch_size, device=args.device, dtype=args.dtype, normalize=args.normalize,
                    image_size=args.image_size, num_workers=args.workers, save_paths=not args.no_paths,
                    subset=args.subset, progress=not args.no_progress, choices=ImportChoices.from_args(args))
    finally:
        _leave_group(had_group)
    if emb is None:  # a rank other than 0: its rows went to rank 0
        return EXIT_OK
    _input_notes("ssl-bf embed", emb.metadata)
    summary = {"out": args.out, "rows": len(emb), "dim": emb.dim, "dtype": args.dtype,
               "dataset": emb.metadata.get("dataset"), "split": args.split, "features": args.features,
               "num_classes": emb.num_classes, "seconds": round(time.perf_counter() - tic, 2)}
    print(_table(["file", "rows", "dim", "dtype", "dataset", "split", "features", "seconds"],
                 [[args.out, len(emb), emb.dim, args.dtype, summary["dataset"], args.split, args.features,
                   summary["seconds"]]]))
    _write_json(summary, args.json)
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# knn
# ----------------------------------------------------------------------------------------------


def knn_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="ssl-bf knn",
        description="Weighted k-NN accuracy (cosine similarity, votes exp(s/T)) of test embeddings against "
        "train embeddings. One FAISS search for the largest k; every (k, T) pair is scored from it.",
        epilog="Files: safetensors embeddings (from `ssl-bf embed` or any program writing 'embeddings' and "
        "'labels'), X.npy with its labels .npy, .npz, or DINO eval_knn.py dumps (trainfeat.pth + "
        "trainlabels.pth). The class count comes from the train file (metadata or labels), never the test file.")
    p.add_argument("--train", required=True, help="train embeddings file")
    p.add_argument("--test", required=True, help="test embeddings file")
    p.add_argument("--train-labels", help="labels file for .npy/.pth train features (default: found by name)")
    p.add_argument("--test-labels", help="labels file for .npy/.pth test features (default: found by name)")
    p.add_argument("--k", type=positive_int, nargs="+", default=[20, 200],
                   help="neighbour counts (default 20 200); a value given twice is scored once")
    p.add_argument("--temperature", type=positive_float, nargs="+", default=[0.07, 0.1],
                   help="vote temperatures, positive (default 0.07 0.1)")
    p.add_argument("--index", choices=["flat", "flat-fp16", "ivf", "hnsw"], default="flat",
                   help="flat: exact IndexFlatIP (default); flat-fp16: exact over float16 storage (half the "
                   "memory); ivf, hnsw: approximate, for millions of rows (recall against flat is reported)")
    p.add_argument("--recall-sample", type=nonneg_int, default=1000,
                   help="queries used to measure recall of ivf/hnsw against exact search (0: skip)")
    p.add_argument("--memory-budget", type=positive_float, default=2.0, metavar="GB",
                   help="memory for the whole command (default 2). Exact search on the CPU (--index flat) "
                   "streams a .safetensors/.npy bank from its file in row blocks sized to fit; the other "
                   "indexes (and a GPU) hold the whole index on top of it")
    _add_device(p)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", metavar="OUT", help='write {"results": [{"k", "temperature", "top1", "top5"}], ...}')
    return p


def knn_main(argv: Optional[list[str]] = None) -> int:
    return _run("ssl-bf knn", knn_parser, _knn_command, argv)


def _peak_gb() -> float:
    """This command's peak resident memory (GB)."""
    from ssl_bf.knn.stream import peak_resident_gb

    return peak_resident_gb()


def _check_train_test(args: argparse.Namespace, why: str) -> None:
    if same_file(args.train, args.test):
        raise ArgumentError(f"--test {args.test} is the --train file: {why}; give the test split's embeddings")


def _knn_command(args: argparse.Namespace) -> int:
    from .formats import check_pair, load_embeddings, open_embeddings
    from ssl_bf.knn.vote import knn_evaluate, use_gpu

    prog = "ssl-bf knn"
    ks = _unique(prog, "--k", args.k)
    temperatures = _unique(prog, "--temperature", args.temperature)
    check_outputs([("--json", args.json)], inputs=[args.train, args.test, args.train_labels, args.test_labels])
    _check_train_test(args, "every query would find itself as its nearest neighbour (an inflated accuracy)")
    _check_device(args.device)
    tic = time.perf_counter()
    streamed = args.index == "flat" and not use_gpu(args.device)  # exact on the CPU: rows stay in the files
    read = open_embeddings if streamed else load_embeddings
    train = read(args.train, args.train_labels)
    test = read(args.test, args.test_labels)
    check_pair(train, test, ks)
    out = knn_evaluate(train.embeddings, train.labels, test.embeddings, test.labels, ks, temperatures,
                       num_classes=train.num_classes, index=args.index, memory_budget_gb=args.memory_budget,
                       device=args.device, progress=not args.no_progress, recall_sample=args.recall_sample)
    print(f"k-NN: {len(train)} train x {len(test)} test rows, D={train.dim}, {out.num_classes} classes, "
          f"index {args.index}, search {out.search_seconds:.2f} s")
    if out.recall is not None:
        print(f"recall@{max(ks)} of {args.index} against exact search: {100 * out.recall:.2f}%")
    if out.plan is not None:
        print(f"bank streamed: {out.plan.describe()}; peak memory {_peak_gb():.2f} GB "
              f"(budget {args.memory_budget:g} GB)")
    print(knn_table(out.results))
    _write_json({"results": out.results, "train": args.train, "test": args.test, "index": args.index,
                 "recall": out.recall, "num_classes": out.num_classes, "train_rows": len(train),
                 "test_rows": len(test), "dim": train.dim, "search_seconds": round(out.search_seconds, 3),
                 "memory_budget_gb": args.memory_budget, "streamed": out.plan is not None,
                 "plan": vars(out.plan) if out.plan is not None else None,
                 "peak_memory_gb": round(_peak_gb(), 3),
                 "seconds": round(time.perf_counter() - tic, 3)}, args.json)
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# linear
# ----------------------------------------------------------------------------------------------


def linear_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="ssl-bf linear",
        description="Linear probe of a frozen encoder. mocov2: SGD lr 30, 100 epochs, steps at 60/80, batch "
        "256. mocov3: SGD lr 0.1 x batch/256, cosine, 90 epochs, batch 1024. Both train on augmented images "
        "(RandomResizedCrop + flip) with the backbone in eval mode and check it is unchanged afterwards. "
        "cached: SGD on embeddings files (no augmentation; a different protocol), several lrs at once, "
        "chosen on a held-out part of train. logreg: L-BFGS logistic regression on cached features, L2 "
        "chosen the same way.",
        epilog="examples:\n  ssl-bf linear --protocol mocov2 --checkpoint runs/demo/checkpoints/last.pt\n"
        "  torchrun --nproc_per_node=8 -m ssl_bf linear --protocol mocov2 --checkpoint RUN/checkpoints/last.pt "
        "--work-dir RUN/linear-mocov2   # the global batch split over 8 processes\n"
        "  ssl-bf linear --protocol cached --train runs/demo/embeddings/train.safetensors "
        "--test runs/demo/embeddings/test.safetensors --json lin.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", choices=["mocov2", "mocov3", "cached", "logreg"], required=True)
    p.add_argument("--checkpoint", help="checkpoint (mocov2/mocov3; cached/logreg embed from it unless "
                   "--train/--test are given)")
    p.add_argument("--data", help="dataset name or image folder (default: the checkpoint's config)")
    p.add_argument("--root", help="data root for a dataset name")
    p.add_argument("--train", help="cached/logreg: train embeddings file")
    p.add_argument("--test", help="cached/logreg: test embeddings file")
    p.add_argument("--train-labels", help="labels file for .npy/.pth train features")
    p.add_argument("--test-labels", help="labels file for .npy/.pth test features")
    p.add_argument("--features", choices=["backbone", "projection"], default="backbone")
    p.add_argument("--bn-head", action="store_true", help="non-affine BatchNorm before the linear layer (MAE)")
    p.add_argument("--epochs", type=positive_int, help="override the protocol's epochs")
    p.add_argument("--lr", type=positive_float, help="mocov2/mocov3: override the (base) lr")
    p.add_argument("--lrs", type=positive_float, nargs="+", help="cached: learning rates to sweep "
                   "(default 0.003 0.01 0.03 0.1 0.3 1 3 10)")
    p.add_argument("--l2", type=positive_float, nargs="+",
                   help="logreg: L2 strengths to sweep (default 1e-2 1e-3 1e-4 1e-5)")
    p.add_argument("--max-iter", type=positive_int, default=100,
                   help="logreg: L-BFGS iterations per fit (default 100)")
    p.add_argument("--batch-size", type=positive_int, help="override the protocol's batch size")
    p.add_argument("--weight-decay", type=nonneg_float, help="override the protocol's weight decay (0)")
    p.add_argument("--val-fraction", type=open_fraction, default=0.1,
                   help="cached/logreg: held-out part of train used to choose the lr / L2 (default 0.1)")
    p.add_argument("--no-refit", action="store_true", help="cached/logreg: do not refit on all of train")
    p.add_argument("--image-size", type=positive_int, help="crop size (default: the run's; a checkpoint of "
                   "another project: its native size, 224 for ImageNet ones)")
    add_import_options(p)
    p.add_argument("--subset", type=positive_int, help="use only the first N images of each split (smoke tests)")
    p.add_argument("--workers", type=nonneg_int, default=4)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--work-dir", metavar="DIR", help="mocov2/mocov3: keep the probe's state in DIR after every "
                   "epoch (DIR/linear-probe.pt); the same command run again continues from it (a killed, "
                   "preempted or requeued probe resumes)")
    p.add_argument("--save-every", type=positive_int, metavar="STEPS",
                   help="with --work-dir: also save the state every STEPS steps inside an epoch, so a preempted "
                   f"probe loses at most STEPS steps (default {DEFAULT_PROBE_SAVE_EVERY})")
    _add_device(p)
    p.add_argument("--save-head", metavar="PATH", help="write the trained head (torch, weights_only-loadable)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", metavar="OUT", help='write {"top1", "top5", "protocol", "hyperparameters", ...}')
    return p


def linear_main(argv: Optional[list[str]] = None) -> int:
    """`ssl-bf linear`; under torchrun the image protocols split every global batch over the ranks
    and the cached ones embed in shards; rank 0 alone prints and writes."""
    return _run("ssl-bf linear", linear_parser, _linear_command, argv)


def _linear_command(args: argparse.Namespace) -> int:
    from .linear_common import save_head
    from .linear_images import BackboneChangedError

    prog = "ssl-bf linear"
    if args.protocol in ("mocov2", "mocov3") and not args.checkpoint:
        raise ArgumentError(f"--protocol {args.protocol} needs --checkpoint")
    if args.protocol in ("mocov2", "mocov3") and (args.train or args.test):
        raise ArgumentError(f"--train/--test are embeddings files for --protocol cached or logreg; --protocol "
                            f"{args.protocol} trains on augmented images (give --checkpoint and --data)")
    if (args.train is None) != (args.test is None) and args.checkpoint:
        raise ArgumentError("--train and --test go together: give both embeddings files, or neither to embed "
                            "both splits with --checkpoint")
    if args.protocol in ("cached", "logreg") and not (args.train and args.test) and not args.checkpoint:
        raise ArgumentError(f"--protocol {args.protocol} needs --train and --test embeddings files, or --checkpoint")
    if args.lrs:
        args.lrs = _unique(prog, "--lrs", args.lrs)
    if args.l2:
        args.l2 = _unique(prog, "--l2", args.l2)
    check_outputs([("--save-head", args.save_head), ("--json", args.json)],
                  inputs=[args.checkpoint, _sidecar(args.checkpoint), args.train, args.test, args.train_labels,
                          args.test_labels])
    if args.train and args.test:
        _check_train_test(args, "the probe would be scored on the rows it was trained on")
    if args.work_dir:
        _check_work_dir(args)
    elif args.save_every:
        raise ArgumentError(f"--save-every {args.save_every} saves the probe's state into --work-dir; give --work-dir DIR")
    _check_device(args.device)
    from ssl_bf import distributed as dist_utils

    had_group = dist_utils.is_initialized()
    try:
        if args.protocol in ("mocov2", "mocov3"):
            result, classes = _linear_images(args)
        else:
            result, classes = _linear_cached(args)
    except BackboneChangedError as err:
        return _fail(prog, err, EXIT_CHECK)
    finally:
        _leave_group(had_group)
    if result is None:  # a rank other than 0 of a process group: rank 0 reports
        return EXIT_OK
    if args.save_head:
        save_head(args.save_head, result, classes)
    print(f"linear probe, protocol {result.protocol}" + (f" ({result.note})" if result.note else ""))
    if result.sweep:
        key = "lr" if "lr" in result.sweep[0] else "l2"
        print(_table([key, "held-out top-1 %"], [[s[key], s["val_top1"]] for s in result.sweep]))
    chosen = {k: v for k, v in result.hyperparameters.items() if k in ("lr", "l2", "used_lr", "epochs", "batch_size")}
    print(_table(["protocol", "top-1 %", "top-5 %", "chosen", "seconds"],
                 [[result.protocol, result.top1, result.top5,
                   " ".join(f"{k}={_fmt(v)}" for k, v in chosen.items()), round(result.seconds, 2)]]))
    _write_json({**result.to_dict(), "head": args.save_head}, args.json)
    return EXIT_OK


def _check_work_dir(args: argparse.Namespace) -> None:
    """--work-dir: only for the image protocols, and a folder that can be made and written."""
    import os

    from ssl_bf.io import folder_problem

    if args.protocol not in ("mocov2", "mocov3"):
        raise ArgumentError(f"--work-dir keeps the epochs of --protocol mocov2/mocov3; --protocol {args.protocol} "
                            f"has no epochs to resume")
    if os.path.exists(args.work_dir) and not os.path.isdir(args.work_dir):
        raise ArgumentError(f"--work-dir {args.work_dir} is a file; give a folder")
    problem = folder_problem(args.work_dir)
    if problem:
        raise ArgumentError(f"--work-dir {args.work_dir}: {problem}")


def _join_torchrun(device) -> None:
    """Join the process group when torchrun (or a multi-task SLURM job) started this process."""
    import os

    from ssl_bf import distributed as dist_utils

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist_utils.init_distributed(device)


def _linear_images(args):
    import os

    from ssl_bf import distributed as dist_utils
    from ssl_bf.data import build_dataset
    from ssl_bf.devices import resolve_device

    from .embed import eval_image_size, fit_dataset, load_embedding_encoder, require_data, resolve_data
    from .linear_common import recipe_for
    from .linear_images import probe_images

    dev = resolve_device(args.device)
    _join_torchrun(dev)
    model, cfg = load_embedding_encoder(args.checkpoint, features=args.features, device=dev,
                                        choices=ImportChoices.from_args(args), image_size=args.image_size)
    require_data(model, args.data, args.checkpoint)
    name, root = resolve_data(args.data, args.root) if args.data else (cfg.data.name, args.root or cfg.data.root)
    train_set, test_set = (build_dataset(name, root=root, split=split, load_size=cfg.data.load_size,
                                         subset=_fit_subset(args.subset, name, root, split))
                           for split in ("train", "test"))
    for dataset in (train_set, test_set):
        note = fit_dataset(model, cfg, dataset, args.checkpoint)
    if note:
        _note("ssl-bf linear", note)
    recipe = recipe_for(args.protocol, args.epochs, args.batch_size, args.lr, args.weight_decay)
    size = args.image_size or eval_image_size(cfg.augment.image_size, train_set)
    identity = {"checkpoint": os.path.abspath(args.checkpoint), "features": args.features, "data": name,
                "root": os.path.abspath(root) if root else None, "subset": args.subset}
    if dist_utils.is_main():
        print(f"linear {args.protocol}: {dist_utils.world_size()} process(es) on {dev}, global batch "
              f"{recipe.batch_size}", flush=True)
    result = probe_images(model, train_set, test_set, recipe, size, args.protocol, args.bn_head, dev,
                          args.workers, args.seed, progress=not args.no_progress, work_dir=args.work_dir,
                          identity=identity, save_every=args.save_every or DEFAULT_PROBE_SAVE_EVERY)
    return (result if dist_utils.is_main() else None), train_set.classes


def _fit_subset(subset: Optional[int], name: str, root: Optional[str], split: str) -> Optional[int]:
    """`--subset N`, capped at the split's size (a test split may be smaller than N)."""
    if subset is None:
        return None
    from ssl_bf.data import build_dataset

    return min(subset, len(build_dataset(name, root=root, split=split)))


def _linear_cached(args):
    from .formats import check_pair, load_embeddings
    from .linear_cached import DEFAULT_CACHED_LRS, DEFAULT_L2, probe_cached, probe_logreg
    from .linear_common import recipe_for

    if args.train and args.test:
        import os

        if int(os.environ.get("RANK", "0")) != 0:  # several tasks on embeddings files: rank 0 alone probes
            return None, None
        train = load_embeddings(args.train, args.train_labels)
        test = load_embeddings(args.test, args.test_labels)
    else:  # embed both splits with the checkpoint (loaded once)
        from ssl_bf.devices import resolve_device

        from .embed import embed, load_embedding_encoder

        encoder = load_embedding_encoder(args.checkpoint, features=args.features, device=resolve_device(args.device),
                                         choices=ImportChoices.from_args(args), image_size=args.image_size)
        train, test = (embed(args.checkpoint, args.data, split, None, features=args.features, root=args.root,
                             device=args.device, num_workers=args.workers, subset=args.subset,
                             progress=not args.no_progress, encoder=encoder, image_size=args.image_size)
                       for split in ("train", "test"))
        if train is None:  # a rank other than 0 of a process group: its shards went to rank 0
            return None, None
        _input_notes("ssl-bf linear", train.metadata)
    check_pair(train, test)
    device = "cpu" if args.device == "auto" else args.device
    common = dict(num_classes=train.num_classes, val_fraction=args.val_fraction, refit=not args.no_refit,
                  seed=args.seed, device=device)
    if args.protocol == "cached":
        recipe = recipe_for("cached", args.epochs, args.batch_size, None, args.weight_decay)
        result = probe_cached(train.embeddings, train.labels, test.embeddings, test.labels,
                              lrs=args.lrs or DEFAULT_CACHED_LRS, recipe=recipe, bn_head=args.bn_head, **common)
    else:
        result = probe_logreg(train.embeddings, train.labels, test.embeddings, test.labels,
                              l2s=args.l2 or DEFAULT_L2, max_iter=args.max_iter, **common)
    return result, train.classes


# ----------------------------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------------------------


def _probes(text: str) -> tuple[str, ...]:
    """`--linear`: 'cached,logreg' | 'cached' | 'logreg' | 'none', checked at parse time."""
    from .evaluate import parse_probes

    try:
        return parse_probes(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def evaluate_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="ssl-bf evaluate",
        description="Evaluate a finished run: embed train and test with RUN/checkpoints/last.pt (data from "
        "RUN/config.yaml) into RUN/embeddings/, k-NN at (k=20, T=0.07) and (k=200, T=0.1), a cached "
        "linear probe and logistic regression. Sets the knn/linear/logreg/evaluated keys of "
        "RUN/results.json (other keys kept) and "
        "appends the full record to RUN/evaluations.jsonl. All or nothing: a failed evaluation "
        "leaves RUN as it was.")
    p.add_argument("run", metavar="RUN", help="run folder (with --checkpoint of another project: the folder "
                   "the results go to, created if needed)")
    p.add_argument("--checkpoint", help="default RUN/checkpoints/last.pt; also a checkpoint of another project "
                   "(see `ssl-bf inspect`), with --data")
    p.add_argument("--data", help="dataset name or image folder (default: RUN/config.yaml's; needed for a "
                   "checkpoint of another project)")
    p.add_argument("--root", help="data root for a dataset name")
    add_import_options(p)
    p.add_argument("--features", choices=["backbone", "projection"], default="backbone")
    p.add_argument("--linear", type=_probes, default=("cached", "logreg"), metavar="PROBES",
                   help="linear probes on the embeddings: 'cached,logreg' (default), 'cached', 'logreg' "
                        "or 'none'")
    p.add_argument("--index", choices=["flat", "flat-fp16", "ivf", "hnsw"], default="flat")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--memory-budget", type=positive_float, default=2.0, metavar="GB")
    p.add_argument("--reuse-embeddings", action="store_true",
                   help="keep RUN/embeddings files already made from this checkpoint")
    p.add_argument("--subset", type=positive_int,
                   help="embed only the first N images of each split (smoke tests; at least 200, the largest k)")
    p.add_argument("--workers", type=nonneg_int, default=4)
    p.add_argument("--seed", type=seed, default=0)
    _add_device(p)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", metavar="OUT", help="also write the recorded entry as JSON")
    return p


def evaluate_main(argv: Optional[list[str]] = None) -> int:
    return _run("ssl-bf evaluate", evaluate_parser, _evaluate_command, argv)


def _evaluate_command(args: argparse.Namespace) -> int:
    import os

    from ssl_bf import distributed as dist_utils

    from .evaluate import evaluate_run, run_paths

    paths = run_paths(args.run)
    if args.json:
        own = [p for p in paths.values() if os.path.abspath(p) == os.path.abspath(args.json)]
        if own:
            raise ArgumentError(f"--json {args.json} is one of the run's own files, which evaluate keeps; "
                                f"write the JSON elsewhere")
    check_outputs([("--json", args.json)], inputs=[args.checkpoint, _sidecar(args.checkpoint), *paths.values()])
    _check_device(args.device)
    had_group = dist_utils.is_initialized()
    try:
        entry = evaluate_run(args.run, args.checkpoint, features=args.features, device=args.device,
                             data=args.data, root=args.root, choices=ImportChoices.from_args(args),
                             batch_size=args.batch_size, dtype=args.dtype, index=args.index,
                             memory_budget_gb=args.memory_budget, linear=args.linear,
                             reuse_embeddings=args.reuse_embeddings, subset=args.subset,
                             num_workers=args.workers, seed=args.seed, progress=not args.no_progress)
    finally:
        _leave_group(had_group)
    if entry is None:  # a rank other than 0 of a torchrun job: it only helped extract
        return EXIT_OK
    ev = entry["evaluated"]
    print(f"evaluated {ev['checkpoint']} (epoch {ev['epoch']}, {ev['features']} features, "
          f"{ev['train_rows']} train / {ev['test_rows']} test, D={ev['dim']}) in {ev['seconds']:.1f} s")
    print("k-NN:")
    print(knn_table(entry["knn"]))
    rows = []
    for lin in (entry.get("linear"), entry.get("logreg")):
        if lin:
            chosen = lin["hyperparameters"].get("lr", lin["hyperparameters"].get("l2"))
            rows.append([lin["protocol"], lin["top1"], lin["top5"], chosen])
            print(f"{lin['protocol']}: {lin.get('note', '')}")
    if rows:
        print(_table(["probe", "top-1 %", "top-5 %", "chosen lr / l2"], rows))
    print(f"results: {args.run}/results.json")
    _write_json(entry, args.json)
    return EXIT_OK
