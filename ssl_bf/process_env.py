"""Where this process sits in a multi-process job: rank, world size, local rank, rendezvous address.

Two launchers are understood, read once here (the boundary) and nowhere else:

- torchrun, submitit (`ssl-bf submit`) or any env:// launcher: `WORLD_SIZE`, `RANK`, `LOCAL_RANK`,
  `MASTER_ADDR`, `MASTER_PORT`. When `WORLD_SIZE` is set, it wins.
- a plain `srun python -m ssl_bf ...` (no torchrun): inside an srun step (`SLURM_STEP_ID` set) with
  `SLURM_NTASKS` > 1, the rank is `SLURM_PROCID`, the world `SLURM_NTASKS`, the local rank
  `SLURM_LOCALID`; `MASTER_ADDR` (when unset) is the first host of `SLURM_STEP_NODELIST` (else
  `SLURM_JOB_NODELIST`), `MASTER_PORT` (when unset) `SLURM_PORT_BASE + (job id x 16 + step id) mod
  SLURM_PORT_SPAN`, so two jobs sharing a node, or two steps of one job, rarely meet.

Anything else is one process. An incomplete or contradictory set of variables raises
`ProcessEnvError`, one line naming the variable and the fix, before any process group is joined.
A batch script's own shell (sbatch, salloc: no `SLURM_STEP_ID`) is one process, whatever
`SLURM_NTASKS` says.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Mapping, Optional

SLURM_PORT_BASE, SLURM_PORT_SPAN = 20000, 20000  # MASTER_PORT under a plain srun: 20000..39999
MAX_HOSTS = 1 << 16  # a host list that expands to more names is refused (never expanded)
_LAST_REAL_STEP_ID = 0xFFFFFFF0  # Slurm's special steps (batch, extern, interactive) are above this
TORCHRUN_FIX = "torchrun sets them for every process; for one process, unset WORLD_SIZE"
SLURM_FIX = "srun sets them for every task; for one process, unset SLURM_NTASKS (or start it with torchrun)"


class ProcessEnvError(Exception):
    """The launcher's environment variables are incomplete or contradict each other."""


@dataclass(frozen=True)
class LaunchEnv:
    """This process's place in its job. `source`: "torchrun" (env:// variables), "slurm" (a plain
    srun step) or "single" (one process, no variables)."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: Optional[str]
    master_port: Optional[int]
    source: str

    def torch_variables(self) -> dict[str, str]:
        """The env:// variables torch.distributed reads (for a group of more than one process)."""
        return {"RANK": str(self.rank), "WORLD_SIZE": str(self.world_size), "LOCAL_RANK": str(self.local_rank),
                "MASTER_ADDR": str(self.master_addr), "MASTER_PORT": str(self.master_port)}


def _int(environ: Mapping[str, str], name: str, fix: str, low: int, high: Optional[int] = None,
         why: str = "") -> int:
    text = environ.get(name, "")
    if not re.fullmatch(r"[+-]?[0-9]{1,18}", text.strip()):  # ASCII digits only, as the launchers write them
        raise ProcessEnvError(f"{name}={text!r} is not a whole number{why}; {fix}")
    value = int(text.strip())
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise ProcessEnvError(f"{name}={value} must be {bounds}{why}; {fix}")
    return value


def _optional_int(environ: Mapping[str, str], name: str, fix: str, low: int, high: Optional[int] = None,
                  default: Optional[int] = 0) -> Optional[int]:
    return _int(environ, name, fix, low, high) if environ.get(name, "").strip() else default


def _require(environ: Mapping[str, str], names: tuple[str, ...], context: str, fix: str) -> None:
    missing = [n for n in names if not environ.get(n, "").strip()]
    if missing:
        listed = missing[0] if len(missing) == 1 else f"{', '.join(missing[:-1])} and {missing[-1]}"
        raise ProcessEnvError(f"{context}, but {listed} {'is' if len(missing) == 1 else 'are'} not set; {fix}")


def _port(environ: Mapping[str, str], fix: str) -> int:
    return _int(environ, "MASTER_PORT", fix, 1, 65535)


def _from_torchrun(environ: Mapping[str, str]) -> LaunchEnv:
    fix = TORCHRUN_FIX
    world = _int(environ, "WORLD_SIZE", fix, 1)
    local = _optional_int(environ, "LOCAL_RANK", fix, 0)
    if world == 1:
        addr = environ.get("MASTER_ADDR", "").strip() or None
        port = _optional_int(environ, "MASTER_PORT", fix, 1, 65535, default=None)
        return LaunchEnv(_optional_int(environ, "RANK", fix, 0, 0), 1, local, addr, port, "torchrun")
    _require(environ, ("RANK", "MASTER_ADDR", "MASTER_PORT"),
             f"WORLD_SIZE={world} says this is one of {world} processes", fix)
    rank = _int(environ, "RANK", fix, 0, world - 1, why=f" (WORLD_SIZE={world})")
    return LaunchEnv(rank, world, local, environ["MASTER_ADDR"].strip(), _port(environ, fix), "torchrun")


def _in_srun_step(environ: Mapping[str, str]) -> bool:
    """True inside a task of an srun step (not a batch script's or salloc's own shell)."""
    step = _step_id(environ)
    return step is not None and step < _LAST_REAL_STEP_ID


