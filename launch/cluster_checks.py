"""Submit-time checks of a request against the cluster (scontrol/sinfo): a job that can never
run is refused before anything is submitted."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from typing import Optional

from .options import LaunchError, LaunchOptions


def _run(cmd: list[str], timeout: float = 20) -> Optional[str]:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def _minutes(text: str) -> Optional[int]:
    """SLURM time 'd-hh:mm:ss' / 'hh:mm:ss' / 'mm' -> minutes; UNLIMITED -> None."""
    if text.upper() in ("UNLIMITED", "INFINITE", "NONE", ""):
        return None
    days, _, rest = text.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    h, m, s = ([0, 0] + parts)[-3:] if len(parts) > 1 else (0, parts[0], 0)
    return int(days or 0) * 1440 + h * 60 + m + (1 if s else 0)


def _gpus(gres: str) -> int:
    total = 0
    for item in gres.split(","):
        fields = item.split("(")[0].split(":")
        if fields[0] == "gpu" and fields[-1].isdigit():
            total += int(fields[-1])
    return total


def check_request(opts: LaunchOptions, tasks_per_node: int, nodes: int) -> Optional[str]:
    """Compare the request with what the cluster has (sinfo/scontrol); raise LaunchError if it can
    never run. Returns the partition checked, or None when no cluster answered."""
    parts = _run(["scontrol", "show", "partition", "-o"])
    if parts is None:
        return None
    table = {}
    for line in parts.splitlines():
        kv = dict(tok.split("=", 1) for tok in line.split() if "=" in tok)
        if "PartitionName" in kv:
            table[kv["PartitionName"]] = kv
    if not table:
        return None
    name = opts.partition
    if name is None:
        name = next((n for n, kv in table.items() if kv.get("Default") == "YES"), None)
        if name is None:
            raise LaunchError(f"this cluster has no default partition: pass --partition (one of {sorted(table)})")
    if name not in table:
        raise LaunchError(f"unknown partition '{name}': this cluster has {sorted(table)}")
    kv = table[name]
    if kv.get("State", "UP") != "UP":
        print(f"warning: partition '{name}' is {kv['State']}; the job will wait", file=sys.stderr)
    max_time = _minutes(kv.get("MaxTime", "UNLIMITED"))
    if max_time is not None and opts.time > max_time:
        raise LaunchError(f"--time {opts.time} min exceeds the {max_time} min limit of partition '{name}'")

    rows = _run(["sinfo", "-h", "-N", "-p", name, "-o", "%N|%c|%m|%G|%f"])
    if not rows:
        return name
    nodes_info = {}
    for row in rows.splitlines():
        n, cpus, mem, gres, feats = (row.split("|") + [""] * 5)[:5]
        nodes_info[n] = (int(cpus or 0), int(re.sub(r"\D", "", mem) or 0), _gpus(gres), set(feats.split(",")))
    have = len(nodes_info)
    if nodes > have:
        raise LaunchError(f"--nodes {nodes}: partition '{name}' has only {have} node(s)")

    need_cpus = tasks_per_node * (opts.cpus_per_task or 1)
    need_mem = round(opts.mem_gb * 1024) if opts.mem_gb else 0
    need_gpus = opts.gpus_per_node
    simple_feature = opts.constraint if opts.constraint and re.fullmatch(r"[\w.-]+", opts.constraint) else None
    reasons = {"cpus": 0, "mem": 0, "gpus": 0, "feature": 0}
    fit = 0
    for cpus, mem, gpus, feats in nodes_info.values():
        ok = True
        for key, bad in (("cpus", cpus < need_cpus), ("mem", mem < need_mem), ("gpus", gpus < need_gpus),
                         ("feature", simple_feature is not None and simple_feature not in feats)):
            if bad:
                reasons[key] += 1
                ok = False
        fit += ok
    if fit >= nodes:
        return name
    biggest_mem = max(v[1] for v in nodes_info.values())
    biggest_cpu = max(v[0] for v in nodes_info.values())
    most_gpus = max(v[2] for v in nodes_info.values())
    why = []
    if reasons["mem"]:
        why.append(f"--mem-gb {opts.mem_gb:g} per node, but the largest node in partition '{name}' has "
                   f"{biggest_mem / 1024:.1f} GB")
    if reasons["cpus"]:
        why.append(f"{tasks_per_node} task(s) x {opts.cpus_per_task or 1} CPU(s) = {need_cpus} CPUs per node, "
                   f"but the largest node in partition '{name}' has {biggest_cpu}")
    if reasons["gpus"]:
        why.append(f"--gpus-per-node {need_gpus}, but " + (f"nodes in partition '{name}' have at most {most_gpus} GPU(s)"
                   if most_gpus else f"partition '{name}' has no GPUs (no gpu GRES)"))
    if reasons["feature"]:
        why.append(f"--constraint {opts.constraint}: no node in partition '{name}' has that feature")
    raise LaunchError(f"the request can never run: {'; '.join(why) or 'no node fits'} "
                      f"({fit} of the {nodes} node(s) needed fit)")
