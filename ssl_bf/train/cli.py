"""`ssl-bf pretrain`: the core's training entry point.

It imports only the core, so launch/ (which runs it inside SLURM jobs) can import it without
reaching up into `ssl_bf.cli`. (`ssl-bf export` is `ssl_bf.checkpoints.cli`.)
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Optional

from ..cli_args import ArgumentError, Parser, fail, refuse

if TYPE_CHECKING:
    from ..config import Config

PROG = "ssl-bf pretrain"


def pretrain_parser() -> Parser:
    p = Parser(
        prog=PROG, description="Pretrain MoCo-v2/v3 (optionally with BatchFormer). "
        "Resumes automatically from RUN/checkpoints/last.pt.",
        epilog="Overrides are key=value, e.g. batchformer.enabled=true train.epochs=10 run.dir=runs/x")
    p.add_argument("--config", help="YAML preset (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--json", metavar="OUT", help="also write the run summary as JSON")
    return p


def pretrain_config_from_args(argv: list[str]):
    """Parse pretrain arguments (`--config FILE key=value ...`) into a validated Config
    (ArgumentError: a bad argument; ConfigError: a bad config)."""
    from ..run_config import load_config
    args = pretrain_parser().parse_intermixed_args(argv)
    return load_config(args.config, args.overrides)


def pretrain_main(argv: list[str]) -> int:
    """`ssl-bf pretrain`; every refusal is one line on stderr and exit 2 (3: the loss became NaN;
    130 / 143: stopped by Ctrl-C / SIGTERM after saving a checkpoint)."""
    try:
        args = pretrain_parser().parse_intermixed_args(argv)
    except ArgumentError as err:
        return fail(PROG, err)
    try:
        return _pretrain(argv, args)
    except KeyboardInterrupt:  # before training started, or a second Ctrl-C
        return _interrupted(args)


def _interrupted(args: argparse.Namespace) -> int:
    import os
    from ..checkpoints.checkpoint import last_path
    try:
        from ..run_config import load_config
        run_dir = load_config(args.config, args.overrides).run.dir
    except Exception:  # noqa: BLE001 - only for the message
        run_dir = None
    saved = last_path(run_dir) if run_dir else None
    where = (f"the last checkpoint is {saved}: run the same command to resume from it"
             if saved and os.path.isfile(saved) else "no checkpoint was written")
    return refuse(PROG, f"interrupted (Ctrl-C) before a checkpoint could be saved; {where}", 130)


def _pretrain(argv: list[str], args: argparse.Namespace) -> int:
    import os
    import shlex
    import signal

    from ..checkpoints.checkpoint import last_path
    from ..config import ConfigError, to_dict
    from ..run_config import load_config
    from ..data import DataError
    from ..atomic_write import write_json
    from ..outputs import OutputError
    from ..yaml_io import dump_yaml
    from ..process_env import ProcessEnvError
    from .trainer import NonFiniteLossError, RunFolderError, TrainingInterrupted, pretrain

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        return refuse(PROG, f"config error: {e}")
    if args.print_config:
        print(dump_yaml(to_dict(cfg)))
        return 0
    try:
        check_pretrain_outputs(cfg, args.json, args.config)
        summary = pretrain(cfg)
    except ConfigError as e:
        return refuse(PROG, f"config error: {e}")
    except DataError as e:
        return refuse(PROG, f"data error: {e}")
    except NonFiniteLossError as e:
        return refuse(PROG, str(e), 3)
    except (RunFolderError, OutputError, ProcessEnvError) as e:
        return refuse(PROG, str(e))
    except TrainingInterrupted as stop:
        name = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}.get(stop.signum, f"signal {stop.signum}")
        saved = (f"checkpoint saved to {stop.path}" if stop.path else
                 f"no checkpoint saved (the last one on disk is kept: {last_path(cfg.run.dir)})")
        return refuse(PROG, f"stopped by {name} at step {stop.step} ({stop.where}); {saved}. "
                           f"Resume with the same command: ssl-bf pretrain {shlex.join(argv)}", 128 + stop.signum)
    if summary.get("knn_top1") is None:  # e.g. the run had already finished: report its last figure
        from .metrics import MetricsError, read_metrics
        try:  # every record read is checked: knn_top1 is a percentage or null
            records = read_metrics(os.path.join(cfg.run.dir, "metrics.jsonl"))
        except MetricsError as e:
            return refuse(PROG, f"the run is saved in {cfg.run.dir}, but its summary cannot be read: {e}")
        done = [r["knn_top1"] for r in records if r.get("knn_top1") is not None and r.get("event") in (None, "knn")]
        summary["knn_top1"] = done[-1] if done else None
    if summary.get("knn_top1") is not None:
        split = (f"the last {cfg.data.val_holdout} train images held out" if cfg.data.val_holdout
                 else "test split")
        print(f"online k-NN top-1 (k={cfg.monitor.knn_k}, T={cfg.monitor.knn_temperature}, "
              f"backbone features, {split}): {summary['knn_top1']:.2f}%")
    print(f"run folder: {cfg.run.dir}")
    if args.json:
        try:
            write_json(summary, args.json, option="--json", inputs=[args.config], runs=[cfg.run.dir])
        except OutputError as e:
            return refuse(PROG, f"{e}; the run itself is saved in {cfg.run.dir}")
    return 0


def check_pretrain_outputs(cfg: Config, json_out: Optional[str], config: Optional[str]) -> None:
    """Before any work: the files pretrain writes in its run folder (config.yaml, metrics.jsonl,
    tensorboard/ when on; checkpoints/last.pt is read and checked by `RunFolder` first) and
    `--json`, which is never one of the run's files nor the config it read (OutputError naming
    the file)."""
    import os

    from ..file_kinds import FileKind
    from ..outputs import check_output, check_output_folder
    from ..run_layout import Owner

    run_dir = cfg.run.dir
    own = {os.path.join(run_dir, "config.yaml"): FileKind.TEXT, os.path.join(run_dir, "metrics.jsonl"): FileKind.JSON}
    for path, kind in own.items():
        check_output(path, kind, option="run.dir's file", owner=Owner.PRETRAIN, runs=[run_dir],
                     appended=path.endswith(".jsonl"))
    if cfg.run.tensorboard:
        check_output_folder(os.path.join(run_dir, "tensorboard"), option="run.dir's folder", owner=Owner.PRETRAIN)
    if json_out:
        check_output(json_out, FileKind.JSON, option="--json", inputs=[config], runs=[run_dir])

