"""Submit ssl-bf subcommands with submitit: SLURM jobs, job arrays for sweeps, afterok chains.

Builds the per-job command lines (run folders, sweep overrides), checks the request against the
cluster (`cluster_checks`), submits `job.SubcommandJob`s (or `SubcommandChain` lanes for a
throttled local sweep) and describes the submission for the CLI (`Submission.describe`).
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from typing import Optional

from .cluster_checks import check_request
from .job import SubcommandChain, SubcommandJob
from .options import LaunchError, LaunchOptions, check_folder, sbatch_parameters
from .preflight import check_job_inputs, check_subcommand_args, pretrain_config
from .sweep import Sweep, expand, write_sweep

COMMANDS = ("pretrain", "embed", "knn", "linear", "evaluate")
# Commands that run as one process per task across nodes and GPUs (torch.distributed, env://);
# knn searches one index in one process.
DISTRIBUTED_COMMANDS = ("pretrain", "embed", "linear", "evaluate")
SUBMITIT_DIR = "submitit"


def lanes(jobs: list, n: int) -> list[list]:
    """Deal jobs round-robin into at most n lanes (job i -> lane i % n), keeping the order in a lane."""
    n = max(1, min(n, len(jobs)))
    return [jobs[k::n] for k in range(n)]


# --- what to run: run folders, arguments ----------------------------------------------------------
_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def with_overrides(args: list[str], overrides: list[str]) -> list[str]:
    """Set key=value overrides: replace a given key in place, insert new ones next to the
    existing overrides (argparse wants the positionals contiguous)."""
    out = list(args)
    new = []
    for ov in overrides:
        key = ov.split("=", 1)[0] + "="
        hits = [i for i, a in enumerate(out) if a.startswith(key) and _OVERRIDE.match(a)]
        if hits:
            for i in hits:
                out[i] = ov
        else:
            new.append(ov)
    last = max((i for i, a in enumerate(out) if _OVERRIDE.match(a)), default=None)
    if last is None:
        return out + new
    return out[:last + 1] + new + out[last + 1:]


def guess_run_dir(command: str, args: list[str]) -> Optional[str]:
    """The run folder an evaluation command works on: the first positional path that is a run
    folder or lies inside one (RUN/checkpoints/x.pt, RUN/embeddings/...)."""
    skip_next = False
    for a in args:
        if skip_next:
            skip_next = False
            continue
        if a.startswith("-"):
            skip_next = "=" not in a and a not in ("--cached",)
            continue
        p = os.path.abspath(a)
        if os.path.isdir(p) and (os.path.isfile(os.path.join(p, "config.yaml"))
                                 or os.path.isdir(os.path.join(p, "checkpoints"))):
            return p
        parent = os.path.dirname(p)
        if os.path.basename(parent) in ("checkpoints", "embeddings") and os.path.exists(p):
            return os.path.dirname(parent)
        if command == "evaluate":
            return p
    return None

# --- submission ----------------------------------------------------------------------------------
@dataclass
class Submission:
    command: list
    cluster: str
    folder: str
    run_dirs: list
    jobs: list = field(default_factory=list)  # submitit jobs (one per run folder)
    eval_jobs: list = field(default_factory=list)
    script: str = ""  # the sbatch script (dry run, or the first job's)
    eval_script: str = ""
    sweep: Optional[Sweep] = None
    dry_run: bool = False
    partition: Optional[str] = None
    shape: str = ""
    note: str = ""
    lane_of: Optional[list] = None  # run folder i -> index into jobs (a throttled local sweep)

    @property
    def job_ids(self) -> list[str]:
        return [j.job_id for j in self.jobs]

    def describe(self) -> str:
        """What the CLI prints: job ids, log paths and run folders."""
        lines = []
        what = shlex.join(self.command[:1])
        where = f"{self.cluster}" + (f", partition {self.partition}" if self.partition else "")
        if self.dry_run:
            lines.append(f"dry run: nothing submitted ({what} on {where}, {self.shape})")
            if self.note:
                lines.append(self.note)
            lines.append("--- sbatch script ---")
            lines.append(self.script.rstrip())
            if self.eval_script:
                lines.append("--- chained evaluation (sbatch script) ---")
                lines.append(self.eval_script.rstrip())
            for d in self.run_dirs:
                lines.append(f"run folder: {d}")
            return "\n".join(lines)
        if len(self.jobs) > 1 and self.cluster == "slurm":
            array_id = self.jobs[0].job_id.split("_")[0]
            lines.append(f"submitted {what} job array {array_id} ({len(self.jobs)} elements) on {where}, "
                         f"{self.shape} each")
        elif len(self.jobs) > 1:
            lines.append(f"submitted {len(self.jobs)} {what} jobs on {where}, {self.shape} each")
        else:
            lines.append(f"submitted {what} job {self.jobs[0].job_id} on {where}, {self.shape}")
        if self.note:
            lines.append(self.note)
        lane_of = self.lane_of or list(range(len(self.jobs)))
        for i, run_dir in enumerate(self.run_dirs[:len(lane_of)]):
            job = self.jobs[lane_of[i]]
            prefix = f"  [{i}] " if len(self.run_dirs) > 1 else "  "
            lines.append(f"{prefix}job {job.job_id}  run folder: {run_dir}")
            lines.append(f"{' ' * len(prefix)}  log: {job.paths.stdout}")
            lines.append(f"{' ' * len(prefix)}  err: {job.paths.stderr}")
            if i < len(self.eval_jobs):
                ej = self.eval_jobs[i]
                lines.append(f"{' ' * len(prefix)}  then evaluate: job {ej.job_id} "
                             f"(starts after {job.job_id} succeeds)  log: {ej.paths.stdout}")
        if self.sweep is not None:
            lines.append(f"sweep file: {os.path.join(self.sweep.base_dir, 'sweep.json')}  "
                         f"(report: ssl-bf sweep-report {self.sweep.base_dir})")
        lines.append(f"submitit folder: {self.folder}")
        return "\n".join(lines)


def _executor(cluster: str, folder: str, opts: LaunchOptions, params: dict):
    """A submitit executor for `cluster` with sbatch-style `params`."""
    import submitit

    if cluster == "slurm":
        if shutil.which("sbatch") is None:
            raise LaunchError("--cluster slurm: sbatch is not on PATH (use --cluster local to run here, "
                              "or --dry-run to see the script)")
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=opts.max_requeues)
        ex.update_parameters(**params)
        return ex
    if cluster == "local":
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=opts.max_requeues)
        local = {"timeout_min": params["time"], "tasks_per_node": params["ntasks_per_node"],
                 "nodes": 1, "signal_delay_s": params["signal_delay_s"]}
        if params.get("gpus_per_node"):
            local["gpus_per_node"] = params["gpus_per_node"]
        if params.get("setup"):
            local["setup"] = params["setup"]
        ex.update_parameters(**local)
        return ex
    return submitit.DebugExecutor(folder=folder)


def sbatch_script(folder: str, params: dict, array: int = 0) -> str:
    """The sbatch script submitit would write (no cluster needed)."""
    import submitit
    from submitit.slurm.slurm import _make_sbatch_string

    python = shlex.quote(sys.executable)
    command = f"{python} -u -m submitit.core._submit {shlex.quote(folder)}"
    kwargs = dict(params)
    if array > 1:
        kwargs["map_count"] = array
    try:
        return _make_sbatch_string(command=command, folder=folder, **kwargs)
    except (TypeError, ValueError) as e:
        raise LaunchError(f"bad sbatch parameters ({e}); submitit {submitit.__version__}") from None


def _eval_options(opts: LaunchOptions) -> LaunchOptions:
    """The chained evaluation: the pretraining job's layout (nodes, tasks, GPUs), its own job name."""
    return dataclasses.replace(opts, job_name=None)


