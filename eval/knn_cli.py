"""`ssl-bf knn`: weighted k-NN accuracy of test embeddings against train embeddings (FAISS)."""
from __future__ import annotations

import argparse
import time
from typing import Optional

from ssl_bf.cli_args import Parser, nonneg_int, positive_float, positive_int

from .cli_common import (EXIT_OK, add_device, add_progress_and_json, check_device, check_train_test, knn_table,
                         run_command, unique_values, write_json)
from .options import check_outputs


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
    add_progress_and_json(p, 'write {"results": [{"k", "temperature", "top1", "top5"}], ...}')
    return p


def knn_main(argv: Optional[list[str]] = None) -> int:
    return run_command("ssl-bf knn", knn_parser, _knn_command, argv)


def _peak_gb() -> float:
    """This command's peak resident memory (GB)."""
    from ssl_bf.knn.stream import peak_resident_gb

    return peak_resident_gb()


def _knn_command(args: argparse.Namespace) -> int:
    from .formats import check_pair, load_embeddings, open_embeddings
    from ssl_bf.knn.vote import knn_evaluate, use_gpu

    prog = "ssl-bf knn"
    ks = unique_values(prog, "--k", args.k)
    temperatures = unique_values(prog, "--temperature", args.temperature)
    check_outputs([("--json", args.json)], inputs=[args.train, args.test, args.train_labels, args.test_labels])
    check_train_test(args, "every query would find itself as its nearest neighbour (an inflated accuracy)")
    check_device(args.device)
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
    write_json({"results": out.results, "train": args.train, "test": args.test, "index": args.index,
                "recall": out.recall, "num_classes": out.num_classes, "train_rows": len(train),
                "test_rows": len(test), "dim": train.dim, "search_seconds": round(out.search_seconds, 3),
                "memory_budget_gb": args.memory_budget, "streamed": out.plan is not None,
                "plan": vars(out.plan) if out.plan is not None else None,
                "peak_memory_gb": round(_peak_gb(), 3),
                "seconds": round(time.perf_counter() - tic, 3)}, args.json)
    return EXIT_OK
