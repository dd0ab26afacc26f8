"""Launcher options: dataclass, cluster presets (launch/clusters/*.yaml) and sbatch parameters."""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from ssl_bf.outputs import OutputError, check_output_folder
from ssl_bf.run_layout import Owner
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
    ignored: list = field(default_factory=list, repr=False)  # preset values this cluster does not use (a note)

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
        if self.mem_gb is not None and not (math.isfinite(self.mem_gb) and self.mem_gb > 0):
            raise LaunchError(f"--mem-gb must be a positive number of GB per node, got {self.mem_gb:g}")
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
        if self.cluster == "debug" and self.ntasks_per_node > 1:
            given = "--tasks-per-node" if self.tasks_per_node else "--gpus-per-node"
            raise LaunchError(f"{given}: --cluster debug runs one task in this process, not "
                              f"{self.ntasks_per_node}; use --cluster local for several tasks on this machine")
        texts = {f"--{k.replace('_', '-')}": getattr(self, k)
                 for k in ("partition", "account", "qos", "constraint", "job_name", "folder")}
        texts.update({f"--slurm-extra {k}": f"{k}={v}" for k, v in self.slurm_extra.items()})
        for name, text in texts.items():
            if isinstance(text, str) and ("\n" in text or "\r" in text):
                raise LaunchError(f"{name}: the value {text!r} contains a line break, which would end its "
                                  f"#SBATCH line in the job script; give one line")


# The options that only sbatch uses: a local or debug job would silently go without them.
SLURM_ONLY = ("partition", "account", "qos", "constraint", "exclusive", "slurm_extra", "mem_gb", "cpus_per_task",
              "job_name")
# What each non-SLURM cluster does not use. `--cluster debug` runs the job in this process, at once:
# no shell runs before it (setup), and no time limit, signal or requeue applies.
IGNORED_BY = {"local": SLURM_ONLY, "debug": (*SLURM_ONLY, "setup", "time", "signal_delay", "max_requeues")}


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _given(value: Any) -> bool:
    """An option value that asks for something (not None, not False, not empty)."""
    return value is not None and value is not False and value != {} and value != []


def _refuse_unused(cluster: str, given: dict, preset_values: dict, preset_path: Optional[str]) -> list[str]:
    """LaunchError for an option the cluster would ignore when asked for explicitly (command line,
    or a preset that itself names this cluster); returns the preset values ignored otherwise."""
    unused = IGNORED_BY.get(cluster, ())
    for name in unused:
        if _given(given.get(name)):
            if name in SLURM_ONLY:
                raise LaunchError(f"{_flag(name)} is a SLURM (sbatch) option, which --cluster {cluster} does not "
                                  f"use: drop it, or submit with --cluster slurm")
            raise LaunchError(f"{_flag(name)}: --cluster debug runs the job in this process at once, so it has no "
                              f"use for {_flag(name)}: drop it, or use --cluster local")
    own = preset_values.get("cluster")
    ignored = [name for name in unused if _given(preset_values.get(name)) and name not in given]
    if ignored and own == cluster:
        raise LaunchError(f"{preset_path}: '{ignored[0]}' is a SLURM option, but this preset runs on "
                          f"cluster: {cluster}, which does not use it: remove it from the preset"
                          if ignored[0] in SLURM_ONLY else
                          f"{preset_path}: '{ignored[0]}' has no use on cluster: {cluster}: remove it from the preset")
    return ignored


_FIELDS = {f.name for f in dataclasses.fields(LaunchOptions)} - {"ignored"}


def resolve_preset(name: str, from_env: bool = False) -> str:
    """A preset name (launch/clusters/NAME.yaml) or a path -> the YAML path."""
    given = f"${PRESET_ENV}={name}" if from_env else f"--preset {name}"
    if os.path.isfile(name):
        return name
    if os.path.isdir(name):
        raise LaunchError(f"{given}: a folder; give a preset YAML file or a preset name")
    path = os.path.join(PRESET_DIR, f"{name}.yaml")
    if name and os.sep not in name and os.path.isfile(path):
        return path
    known = sorted(f[:-5] for f in os.listdir(PRESET_DIR) if f.endswith(".yaml"))
    raise LaunchError(f"{given}: unknown cluster preset '{name}': not a file, and not one of {known}")


_INT = ("nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task", "time", "signal_delay", "max_requeues",
        "max_parallel")
_TEXT = ("cluster", "partition", "account", "qos", "constraint", "folder", "job_name")
_REQUIRED = ("cluster", "nodes", "gpus_per_node", "time", "signal_delay", "max_requeues", "exclusive")


def _check_type(path: str, key: str, value: Any) -> Any:
    """A preset value of the type its option takes (LaunchError naming the file and key)."""
    def bad(kind: str) -> LaunchError:
        return LaunchError(f"{path}: {key} must be {kind}, got {value!r}")

    if value is None:
        if key in _REQUIRED:
            raise bad("a value (leave the key out for the default)")
        return value
    if key in _INT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
    elif key == "mem_gb":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number of GB")
    elif key in _TEXT:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise bad("a single value")
        value = str(value)
    elif key == "exclusive":
        if not isinstance(value, bool):
            raise bad("true or false")
    elif key == "slurm_extra":
        if not isinstance(value, dict) or any(isinstance(v, (dict, list)) for v in value.values()):
            raise bad("a mapping of sbatch options to single values, e.g. {mail-type: END}")
    elif key == "setup":
        if not isinstance(value, list) or any(isinstance(v, (dict, list)) or v is None for v in value):
            raise bad("a list of shell lines, e.g. [\"module load cuda\"]")
    return value


def load_preset(name: str, from_env: bool = False) -> dict:
    """The preset's option values (validated names and types), to layer under the command line."""
    path = resolve_preset(name, from_env)
    values = {}
    for key, value in load_yaml_mapping(path, "cluster preset", error=LaunchError).items():
        k = str(key).replace("-", "_")
        if k not in _FIELDS:
            raise LaunchError(f"{path}: unknown launcher option '{key}'{did_you_mean(k, sorted(_FIELDS))}")
        values[k] = _check_type(path, k, value)
    return values


def make_options(preset: Optional[str], **given: Any) -> LaunchOptions:
    """Defaults <- preset <- explicit values (None means "not given")."""
    values: dict = {}
    from_env = not preset
    preset = preset or os.environ.get(PRESET_ENV) or None
    preset_values = load_preset(preset, from_env) if preset else {}
    values.update(preset_values)
    unknown = sorted(set(given) - _FIELDS)
    if unknown:
        raise LaunchError(f"unknown launcher option '{unknown[0]}'")
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
    opts.ignored = _refuse_unused(opts.cluster, {k: v for k, v in given.items() if v is not None}, preset_values,
                                  resolve_preset(preset, from_env) if preset else None)
    return opts


def check_folder(path: str, what: str) -> str:
    """Refuse an output folder before anything is submitted: an existing file (or device, FIFO,
    socket), a folder that cannot be created or written (ssl_bf.outputs.check_output_folder).
    Returns `path`."""
    try:
        check_output_folder(path, option=what, owner=Owner.SUBMIT)
    except OutputError as err:
        raise LaunchError(str(err)) from None
    return path


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
