"""`ssl-bf pretrain` and `ssl-bf export`: the core's own command-line entry points.

They import only the core, so launch/ (which runs them inside SLURM jobs) can import them without
reaching up into `ssl_bf.cli`.
"""
from __future__ import annotations

import argparse
import sys


def pretrain_parser() -> argparse.ArgumentParser:
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
    args = pretrain_parser().parse_intermixed_args(argv)
    return load_config(args.config, args.overrides)


def pretrain_main(argv: list[str]) -> int:
    import yaml
    from .io import write_json_atomic
    from .config import ConfigError, load_config, to_dict
    from .data import DataError
    from .train import NonFiniteLossError, RunFolderError, pretrain

    args = pretrain_parser().parse_intermixed_args(argv)
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
