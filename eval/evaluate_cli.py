"""`ssl-bf evaluate RUN`: embed + k-NN + linear probes for a finished run, recorded in RUN."""
from __future__ import annotations

import argparse
import os
from typing import Optional

from ssl_bf.cli_args import ArgumentError, Parser, nonneg_int, positive_float, positive_int, seed
from ssl_bf.file_kinds import FileKind

from .cli_common import (EXIT_OK, add_device, add_progress_and_json, add_skip_unreadable, check_device, knn_table,
                         leave_group, run_command, sidecar, table)
from .evaluate_few_shot import parse_shots, shots_value
from .import_choices import ImportChoices, add_import_options
from .options import Output, check_outputs


def _probes(text: str) -> tuple[str, ...]:
    """`--linear`: 'cached,logreg' | 'cached' | 'logreg' | 'none', checked at parse time."""
    from .evaluate import parse_probes

    try:
        return parse_probes(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def evaluate_parser() -> Parser:
    p = Parser(
        prog="ssl-bf evaluate",
        description="Evaluate a finished run: embed train and test with RUN/checkpoints/last.pt (data from "
        "RUN/config.yaml) into RUN/embeddings/, k-NN at (k=20, T=0.07) and (k=200, T=0.1), a cached "
        "linear probe and logistic regression, each with its many/medium/few accuracy; a long-tailed run also "
        "gets 100- and 10-shot probes. Sets the knn/linear/logreg/evaluated/few_shot keys of "
        "RUN/results.json (other keys kept) and "
        "appends the full record to RUN/evaluations.jsonl. All or nothing: a failed evaluation "
        "leaves RUN as it was.")
    p.add_argument("run", metavar="RUN", help="run folder (with --checkpoint of another project: the folder "
                   "the results go to, created if needed)")
    p.add_argument("--checkpoint", help="default RUN/checkpoints/last.pt; also a checkpoint of another project "
                   "(see `ssl-bf inspect`), with --data")
    p.add_argument("--data", help="dataset name, image folder or shard manifest (default: RUN/config.yaml's; "
                   "needed for a checkpoint of another project)")
    p.add_argument("--root", help="data root for a dataset name")
    add_import_options(p)
    p.add_argument("--features", choices=["backbone", "projection"], default="backbone")
    p.add_argument("--linear", type=_probes, default=("cached", "logreg"), metavar="PROBES",
                   help="linear probes on the embeddings: 'cached,logreg' (default), 'cached', 'logreg' "
                        "or 'none'")
    p.add_argument("--shots", type=shots_value, nargs="+", metavar="N",
                   help="few-shot probes (N images per class, --draws seeded draws, the first of logreg / cached "
                   "of --linear): default 100 10 when the run was long-tailed (RUN/data_indices.npy), else none; "
                   "'none': off")
    p.add_argument("--draws", type=positive_int, help="seeded draws of each few-shot probe (default 5)")
    p.add_argument("--index", choices=["flat", "flat-fp16", "ivf", "hnsw"], default="flat")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--memory-budget", type=positive_float, default=2.0, metavar="GB")
    p.add_argument("--reuse-embeddings", action="store_true",
                   help="keep RUN/embeddings files already made from this checkpoint")
    p.add_argument("--subset", type=positive_int,
                   help="embed only the first N images of each split (smoke tests; at least 200, the largest k)")
    p.add_argument("--workers", type=nonneg_int, default=4)
    add_skip_unreadable(p)
    p.add_argument("--seed", type=seed, default=0)
    add_device(p)
    add_progress_and_json(p, "also write the recorded entry as JSON")
    return p


def evaluate_main(argv: Optional[list[str]] = None) -> int:
    return run_command("ssl-bf evaluate", evaluate_parser, _evaluate_command, argv)


def check_inputs(args: argparse.Namespace) -> None:
    """What `ssl-bf evaluate` checks before any compute, the device aside (`ssl-bf submit` runs it
    too): the run and checkpoint exist, --json may be written and is none of the run's own files."""
    from .evaluate import check_run_inputs, run_paths

    check_run_inputs(args.run, args.checkpoint, args.data)
    try:
        args.shots = parse_shots(args.shots)
    except argparse.ArgumentTypeError as err:
        raise ArgumentError(str(err)) from None
    check_outputs([Output("--json", args.json, FileKind.JSON)],
                  inputs=[args.checkpoint, sidecar(args.checkpoint), *run_paths(args.run).values()], runs=[args.run])


def _evaluate_command(args: argparse.Namespace) -> int:
    from ssl_bf import distributed as dist_utils

    from .evaluate import evaluate_run
    from .few_shot_probe import describe, summary_line
    from .groups import group_lines, groups_description

    check_inputs(args)
    check_device(args.device)
    had_group = dist_utils.is_initialized()
    ok = False  # this rank finished its part
    try:
        entry = evaluate_run(args.run, args.checkpoint, features=args.features, device=args.device,
                             data=args.data, root=args.root, choices=ImportChoices.from_args(args),
                             batch_size=args.batch_size, dtype=args.dtype, index=args.index,
                             memory_budget_gb=args.memory_budget, linear=args.linear,
                             reuse_embeddings=args.reuse_embeddings, subset=args.subset,
                             num_workers=args.workers, seed=args.seed, progress=not args.no_progress,
                             skip_unreadable=args.skip_unreadable, json_out=args.json, shots=args.shots,
                             draws=args.draws)
        ok = True
    finally:
        leave_group(had_group, wait=ok)
    if entry is None:  # a rank other than 0 of a torchrun job: it only helped extract
        return EXIT_OK
    ev = entry["evaluated"]
    print(f"evaluated {os.path.join(args.run, ev['checkpoint'])} (epoch {ev['epoch']}, {ev['features']} features, "
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
        print(table(["probe", "top-1 %", "top-5 %", "chosen lr / l2"], rows))
    for lin in (entry.get("linear"), entry.get("logreg")):
        if lin and lin.get("per_group"):
            print(group_lines(lin["per_group"], f"{lin['protocol']} "))
    for n, summary in (entry.get("few_shot") or {}).items():
        print(f"{summary['protocol']} {describe(summary)}: {summary_line(summary)}")
    if entry["knn"] and entry["knn"][0].get("per_group"):
        print(f"{groups_description(entry['knn'][0]['per_group'])}; counts from {ev['groups_from']}")
    print(f"results: {args.run}/results.json")
    return EXIT_OK
