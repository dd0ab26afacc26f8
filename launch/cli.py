"""`ssl-bf submit` (dispatched from ssl_bf.cli); `ssl-bf sweep-report` lives in ssl_bf.report.sweep_table."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
from typing import Optional

from ssl_bf.cli_args import ArgumentError, Parser, fail
from ssl_bf.atomic_write import strict_json, write_json
from ssl_bf.file_kinds import FileKind
from ssl_bf.outputs import OutputError, check_output

from .job import refused_line
from .options import CLUSTERS, PRESET_ENV, LaunchError, make_options, parse_extra
from .submission import COMMANDS, submit
from .sweep import load_sweep_file, parse_sweep

_EPILOG = """\
examples:
  ssl-bf submit pretrain --preset example-gpu --nodes 2 --gpus-per-node 8 -- \\
      --config configs/mocov3_r50_imagenet.yaml run.dir=runs/mocov3
  ssl-bf submit pretrain --sweep seed=0,1,2 --sweep batchformer.enabled=false,true \\
      --then evaluate -- --config configs/demo.yaml run.dir=runs/bf-sweep
  ssl-bf sweep-report runs/bf-sweep
Everything after `--` goes to the subcommand unchanged (its arguments, and --then-args, are
checked with the subcommand's own parser before anything is submitted). Options default to the
cluster preset (--preset, or $SSL_BF_CLUSTER_PRESET), then to built-in defaults.
An option the cluster does not use is refused, never silently dropped: --partition, --account,
--qos, --constraint, --exclusive, --slurm-extra, --mem-gb, --cpus-per-task and --job-name are
SLURM only; --cluster debug (in this process) also refuses --setup, --time, --signal-delay,
--max-requeues and more than one task. A SLURM preset's values that --cluster local/debug does
not use are named in the output.
exit codes: 0 submitted (or dry run); 1 --wait: a job failed; 2 a bad option or input file,
nothing submitted (one line on stderr names the option or file), or --wait: a job's command
refused its input (its one error line is printed). A dry run makes every check a submission
makes: the subcommand's own input checks too (files exist, train != test, outputs allowed)."""


PROG = "ssl-bf submit"


def _submit_parser() -> Parser:
    p = Parser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG,
        usage="ssl-bf submit {%s} [launcher options] -- [the subcommand's arguments]" % "|".join(COMMANDS),
        description="Run an ssl-bf subcommand as a SLURM job (submitit), or locally with the same job "
                    "code. Pretraining jobs checkpoint and requeue on preemption and at the time limit.")
    p.add_argument("command", choices=COMMANDS, help="the subcommand to run in the job")
    g = p.add_argument_group("where")
    g.add_argument("--cluster", choices=CLUSTERS, help="slurm (sbatch), local (a background process "
                   "here) or debug (in this process); default: the preset's, else slurm")
    g.add_argument("--preset", help=f"cluster preset: a name in launch/clusters/ or a YAML path "
                   f"(default: ${PRESET_ENV})")
    g.add_argument("--partition", help="SLURM only")
    g.add_argument("--account", help="SLURM only")
    g.add_argument("--qos", help="SLURM only")
    g.add_argument("--constraint", help="node features, as sbatch --constraint (SLURM only)")
    g = p.add_argument_group("resources")
    g.add_argument("--nodes", type=int)
    g.add_argument("--gpus-per-node", type=int, help="one task per GPU")
    g.add_argument("--tasks-per-node", type=int, help="default: --gpus-per-node, or 1 without GPUs")
    g.add_argument("--cpus-per-task", type=int, help="SLURM only")
    g.add_argument("--mem-gb", type=float, help="memory per node (SLURM only)")
    g.add_argument("--time", type=int, metavar="MIN", help="time limit in minutes")
    g.add_argument("--exclusive", action="store_true", default=None, help="whole nodes (SLURM only)")
    g.add_argument("--signal-delay", type=int, metavar="S",
                   help="seconds before the time limit at which the job checkpoints and requeues")
    g.add_argument("--max-requeues", type=int, help="time-outs after which the job is not requeued")
    g.add_argument("--max-parallel", type=int, metavar="N",
                   help="at most N sweep elements run at once: sbatch --array=0-M%%N (the --then "
                        "evaluate array too), or N background processes with --cluster local")
    g.add_argument("--slurm-extra", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. gres=gpu:a100:8 or mail-type=END (repeatable)")
    g.add_argument("--setup", action="append", default=[], metavar="SHELL",
                   help="a shell line to run before the job starts, e.g. 'module load cuda' (repeatable)")
    g = p.add_argument_group("what")
    g.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                   help="submit the cartesian product of these config values as a job array; each "
                        "element runs in RUN/KEY=V__... (repeatable; pretrain only)")
    g.add_argument("--sweep-file", metavar="YAML", help="a sweep definition: named 'variants' (sets of "
                   "overrides) times 'axes' (as --sweep), e.g. configs/ablation_fmnist_sweep.yaml; "
                   "--sweep adds axes")
    g.add_argument("--then", choices=["evaluate"],
                   help="chain `ssl-bf evaluate RUN` after each pretraining run that succeeds")
    g.add_argument("--then-args", metavar="ARGS", help="extra arguments for the chained evaluation, "
                   "as one shell-quoted string, e.g. --then-args='--linear none'")
    g.add_argument("--folder", help="submitit folder (scripts, pickles, logs); default RUN/submitit")
    g.add_argument("--job-name")
    g.add_argument("--dry-run", action="store_true", help="print the sbatch script; submit nothing")
    g.add_argument("--wait", action="store_true", help="wait for the job(s) and print the results")
    g.add_argument("--json", metavar="OUT", help="also write the submission (job ids, logs, run folders) "
                                                 "as JSON ('-' for stdout)")
    return p