def _submit_all(executor, jobs: list[SubcommandJob]):
    import submitit

    try:
        if len(jobs) == 1:
            return [executor.submit(jobs[0])]
        with executor.batch():
            handles = [executor.submit(j) for j in jobs]
        return handles
    except submitit.core.utils.FailedJobError as e:
        msg = str(e).strip().splitlines()
        detail = "; ".join(m.strip() for m in msg if "error" in m.lower()) or " ".join(msg)[-500:]
        raise LaunchError(f"sbatch refused the job: {detail}") from None


def submit(command: str, args: list[str], opts: LaunchOptions, sweep_axes: Optional[dict] = None,
           then: Optional[str] = None, dry_run: bool = False,
           then_args: Optional[list[str]] = None, sweep_variants: Optional[dict] = None,
           variants_first: bool = True) -> Submission:
    """Submit `ssl-bf COMMAND ARGS` (a sweep submits a job array; `then="evaluate"` chains an
    evaluation per run that starts only after the run succeeds)."""
    if command not in COMMANDS:
        raise LaunchError(f"cannot submit '{command}': choose one of {list(COMMANDS)}")
    if then not in (None, "evaluate"):
        raise LaunchError(f"--then supports 'evaluate' only, got '{then}'")
    if then_args and not then:
        raise LaunchError("--then-args needs --then evaluate")
    if then and command != "pretrain":
        raise LaunchError("--then evaluate chains after a pretrain job; submit evaluate directly instead")
    if (sweep_axes or sweep_variants) and command != "pretrain":
        raise LaunchError("--sweep varies pretrain config keys; it needs `submit pretrain`")
    if command not in DISTRIBUTED_COMMANDS and opts.world_size > 1:
        raise LaunchError(f"{command} runs as a single task: use --nodes 1 and at most one task "
                          f"(got {opts.nodes} node(s) x {opts.ntasks_per_node} task(s))")
    if "--print-config" in args or "-h" in args or "--help" in args:
        raise LaunchError("the subcommand's arguments ask for help/printing only: nothing to submit")
    if command != "pretrain":
        check_job_inputs(command, args)
    if then_args:
        check_subcommand_args("evaluate", ["RUN", *then_args], what="--then-args")

    # Run folders (absolute: the job's working directory may differ) and per-job arguments.
    sweep: Optional[Sweep] = None
    world = opts.nodes * (opts.ntasks_per_node if command in DISTRIBUTED_COMMANDS else 1)
    if command == "pretrain":
        cfg = pretrain_config(args, world)
        base = os.path.abspath(cfg.run.dir)
        if sweep_axes or sweep_variants:
            sweep = expand(sweep_axes or {}, base, sweep_variants, variants_first)
            sweep.command = ["pretrain", *args]
            argvs = []
            for el in sweep.elements:
                argv = with_overrides(args, [f"{k}={v}" for k, v in el.overrides.items()] + [f"run.dir={el.run_dir}"])
                pretrain_config(argv, world)  # every element passes pretrain's checks before anything is submitted
                argvs.append(["pretrain", *argv])
            run_dirs = [el.run_dir for el in sweep.elements]
        else:
            argvs = [["pretrain", *with_overrides(args, [f"run.dir={base}"])]]
            run_dirs = [base]
        folder = opts.folder or os.path.join(base, SUBMITIT_DIR)
    else:
        run_dir = guess_run_dir(command, args)
        argvs = [[command, *args]]
        run_dirs = [run_dir] if run_dir else []
        folder = opts.folder or (os.path.join(run_dir, SUBMITIT_DIR, command) if run_dir
                                 else os.path.join(os.getcwd(), "ssl-bf-jobs", command))
    folder = os.path.abspath(folder)
    check_folder(folder, "--folder" if opts.folder else "the submitit folder (default RUN/submitit; see --folder)")

    n = len(argvs)
    tasks = opts.ntasks_per_node if command in DISTRIBUTED_COMMANDS else 1
    params = sbatch_parameters(opts, f"ssl-bf-{command}", tasks_per_node=tasks)
    chained_in_job = then is not None and opts.cluster != "slurm"
    shape = f"{opts.nodes} node(s) x {tasks} task(s)" + (f" x {opts.gpus_per_node} GPU(s)/node" if opts.gpus_per_node else "")
    eval_params = None
    if then and opts.cluster == "slurm":
        eval_params = sbatch_parameters(_eval_options(opts), "ssl-bf-evaluate",
                                        dependency=("aftercorr:<ARRAY_ID>" if n > 1 else "afterok:<JOB_ID>"))

    notes = ["then: `ssl-bf evaluate RUN` runs at the end of the same job"] if chained_in_job else []
    if opts.ignored:
        notes.append(f"--cluster {opts.cluster} does not use the preset's {', '.join(opts.ignored)}")
    sub = Submission(command=[command, *args], cluster=opts.cluster, folder=folder, run_dirs=run_dirs,
                     sweep=sweep, dry_run=dry_run, shape=shape, note="; ".join(notes))
    if opts.cluster == "slurm":
        sub.partition = check_request(opts, tasks, opts.nodes) or opts.partition
    if dry_run:
        if opts.cluster == "slurm":
            sub.script = sbatch_script(folder, params, array=n)
            if eval_params:
                sub.eval_script = sbatch_script(folder, eval_params, array=n)
        else:
            sub.script = "\n".join(f"# {opts.cluster}: ssl-bf {shlex.join(a)}" for a in argvs)
        return sub

    then_argvs = [["evaluate", d, *(then_args or [])] for d in run_dirs] if then else [None] * n
    jobs = [SubcommandJob(a, then=t if chained_in_job else None) for a, t in zip(argvs, then_argvs)]
    lane_of = list(range(n))  # the submitted job that runs element i
    if opts.cluster == "local" and opts.max_parallel and n > opts.max_parallel:
        dealt = lanes(list(range(n)), opts.max_parallel)
        lane_of = [i % len(dealt) for i in range(n)]  # lanes() deals element i to lane i % lanes
        jobs = [SubcommandChain([jobs[i] for i in lane]) for lane in dealt]
        sub.lane_of = lane_of
        sub.note = (sub.note + "; " if sub.note else "") + \
            f"{n} elements in {len(jobs)} background process(es), run one after another in each"
    created = folder  # the top-most folder this call creates: removed again if sbatch refuses
    while not os.path.exists(os.path.dirname(created)) and os.path.dirname(created) != created:
        created = os.path.dirname(created)
    created = None if os.path.exists(created) else created
    os.makedirs(folder, exist_ok=True)
    try:
        executor = _executor(opts.cluster, folder, opts, params)
        sub.jobs = _submit_all(executor, jobs)
    except LaunchError:
        if created:
            shutil.rmtree(created, ignore_errors=True)
        raise
    if opts.cluster == "slurm":
        sub.script = sub.jobs[0].paths.submission_file.read_text() if sub.jobs[0].paths.submission_file.exists() else ""

    if then and opts.cluster == "slurm":
        if n > 1:  # per element: evaluation i starts after pretraining element i succeeds
            dependency = f"aftercorr:{sub.jobs[0].job_id.split('_')[0]}"
        else:
            dependency = f"afterok:{sub.jobs[0].job_id}"
        eval_params = sbatch_parameters(_eval_options(opts), "ssl-bf-evaluate", dependency=dependency)
        eval_ex = _executor("slurm", folder, opts, eval_params)
        sub.eval_jobs = _submit_all(eval_ex, [SubcommandJob(t) for t in then_argvs])

    if sweep is not None:
        for el, lane in zip(sweep.elements, lane_of):
            el.job_id = sub.jobs[lane].job_id
        for el, job in zip(sweep.elements, sub.eval_jobs):
            el.eval_job_id = job.job_id
        write_sweep(sweep)
    return sub
