"""The `ssl-bf` command: pretrain, export, inspect, shard, embed, knn, linear, evaluate, submit, sweep-report, report."""
from __future__ import annotations

import importlib
import sys
from typing import Optional

from .cli_args import Parser, fail

# subcommand -> (module, function, one-line help); each function takes argv and returns an exit code
_DELEGATED = {
    "pretrain": ("ssl_bf.train.cli", "pretrain_main", "pretrain MoCo-v2/v3 with or without BatchFormer"),
    "export": ("ssl_bf.checkpoints.cli", "export_main", "export a run's backbone (torchvision, timm, detectron2)"),
    "inspect": ("ssl_bf.eval.inspect_cli", "inspect_main", "format, architecture and loaded tensors of any checkpoint"),
    "shard": ("ssl_bf.data.shards.cli", "shard_main", "image folder -> WebDataset tar shards + manifest.json"),
    "embed": ("ssl_bf.eval.embed_cli", "embed_main", "checkpoint -> embeddings file (safetensors)"),
    "knn": ("ssl_bf.eval.knn_cli", "knn_main", "FAISS weighted k-NN accuracy on embeddings files"),
    "linear": ("ssl_bf.eval.linear_cli", "linear_main", "linear probe (mocov2, mocov3, cached, logreg)"),
    "evaluate": ("ssl_bf.eval.evaluate_cli", "evaluate_main", "embed + knn + linear for a finished run"),
    "submit": ("ssl_bf.launch.cli", "submit_main", "submit a subcommand to SLURM (submitit)"),
    "sweep-report": ("ssl_bf.report.sweep_table", "sweep_report_main", "mean +- std table over a sweep"),
    "report": ("ssl_bf.report.run_report", "report_main", "plots + report.md for a run or a sweep folder"),
}


def _main_parser() -> Parser:
    p = Parser(prog="ssl-bf", description=__doc__)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, _, text) in _DELEGATED.items():
        sub.add_parser(name, help=text, add_help=False)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        _main_parser().print_help()
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command in _DELEGATED:
        module, func, _ = _DELEGATED[command]
        return int(getattr(importlib.import_module(module), func)(rest) or 0)
    return fail("ssl-bf", f"unknown command '{command}' (see ssl-bf --help)")


if __name__ == "__main__":
    sys.exit(main())