def submit_main(argv: list[str]) -> int:
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        mine, rest = argv[:cut], argv[cut + 1:]
    else:
        mine, rest = argv, []
    try:
        args = _submit_parser().parse_args(mine)
    except ArgumentError as err:
        return fail(PROG, err)
    try:
        if args.json and args.json != "-":  # before anything is submitted: an input is never overwritten
            inputs = [p for p in (*rest, args.sweep_file, args.preset) if p and os.path.isfile(p)]
            check_output(args.json, FileKind.JSON, option="--json", inputs=inputs)
        then_args = _split_then_args(args.then_args)
        opts = make_options(
            args.preset, cluster=args.cluster, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
            tasks_per_node=args.tasks_per_node, cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb,
            partition=args.partition, account=args.account, qos=args.qos, constraint=args.constraint,
            time=args.time, exclusive=args.exclusive, signal_delay=args.signal_delay,
            max_requeues=args.max_requeues, max_parallel=args.max_parallel,
            slurm_extra=parse_extra(args.slurm_extra) or None,
            setup=args.setup or None, folder=args.folder, job_name=args.job_name)
        variants, axes, variants_first = load_sweep_file(args.sweep_file) if args.sweep_file else ({}, {}, True)
        given = parse_sweep(args.sweep)
        twice = sorted(set(axes) & set(given))
        if twice:
            raise LaunchError(f"--sweep {twice[0]} is also an axis of {args.sweep_file}")
        sub = submit(args.command, rest, opts, sweep_axes={**axes, **given} or None,
                     sweep_variants=variants or None, variants_first=variants_first,
                     then=args.then, dry_run=args.dry_run, then_args=then_args)
    except (LaunchError, OutputError) as e:
        return fail(PROG, e)
    print(sub.describe(), flush=True)
    record = {"cluster": sub.cluster, "command": sub.command, "folder": sub.folder, "run_dirs": sub.run_dirs,
              "dry_run": sub.dry_run, "job_ids": sub.job_ids, "eval_job_ids": [j.job_id for j in sub.eval_jobs],
              "logs": [str(j.paths.stdout) for j in sub.jobs], "partition": sub.partition}
    rc = 0
    if (args.wait or sub.cluster == "debug") and not sub.dry_run:  # debug jobs run when awaited
        rc = _wait(sub, record)
    if args.json:
        record = json.loads(json.dumps(record, default=str))  # job results may hold paths and other objects
        if args.json == "-":
            print(json.dumps(strict_json(record), indent=2, allow_nan=False))
        else:
            try:
                write_json(record, args.json, option="--json", runs=sub.run_dirs)
            except OutputError as e:  # e.g. it became a file of a run folder the job made
                return fail(PROG, f"{e} (the job(s) above were submitted)")
    return rc


def _split_then_args(text: Optional[str]) -> Optional[list[str]]:
    """--then-args as shell words (LaunchError when the quoting does not close)."""
    if not text:
        return None
    try:
        return shlex.split(text)
    except ValueError as err:
        raise LaunchError(f"--then-args {text!r} cannot be split into arguments ({err}): give them as one "
                          f"shell-quoted string, e.g. --then-args='--linear none --subset 500'") from None


def _wait(sub, record: dict) -> int:
    """Block until every job (and chained evaluation) ends; print each outcome. Returns 0 when all
    succeeded, 2 when every failure was a job's command refusing its input (its one error line is
    printed, not submitit's traceback), 1 for any other failure."""
    failed = refused = 0
    record["results"] = []
    refused_ids: set = set()
    for i, job in enumerate([*sub.jobs, *sub.eval_jobs]):
        parent = sub.jobs[i - len(sub.jobs)] if i >= len(sub.jobs) else None  # a chained evaluation's run
        if parent is not None and parent.job_id in refused_ids:
            with contextlib.suppress(Exception):  # SLURM cancels it too (kill-on-invalid-dep)
                job.cancel(check=False)
            record["results"].append({"job_id": job.job_id, "state": "CANCELLED",
                                      "error": f"not run: job {parent.job_id} refused its input"})
            print(f"job {job.job_id}: not run (job {parent.job_id} refused its input)", file=sys.stderr)
            continue
        try:
            results = job.results()
        except Exception as e:  # noqa: BLE001 - report any failure of the job, keep waiting for the rest
            line = refused_line(str(e))
            record["results"].append({"job_id": job.job_id, "state": "FAILED", "error": line or str(e)[-2000:]})
            if line:
                refused += 1
                refused_ids.add(job.job_id)
                print(f"{PROG}: job {job.job_id} refused its input: {line}", file=sys.stderr)
            else:
                failed += 1
                print(f"job {job.job_id}: FAILED\n{str(e)[-2000:]}", file=sys.stderr)
            continue
        lines = [r["refused"] for r in _flat(results) if isinstance(r, dict) and r.get("refused")]
        record["results"].append({"job_id": job.job_id, "state": "FAILED" if lines else "COMPLETED",
                                  "results": results})
        if lines:  # --cluster debug hands a refusal back as the result
            refused += 1
            refused_ids.add(job.job_id)
            print(f"{PROG}: job {job.job_id} refused its input: {lines[0]}", file=sys.stderr)
        else:
            print(f"job {job.job_id}: done")
    return 1 if failed else 2 if refused else 0


def _flat(results: list) -> list:
    """A job's results, one per task (a throttled local sweep's lane holds a list per task)."""
    return [r for item in results for r in (item if isinstance(item, list) else [item])]


def main(argv: Optional[list[str]] = None) -> int:  # python -m ssl_bf.launch.cli submit ...
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "submit":
        argv = argv[1:]
    return submit_main(argv)


if __name__ == "__main__":
    sys.exit(main())
