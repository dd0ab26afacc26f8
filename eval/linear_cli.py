"""`ssl-bf linear`: a linear probe of a frozen encoder (mocov2, mocov3, cached, logreg).

The image protocols (mocov2, mocov3) train on augmented images and, under torchrun, split every
global batch over the ranks; the cached ones (cached, logreg) read embeddings files or embed both
splits first. Rank 0 alone prints and writes.
"""
from __future__ import annotations

import argparse
from typing import Optional

from ssl_bf.cli_args import (ArgumentError, Parser, fail, nonneg_float, nonneg_int, open_fraction,
                             positive_float, positive_int, seed)
from ssl_bf.file_kinds import FileKind

from .cli_common import (EXIT_CHECK, EXIT_OK, add_device, add_progress_and_json, add_skip_unreadable, check_device,
                         check_inputs_exist, check_train_test, input_notes, leave_group, print_note, run_command,
                         sidecar, skipped_summary, unique_values, write_json)
from .few_shot_probe import add_few_shot_options, check_few_shot_options, is_few_shot
from .groups import add_group_options, check_group_options
from .import_choices import ImportChoices, add_import_options
from .options import Output, check_outputs

DEFAULT_PROBE_SAVE_EVERY = 500  # steps between mid-epoch saves of an image probe with --work-dir


def linear_parser() -> Parser:
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
    p.add_argument("--data", help="dataset name, image folder or shard manifest (default: the checkpoint's config)")
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
    add_skip_unreadable(p)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--work-dir", metavar="DIR", help="mocov2/mocov3: keep the probe's state in DIR after every "
                   "epoch (DIR/linear-probe.pt); the same command run again continues from it (a killed, "
                   "preempted or requeued probe resumes)")
    p.add_argument("--save-every", type=positive_int, metavar="STEPS",
                   help="with --work-dir: also save the state every STEPS steps inside an epoch, so a preempted "
                   f"probe loses at most STEPS steps (default {DEFAULT_PROBE_SAVE_EVERY})")
    add_device(p)
    p.add_argument("--save-head", metavar="PATH", help="write the trained head (torch, weights_only-loadable)")
    add_group_options(p)
    add_few_shot_options(p)
    add_progress_and_json(p, 'write {"top1", "top5", "protocol", "hyperparameters", "per_group", ...}; with '
                          '--shots / --label-fraction: the mean and std over draws and each draw under "draws"')
    return p


def linear_main(argv: Optional[list[str]] = None) -> int:
    """`ssl-bf linear`; under torchrun the image protocols split every global batch over the ranks
    and the cached ones embed in shards; rank 0 alone prints and writes."""
    return run_command("ssl-bf linear", linear_parser, _linear_command, argv)


def check_inputs(args: argparse.Namespace) -> None:
    """What `ssl-bf linear` checks before any compute, the device aside (`ssl-bf submit` runs it too):
    the options fit the protocol, the inputs exist, the outputs and --work-dir may be written,
    --test is not the --train file."""
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
    check_group_options(args)
    check_few_shot_options(args)
    if is_few_shot(args) and args.protocol not in ("cached", "logreg"):
        raise ArgumentError(f"--shots / --label-fraction train a probe on cached embeddings: use --protocol cached "
                            f"or logreg, not {args.protocol}")
    if is_few_shot(args) and args.save_head:
        raise ArgumentError(f"--save-head {args.save_head} saves one head, but --shots / --label-fraction trains "
                            f"one per draw; leave --save-head out")
    if args.lrs:
        args.lrs = unique_values("ssl-bf linear", "--lrs", args.lrs)
    if args.l2:
        args.l2 = unique_values("ssl-bf linear", "--l2", args.l2)
    check_outputs([Output("--save-head", args.save_head, FileKind.TORCH), Output("--json", args.json, FileKind.JSON)],
                  inputs=[args.checkpoint, sidecar(args.checkpoint), args.train, args.test, args.train_labels,
                          args.test_labels])
    if args.train and args.test:
        check_train_test(args, "the probe would be scored on the rows it was trained on")
    if args.work_dir:
        _check_work_dir(args)
    elif args.save_every:
        raise ArgumentError(f"--save-every {args.save_every} saves the probe's state into --work-dir; give --work-dir DIR")
    check_inputs_exist([("--checkpoint", args.checkpoint), ("--train", args.train), ("--test", args.test),
                        ("--train-labels", args.train_labels), ("--test-labels", args.test_labels)])


