"""Launcher options: dataclass, cluster presets (launch/clusters/*.yaml) and sbatch parameters."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from ssl_bf.yaml_io import did_you_mean, load_yaml_mapping

CLUSTERS = ("slurm", "local", "debug")
PRESET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clusters")
PRESET_ENV = "SSL_BF_CLUSTER_PRESET"  # default preset name or path


class LaunchError(ValueError):
    """A request that cannot be submitted; the message says why and what to change."""


@dataclass
class LaunchOptions:
    cluster: str = "slurm"
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: Optional[int] = None  # None: one task per GPU (one task without GPUs)
    cpus_per_task: Optional[int] = None
    mem_gb: Optional[float] = None  # per node
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    time: int = 60  # minutes
    exclusive: bool = False
    signal_delay: int = 120  # seconds between the USR2 warning and the kill at the time limit
    max_requeues: int = 3  # time-outs after which the job is not requeued again
    max_parallel: Optional[int] = None  # sweep elements running at once (sbatch --array=...%N)
    slurm_extra: dict = field(default_factory=dict)  # any other sbatch option: {key: value|True}
    setup: list = field(default_factory=list)  # shell lines run before srun (module load, ...)
    folder: Optional[str] = None  # submitit folder; default: RUN/submitit
    job_name: Optional[str] = None

    @property
    def ntasks_per_node(self) -> int:
        if self.tasks_per_node:
            return self.tasks_per_node
        return max(1, self.gpus_per_node)

    @property
    def world_size(self) -> int:
        return self.nodes * self.ntasks_per_node

    def check(self) -> None:
        """Checks that need no cluster."""
        if self.cluster not in CLUSTERS:
            raise LaunchError(f"--cluster must be one of {list(CLUSTERS)}, got '{self.cluster}'")
        for name in ("nodes", "time"):
            if getattr(self, name) < 1:
                raise LaunchError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("gpus_per_node", "signal_delay", "max_requeues"):
            if getattr(self, name) < 0:
                raise LaunchError(f"--{name.replace('_', '-')} must not be negative")
        for name in ("tasks_per_node", "cpus_per_task"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise LaunchError(f"--{name.replace('_', '-')} must be at least 1, got {v}")
        if self.mem_gb is not None and self.mem_gb <= 0:
            raise LaunchError(f"--mem-gb must be positive, got {self.mem_gb}")
        if self.gpus_per_node and self.tasks_per_node and self.tasks_per_node != self.gpus_per_node:
            raise LaunchError(f"one task per GPU: --tasks-per-node {self.tasks_per_node} does not match "
                              f"--gpus-per-node {self.gpus_per_node}")
        if self.signal_delay >= 60 * self.time:
            raise LaunchError(f"--signal-delay ({self.signal_delay} s) must be shorter than --time "
                              f"({self.time} min)")
        if self.max_parallel is not None and self.max_parallel < 1:
            raise LaunchError(f"--max-parallel must be at least 1, got {self.max_parallel}")
        if self.max_parallel is not None and self.cluster == "debug":
            raise LaunchError("--max-parallel: --cluster debug runs the elements one by one in this process already")
        if self.cluster != "slurm" and self.nodes > 1:
            raise LaunchError(f"--cluster {self.cluster} runs on this machine only: --nodes must be 1 "
                              f"(got {self.nodes}); use --cluster slurm for multi-node runs")


_FIELDS = {f.name for f in dataclasses.fields(LaunchOptions)}


def resolve_preset(name: str) -> str:
    """A preset name (launch/clusters/NAME.yaml) or a path -> the YAML path."""
    if os.path.isfile(name):
        return name
    path = os.path.join(PRESET_DIR, f"{name}.yaml")
    if os.path.isfile(path):
        return path
    known = sorted(f[:-5] for f in os.listdir(PRESET_DIR) if f.endswith(".yaml"))
    raise LaunchError(f"unknown cluster preset '{name}': not a file, and not one of {known}")


def load_preset(name: str) -> dict:
    """The preset's option values (validated names), to layer under the command line."""
    path = resolve_preset(name)
    values = {}
    for key, value in load_yaml_mapping(path, "cluster preset", error=LaunchError).items():
        k = str(key).replace("-", "_")
        if k not in _FIELDS:
            raise LaunchError(f"{path}: unknown launcher option '{key}'{did_you_mean(k, sorted(_FIELDS))}")
        values[k] = value
    return values


def make_options(preset: Optional[str], **given: Any) -> LaunchOptions:
    """Defaults <- preset <- explicit values (None means "not given")."""
    values: dict = {}
    preset = preset or os.environ.get(PRESET_ENV) or None
    if preset:
        values.update(load_preset(preset))
    for k, v in given.items():
        if v is None:
            continue
        if k == "slurm_extra":
            values["slurm_extra"] = {**(values.get("slurm_extra") or {}), **v}
        elif k == "setup":
            values["setup"] = list(values.get("setup") or []) + list(v)
        else:
            values[k] = v
    try:
        opts = LaunchOptions(**values)
    except TypeError as e:
        raise LaunchError(str(e)) from None
    opts.slurm_extra = {str(k): v for k, v in (opts.slurm_extra or {}).items()}
    opts.setup = [str(s) for s in (opts.setup or [])]
    opts.check()
    return opts


def parse_extra(items: list[str]) -> dict:
    """['gres=gpu:8', 'requeue'] -> {'gres': 'gpu:8', 'requeue': True}."""
    out: dict = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not key:
            raise LaunchError(f"--slurm-extra expects key=value (an sbatch option), got '{item}'")
        out[key] = value if eq else True
    return out


def sbatch_parameters(opts: LaunchOptions, name: str, *, nodes: Optional[int] = None,
                      tasks_per_node: Optional[int] = None, gpus_per_node: Optional[int] = None,
                      dependency: Optional[str] = None) -> dict:
    """submitit SlurmExecutor parameters (sbatch names) for these options."""
    nodes = opts.nodes if nodes is None else nodes
    gpus = opts.gpus_per_node if gpus_per_node is None else gpus_per_node
    p: dict = {"job_name": opts.job_name or name, "time": int(opts.time), "nodes": nodes,
               "ntasks_per_node": opts.ntasks_per_node if tasks_per_node is None else tasks_per_node,
               "signal_delay_s": int(opts.signal_delay), "wckey": None}
    if gpus:
        p["gpus_per_node"] = gpus
    if opts.cpus_per_task:
        p["cpus_per_task"] = opts.cpus_per_task
    if opts.mem_gb:
        p["mem"] = f"{max(1, round(opts.mem_gb * 1024))}M"
    for k in ("partition", "account", "qos", "constraint"):
        if getattr(opts, k):
            p[k] = getattr(opts, k)
    if opts.exclusive:
        p["exclusive"] = True
    if opts.max_parallel:
        p["array_parallelism"] = int(opts.max_parallel)
    if opts.setup:
        p["setup"] = list(opts.setup)
    extra = dict(opts.slurm_extra)
    if dependency:
        p["dependency"] = dependency
        extra.setdefault("kill-on-invalid-dep", "yes")  # a failed parent cancels, not strands, the child
    if extra:
        p["additional_parameters"] = extra
    return p