def _step_id(environ: Mapping[str, str]) -> Optional[int]:
    step = (environ.get("SLURM_STEP_ID") or environ.get("SLURM_STEPID") or "").strip()
    return int(step) if re.fullmatch(r"[0-9]{1,12}", step) else None


def _from_slurm(environ: Mapping[str, str], world: int) -> LaunchEnv:
    fix = SLURM_FIX
    context = f"SLURM_NTASKS={world} says this srun task is one of {world}"
    _require(environ, ("SLURM_PROCID", "SLURM_LOCALID"), context, fix)
    rank = _int(environ, "SLURM_PROCID", fix, 0, world - 1, why=f" (SLURM_NTASKS={world})")
    local = _int(environ, "SLURM_LOCALID", fix, 0)
    addr = environ.get("MASTER_ADDR", "").strip()
    if not addr:
        name = next((n for n in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
                     if environ.get(n, "").strip()), None)
        if name is None:
            raise ProcessEnvError(f"{context}, but neither MASTER_ADDR nor SLURM_JOB_NODELIST is set (the "
                                  f"rendezvous host); set MASTER_ADDR to the host of task 0")
        addr = slurm_hostnames(environ[name], name)[0]
    if environ.get("MASTER_PORT", "").strip():
        port = _port(environ, fix)
    else:
        job = _optional_int(environ, "SLURM_JOB_ID", fix, 0)
        port = SLURM_PORT_BASE + (job * 16 + (_step_id(environ) or 0)) % SLURM_PORT_SPAN
    return LaunchEnv(rank, world, local, addr, port, "slurm")


def launch_env(environ: Optional[Mapping[str, str]] = None) -> LaunchEnv:
    """This process's place in its job, from `environ` (default: os.environ); see the module doc.
    Raises ProcessEnvError naming the variable that is missing or wrong."""
    environ = os.environ if environ is None else environ
    if environ.get("WORLD_SIZE", "").strip():
        return _from_torchrun(environ)
    if _in_srun_step(environ) and environ.get("SLURM_NTASKS", "").strip():
        world = _int(environ, "SLURM_NTASKS", SLURM_FIX, 1)
        if world > 1:
            return _from_slurm(environ, world)
    return LaunchEnv(0, 1, 0, None, None, "single")


# --- SLURM's compressed host lists: "gpu[01-03,07],login1" ------------------------------------------
_RANGE = re.compile(r"([0-9]+)(?:-([0-9]+))?")


def _bad_list(variable: str, text: str, what: str) -> ProcessEnvError:
    return ProcessEnvError(f"{variable}={text!r}: {what} in the host list; set MASTER_ADDR to the host of task 0")


def _ranges(body: str, variable: str, text: str) -> list[tuple[str, int]]:
    """"01-03,07" -> [("01", 3), ("07", 1)]: each range's first number (its zero padding) and length."""
    out = []
    for part in body.split(","):
        m = _RANGE.fullmatch(part.strip())
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise _bad_list(variable, text, f"the range '{part}' cannot be read")
        out.append((m.group(1), 1 if m.group(2) is None else int(m.group(2)) - int(m.group(1)) + 1))
    return out


def _expand(ranges: list[tuple[str, int]]) -> list[str]:
    """[("01", 3), ("07", 1)] -> ["01", "02", "03", "07"] (zero padding kept)."""
    return [f"{int(low) + i:0{len(low)}d}" for low, n in ranges for i in range(n)]


def _split_top_level(text: str, variable: str) -> list[str]:
    """Split at the commas outside brackets: "a[1,2],b" -> ["a[1,2]", "b"]."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
        if depth not in (0, 1):
            break
        if c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise _bad_list(variable, text, "unbalanced brackets")
    return parts + [text[start:]]


def slurm_hostnames(text: str, variable: str = "SLURM_JOB_NODELIST") -> list[str]:
    """The hosts of a SLURM host list, in order ("n[1-2],gpu07" -> ["n1", "n2", "gpu07"]); a list
    that cannot be read raises ProcessEnvError naming `variable`."""
    groups = []
    for group in _split_top_level(text.strip(), variable):
        pieces = re.split(r"(\[[^\[\]]*\])", group)  # text, [ranges], text, ...
        if any(("[" in p or "]" in p) and not p.startswith("[") for p in pieces):
            raise _bad_list(variable, text, "unbalanced brackets")
        if not "".join(p for p in pieces if not p.startswith("[")) or any(ch.isspace() for ch in group):
            raise _bad_list(variable, text, f"the host name '{group}' is empty or holds a blank")
        parts = [_ranges(p[1:-1], variable, text) if p.startswith("[") else p for p in pieces]
        groups.append(parts)
    count = sum(math.prod(sum(n for _, n in p) for p in parts if isinstance(p, list)) for parts in groups)
    if count > MAX_HOSTS:
        raise _bad_list(variable, text, f"{count} hosts (more than {MAX_HOSTS})")
    hosts: list[str] = []
    for parts in groups:
        names = [""]
        for part in parts:
            names = [n + s for n in names for s in _expand(part)] if isinstance(part, list) else \
                [n + part for n in names]
        hosts += names
    return hosts

