"""The `ssl-bf` command: pretrain, export, embed, knn, linear, evaluate, submit, sweep-report, report."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional

# subcommand -> (module, function, one-line help); each function takes argv and returns an exit code
_DELEGATED = {
    "embed": ("ssl_bf.eval.cli", "embed_main", "checkpoint -> embeddings file (safetensors)"),
    "knn": ("ssl_bf.eval.cli", "knn_main", "FAISS weighted k-NN accuracy on embeddings files"),
    "linear": ("ssl_bf.eval.cli", "linear_main", "linear probe (mocov2, mocov3, cached, logreg)"),
    "evaluate": ("ssl_bf.eval.cli", "evaluate_main", "embed + knn + linear for a finished run"),
    "submit": ("ssl_bf.launch.cli", "submit_main", "submit a subcommand to SLURM (submitit)"),
    "sweep-report": ("ssl_bf.report.sweep_table", "sweep_report_main", "mean +- std table over a sweep"),
    "report": ("ssl_bf.report.run_report", "report_main", "plots + report.md for a run or a sweep folder"),
}


def _pretrain_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ssl-bf pretrain", description="Pretrain MoCo-v2/v3 (optionally with BatchFormer). "
        "Resumes automatically from RUN/checkpoints/last.pt.",
        epilog="Overrides are key=value, e.g. batchformer.enabled=true train.epochs=10 run.dir=runs/x")
    p.add_argument("--config", help="YAML preset (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--json", metavar="OUT", help="also write the run summary as JSON")
    return p


def pretrain_config_from_args(argv: list[str]):
    """Parse pretrain arguments (`--config FILE key=value ...`) into a validated Config."""
    from .config import load_config
    args = _pretrain_parser().parse_intermixed_args(argv)
    return load_config(args.config, args.overrides)


def pretrain_main(argv: list[str]) -> int:
    import yaml
    from .checkpoint import write_json_atomic
    from .config import ConfigError, load_config, to_dict
    from .data import DataError
    from .train import NonFiniteLossError, RunFolderError, pretrain

    args = _pretrain_parser().parse_intermixed_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"ssl-bf pretrain: config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    try:
        summary = pretrain(cfg)
    except DataError as e:
        print(f"ssl-bf pretrain: data error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"ssl-bf pretrain: {e}", file=sys.stderr)
        return 3
    except RunFolderError as e:
        print(f"ssl-bf pretrain: {e}", file=sys.stderr)
        return 2
    if summary.get("knn_top1") is None:  # e.g. the run had already finished: report its last figure
        import os
        from .metrics import read_metrics
        done = [r["knn_top1"] for r in read_metrics(os.path.join(cfg.run.dir, "metrics.jsonl"))
                if r.get("knn_top1") is not None and r.get("event") in (None, "knn")]
        summary["knn_top1"] = done[-1] if done else None
    if summary.get("knn_top1") is not None:
        print(f"online k-NN top-1 (k={cfg.monitor.knn_k}, T={cfg.monitor.knn_temperature}, "
              f"backbone features): {summary['knn_top1']:.2f}%")
    print(f"run folder: {cfg.run.dir}")
    if args.json:
        write_json_atomic(summary, args.json)
    return 0


def export_main(argv: list[str]) -> int:
    from .checkpoint import export_backbone
    p = argparse.ArgumentParser(prog="ssl-bf export", description="Write the query backbone as a plain "
                                "state dict (no BatchFormer, no heads) plus OUT.json with its config.")
    p.add_argument("checkpoint", help="RUN/checkpoints/last.pt")
    p.add_argument("out", help="output .pt file")
    args = p.parse_args(argv)
    meta = export_backbone(args.checkpoint, args.out)
    print(f"wrote {args.out} (backbone {meta['config']['backbone']['name']}, epoch {meta['epoch']})")
    return 0


def _main_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ssl-bf", description=__doc__)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("pretrain", help="pretrain MoCo-v2/v3 with or without BatchFormer", add_help=False)
    sub.add_parser("export", help="export the backbone of a checkpoint", add_help=False)
    for name, (_, _, text) in _DELEGATED.items():
        sub.add_parser(name, help=text, add_help=False)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        _main_parser().print_help()
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "pretrain":
        return pretrain_main(rest)
    if command == "export":
        return export_main(rest)
    if command in _DELEGATED:
        module, func, _ = _DELEGATED[command]
        return int(getattr(importlib.import_module(module), func)(rest) or 0)
    _main_parser().error(f"unknown command '{command}'")
    return 2


if __name__ == "__main__":
    sys.exit(main())
