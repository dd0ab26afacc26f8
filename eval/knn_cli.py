"""`ssl-bf knn`: weighted k-NN accuracy of test embeddings against train embeddings (FAISS)."""
from __future__ import annotations

import argparse
import time
from typing import Optional

from ssl_bf.cli_args import ArgumentError, Parser, nonneg_int, positive_float, positive_int
from ssl_bf.file_kinds import FileKind

from .cli_common import (EXIT_OK, add_device, add_progress_and_json, check_device, check_inputs_exist,
                         check_train_test, knn_table, run_command, unique_values, write_json)
from .few_shot_probe import add_few_shot_options, check_few_shot_options
from .groups import add_group_options, check_group_options
from .options import Output, check_outputs


def knn_parser() -> Parser:
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
    add_device(p)
    add_group_options(p)
    add_few_shot_options(p, label_fraction=False, seed_option=True)
    add_progress_and_json(p, 'write {"results": [{"k", "temperature", "top1", "top5", "per_group"}], ...}; with '
                          '--shots: the mean and std over draws and each draw under "draws"')
    return p


def check_inputs(args: argparse.Namespace) -> None:
    """What `ssl-bf knn` checks before any compute, the device aside (`ssl-bf submit` runs it too):
    the input files exist, --json may be written, --test is not the --train file."""
    check_outputs([Output("--json", args.json, FileKind.JSON)],
                  inputs=[args.train, args.test, args.train_labels, args.test_labels])
    check_train_test(args, "every query would find itself as its nearest neighbour (an inflated accuracy)")
    check_group_options(args)
    check_few_shot_options(args)
    check_inputs_exist([("--train", args.train), ("--test", args.test), ("--train-labels", args.train_labels),
                        ("--test-labels", args.test_labels)])


def knn_main(argv: Optional[list[str]] = None) -> int:
    return run_command("ssl-bf knn", knn_parser, _knn_command, argv)


def _peak_gb() -> float:
    """This command's peak resident memory (GB)."""
    from ssl_bf.knn.stream import peak_resident_gb

    return peak_resident_gb()


def _knn_command(args: argparse.Namespace) -> int:
    from ssl_bf.knn.vote import LabelSpace, knn_evaluate, use_gpu

    from .formats import check_pair, load_embeddings, open_embeddings
    from .groups import groups_description, groups_from_options, knn_per_group, label_counts

    prog = "ssl-bf knn"
    ks = unique_values(prog, "--k", args.k)
    temperatures = unique_values(prog, "--temperature", args.temperature)
    check_inputs(args)
    check_device(args.device)
    tic = time.perf_counter()
    # exact on the CPU: rows stay in the files (a few-shot bank is a selection of rows: loaded)
    streamed = args.index == "flat" and not use_gpu(args.device) and args.shots is None
    read = open_embeddings if streamed else load_embeddings
    train = read(args.train, args.train_labels)
    test = read(args.test, args.test_labels)
    check_pair(train, test, ks)
    options = dict(num_classes=train.num_classes, index=args.index, memory_budget_gb=args.memory_budget,
                   device=args.device, progress=not args.no_progress, recall_sample=args.recall_sample)
    if args.shots is not None:
        return _few_shot(args, train, test, ks, temperatures, options, tic)
    space = LabelSpace.from_train(train.labels, train.num_classes)
    groups = groups_from_options(args, label_counts(space, train.labels))  # a bad --group-counts: before the search
    out = knn_evaluate(train.embeddings, train.labels, test.embeddings, test.labels, ks, temperatures,
                       keep_predictions=True, **options)
    for row in out.results:
        row["per_group"] = knn_per_group(out, space, test.labels, (row["k"], row["temperature"]), groups)
    print(f"k-NN: {len(train)} train x {len(test)} test rows, D={train.dim}, {out.num_classes} classes, "
          f"index {args.index}, search {out.search_seconds:.2f} s")
    if out.recall is not None:
        print(f"recall@{max(ks)} of {args.index} against exact search: {100 * out.recall:.2f}%")
    if out.plan is not None:
        print(f"bank streamed: {out.plan.describe()}; peak memory {_peak_gb():.2f} GB "
              f"(budget {args.memory_budget:g} GB)")
    print(knn_table(out.results))
    print(groups_description(out.results[0]["per_group"]))
    write_json({"results": out.results, "train": args.train, "test": args.test, "index": args.index,
                "recall": out.recall, "num_classes": out.num_classes, "train_rows": len(train),
                "test_rows": len(test), "dim": train.dim, "search_seconds": round(out.search_seconds, 3),
                "memory_budget_gb": args.memory_budget, "streamed": out.plan is not None,
                "plan": vars(out.plan) if out.plan is not None else None,
                "peak_memory_gb": round(_peak_gb(), 3),
                "seconds": round(time.perf_counter() - tic, 3)}, args.json)
    return EXIT_OK


def _few_shot(args: argparse.Namespace, train, test, ks, temperatures, options: dict, tic: float) -> int:
    """`knn --shots N`: every draw's bank is N train rows of every class; mean ± std over draws."""
    from ssl_bf.knn.vote import LabelSpace, knn_evaluate

    from .few_shot_probe import describe, draw_rows, draw_count, summarize, summary_line
    from .groups import groups_description, groups_from_options, knn_per_group, label_counts

    space = LabelSpace.from_train(train.labels, train.num_classes)
    groups = groups_from_options(args, label_counts(space, train.labels))
    bank = args.shots * space.num_classes
    if max(ks) > bank:
        raise ArgumentError(f"--k {max(ks)} is larger than the few-shot bank (--shots {args.shots} x "
                            f"{space.num_classes} classes = {bank} rows); use --k values up to {bank}")
    pairs = [(k, t) for k in ks for t in temperatures]
    per_pair: dict = {p: [] for p in pairs}
    for r in range(draw_count(args)):
        rows = draw_rows(train.labels, args.shots, None, args.seed, r)
        out = knn_evaluate(train.embeddings[rows], train.labels[rows], test.embeddings, test.labels, ks,
                           temperatures, keep_predictions=True, **options)
        for row in out.results:
            pair = (row["k"], row["temperature"])
            per_pair[pair].append({"draw": r, "train_rows": int(len(rows)), "top1": row["top1"], "top5": row["top5"],
                                   "per_group": knn_per_group(out, space, test.labels, pair, groups)})
    results = [{"k": k, "temperature": t, **summarize(per_pair[(k, t)], args.shots, None, args.seed)} for k, t in pairs]
    print(f"k-NN, {describe(results[0])}: banks of {args.shots} train rows per class x {len(test)} test rows, "
          f"{space.num_classes} classes")
    for row in results:
        print(f"k={row['k']} T={row['temperature']:g}: {summary_line(row)}")
    print(groups_description(results[0]["per_group"]))
    write_json({"results": results, "shots": args.shots, "num_draws": draw_count(args), "seed": args.seed,
                "train": args.train, "test": args.test, "index": args.index, "num_classes": space.num_classes,
                "test_rows": len(test), "dim": train.dim, "seconds": round(time.perf_counter() - tic, 3)}, args.json)
    return EXIT_OK
