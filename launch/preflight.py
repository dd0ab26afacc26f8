"""What a job's subcommand checks before it computes, run by `ssl-bf submit` before anything is
submitted (with --dry-run too), so that a job never starts only to refuse its input.

Each check is the subcommand's own (`ssl-bf pretrain`: its config, `check_pretrain_outputs` and the
run folder's read-only checks, `RunFolder`; the evaluation commands: their parser and
`check_inputs`), never a second copy. What the job's machine may see differently from the submit
host is left to the job: the device (CUDA there, none here) and the data it loads.
"""
from __future__ import annotations

import argparse
import contextlib
import io

from .options import LaunchError


def _refusal(command: str, err: BaseException) -> LaunchError:
    from ssl_bf.cli_args import one_line

    return LaunchError(f"`ssl-bf {command}` would refuse this job: {one_line(err, 900)}")


def pretrain_config(args: list[str], world: int = 1):
    """`ssl-bf pretrain ARGS` checked as the job will check it on `world` processes, before
    training: the config (read, resolved, checked), --json, the run folder (a file, unwritable, or a
    checkpoint this config may not resume) and a given augment.image_size against the recipe's
    minimum. Returns the Config; LaunchError otherwise."""
    from ssl_bf.cli_args import ArgumentError
    from ssl_bf.config import ConfigError
    from ssl_bf.data.augment import check_image_size
    from ssl_bf.outputs import OutputError
    from ssl_bf.run_config import load_config
    from ssl_bf.train.cli import check_pretrain_outputs, pretrain_parser
    from ssl_bf.train.run_folder import RunFolder, RunFolderError

    try:
        parsed = _parse("pretrain", pretrain_parser(), args, intermixed=True)
        cfg = load_config(parsed.config, parsed.overrides)
        check_pretrain_outputs(cfg, parsed.json, parsed.config)
        RunFolder(cfg, world)
        if cfg.augment.image_size:  # (0: the data's own size, known once the job loads it)
            check_image_size(cfg.augment.recipe, cfg.augment.image_size, cfg.augment.blur, native=False)
    except ConfigError as e:
        raise LaunchError(f"pretrain config error: {e}") from None
    except ArgumentError as e:
        raise LaunchError(f"bad pretrain arguments: {e}") from None
    except (OutputError, RunFolderError) as e:
        raise _refusal("pretrain", e) from None
    return cfg


def _parser(command: str):
    """The argument parser and the input checks of `ssl-bf COMMAND` (an evaluation command)."""
    from ssl_bf.eval import embed_cli, evaluate_cli, knn_cli, linear_cli

    module = {"embed": embed_cli, "knn": knn_cli, "linear": linear_cli, "evaluate": evaluate_cli}[command]
    parser = {"embed": embed_cli.embed_parser, "knn": knn_cli.knn_parser, "linear": linear_cli.linear_parser,
              "evaluate": evaluate_cli.evaluate_parser}[command]
    return parser(), module.check_inputs


def _parse(command: str, parser, args: list[str], what: str = "", intermixed: bool = False) -> argparse.Namespace:
    from ssl_bf.cli_args import ArgumentError

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # --help prints the help, then exits 0
            return (parser.parse_intermixed_args if intermixed else parser.parse_args)(list(args))
    except SystemExit:  # only --help (or -h) exits the parser now
        raise LaunchError(f"{what or f'the {command} arguments'} ask for help only: nothing to submit") from None
    except ArgumentError as exc:
        if intermixed:
            raise
        where = f"{what}: " if what else ""
        raise LaunchError(f"{where}`ssl-bf {command}` would refuse these arguments: {exc}") from None


def check_subcommand_args(command: str, args: list[str], what: str = "") -> None:
    """Parse the arguments a job will give `ssl-bf COMMAND` (LaunchError with the parser's reason;
    `what` names the option they came from). For arguments whose inputs do not exist yet (the
    evaluation `--then evaluate` chains after a run that has not trained)."""
    _parse(command, _parser(command)[0], args, what)


def check_job_inputs(command: str, args: list[str]) -> None:
    """Everything `ssl-bf COMMAND ARGS` (an evaluation command) checks before it computes, the
    device aside: its arguments, that its inputs exist, that its outputs may be written, and
    train != test (LaunchError with the command's own reason)."""
    from ssl_bf.config import ConfigError
    from ssl_bf.data import DataError

    parser, check_inputs = _parser(command)
    parsed = _parse(command, parser, args)
    try:
        check_inputs(parsed)
    except (ValueError, OSError, ConfigError, DataError, KeyError, RuntimeError) as err:
        raise _refusal(command, err) from None