def _linear_command(args: argparse.Namespace) -> int:
    from .linear_common import save_head
    from .linear_images import BackboneChangedError

    prog = "ssl-bf linear"
    check_inputs(args)
    check_device(args.device)
    from ssl_bf import distributed as dist_utils

    had_group = dist_utils.is_initialized()
    ok = False  # this rank finished its part
    try:
        if args.protocol in ("mocov2", "mocov3"):
            result, classes, skipped = _linear_images(args)
        else:
            result, classes, skipped = _linear_cached(args)
        ok = True
    except BackboneChangedError as err:
        return fail(prog, err, EXIT_CHECK)
    finally:
        leave_group(had_group, wait=ok)
    if result is None:  # a rank other than 0 of a process group: rank 0 reports
        return EXIT_OK
    from .groups import group_accuracy, groups_from_options
    from .linear_cached_run import print_few_shot, print_probe

    if isinstance(result, dict):  # --shots / --label-fraction: the summary over draws
        print_few_shot(args.protocol, result)
        write_json({"protocol": args.protocol, **result, **skipped}, args.json)
        return EXIT_OK
    per_group = group_accuracy(result.class_hits, result.class_totals, groups_from_options(args, result.train_counts))
    if args.save_head:
        save_head(args.save_head, result, classes)
    print_probe(result, per_group)
    write_json({**result.to_dict(), "per_group": per_group, "head": args.save_head, **skipped}, args.json)
    return EXIT_OK


def _check_work_dir(args: argparse.Namespace) -> None:
    """--work-dir: only for the image protocols, and a folder that can be made and written."""
    from ssl_bf.outputs import check_output_folder

    if args.protocol not in ("mocov2", "mocov3"):
        raise ArgumentError(f"--work-dir keeps the epochs of --protocol mocov2/mocov3; --protocol {args.protocol} "
                            f"has no epochs to resume")
    check_output_folder(args.work_dir, option="--work-dir")


def _join_torchrun(device) -> None:
    """Join the process group when torchrun (or a multi-task SLURM job) started this process."""
    from ssl_bf import distributed as dist_utils

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
                                         subset=_fit_subset(args.subset, name, root, split),
                                         skip_unreadable=args.skip_unreadable)
                           for split in ("train", "test"))
    for dataset in (train_set, test_set):
        note = fit_dataset(model, cfg, dataset, args.checkpoint)
    if note:
        print_note("ssl-bf linear", note)
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
    return (result if dist_utils.is_main() else None), train_set.classes, _probe_skipped(args, train_set, test_set, dev)


def _probe_skipped(args, train_set, test_set, device) -> dict:
    """--skip-unreadable: the images the probe replaced (training) or left out (test), from every
    rank, named on stderr; `{"unreadable_skipped": [paths]}` for the JSON, or {}."""
    from ssl_bf.data.folders import unreadable_everywhere

    if not args.skip_unreadable or not hasattr(train_set, "unreadable"):
        return {}
    paths = unreadable_everywhere([train_set, test_set], device)
    for path in paths or []:
        print_note("ssl-bf linear", f"--skip-unreadable: replaced (training) or left out (test) unreadable image {path}")
    return {"unreadable_skipped": paths} if paths else {}


def _fit_subset(subset: Optional[int], name: str, root: Optional[str], split: str) -> Optional[int]:
    """`--subset N`, capped at the split's size (a test split may be smaller than N)."""
    if subset is None:
        return None
    from ssl_bf.data import build_dataset

    return min(subset, len(build_dataset(name, root=root, split=split)))


def _linear_cached(args):
    from .formats import check_pair, load_embeddings
    if args.train and args.test:
        import os

        if int(os.environ.get("RANK", "0")) != 0:  # several tasks on embeddings files: rank 0 alone probes
            return None, None, {}
        train = load_embeddings(args.train, args.train_labels)
        test = load_embeddings(args.test, args.test_labels)
    else:  # embed both splits with the checkpoint (loaded once)
        from ssl_bf.devices import resolve_device

        from .embed import embed, load_embedding_encoder

        encoder = load_embedding_encoder(args.checkpoint, features=args.features, device=resolve_device(args.device),
                                         choices=ImportChoices.from_args(args), image_size=args.image_size)
        train, test = (embed(args.checkpoint, args.data, split, None, features=args.features, root=args.root,
                             device=args.device, num_workers=args.workers, subset=args.subset,
                             progress=not args.no_progress, encoder=encoder, image_size=args.image_size,
                             skip_unreadable=args.skip_unreadable)
                       for split in ("train", "test"))
        if train is None:  # a rank other than 0 of a process group: its shards went to rank 0
            return None, None, {}
        input_notes("ssl-bf linear", train.metadata)
    check_pair(train, test)
    from .linear_cached_run import probe_embeddings

    result = probe_embeddings(args, train, test)
    listed = skipped_summary(train.metadata).get("unreadable_skipped", []) + \
        skipped_summary(test.metadata).get("unreadable_skipped", [])
    return result, train.classes, ({"unreadable_skipped": listed} if listed else {})
