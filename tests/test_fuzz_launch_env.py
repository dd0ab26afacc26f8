"""Fuzz: the launch-environment reader (`ssl_bf.process_env`), against an independent model of the rules.

- Generated launches (none, torchrun, a plain srun task, a batch script's shell), each variable
  valid, missing or spoiled: `launch_env` gives exactly what the rule model says, or refuses with one
  line naming a variable the model says is at fault; never another exception.
- SLURM host lists written from generated host groups expand back to those hosts; any other text
  gives hosts without blanks, brackets or commas, or a refusal naming the variable.
- `ssl-bf pretrain` under a generated broken launch exits 2 naming the variable and writes nothing.
"""
from __future__ import annotations

import os
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz_contract import check_contract, count, fuzz_examples, run_cli, snapshot, watched_files
from ssl_bf.process_env import (SLURM_PORT_BASE, SLURM_PORT_SPAN, LaunchEnv, ProcessEnvError, launch_env,
                                slurm_hostnames)
from tiny_run import TINY

SPOILED = ["", " ", "x", "-1", "1.5", "2x", "0x10", "１", "1_0", "+3", "99999999999999999999"]  # ""/" ": missing


def _value(valid: str):
    """A variable's generated value: valid (7 in 10), missing (None) or spoiled."""
    return st.integers(0, 9).flatmap(
        lambda roll: st.just(valid) if roll < 7 else st.none() if roll == 7 else st.sampled_from(SPOILED))


def _whole(text) -> int | None:
    """The model's reading of a number: plain ASCII digits (an optional sign) only."""
    if text is None or not text.strip():
        return None
    t = text.strip()
    body = t[1:] if t[:1] in "+-" else t
    return int(t) if body.isascii() and body.isdigit() and len(body) <= 18 else "bad"


@st.composite
def launches(draw):
    kind = draw(st.sampled_from(["none", "torchrun", "srun", "batch-shell"]))
    env: dict[str, str] = {}
    if kind == "torchrun":
        world = draw(st.integers(1, 64))
        values = {"WORLD_SIZE": draw(_value(str(world))), "RANK": draw(_value(str(draw(st.integers(0, world - 1))))),
                  "LOCAL_RANK": draw(_value(str(draw(st.integers(0, 7))))),
                  "MASTER_ADDR": draw(st.one_of(st.just("head"), st.none())),
                  "MASTER_PORT": draw(_value(str(draw(st.integers(1, 65535)))))}
    elif kind in ("srun", "batch-shell"):
        ntasks = draw(st.integers(1, 64))
        values = {"SLURM_NTASKS": draw(_value(str(ntasks))),
                  "SLURM_PROCID": draw(_value(str(draw(st.integers(0, ntasks - 1))))),
                  "SLURM_LOCALID": draw(_value(str(draw(st.integers(0, 7))))),
                  "SLURM_JOB_NODELIST": draw(st.one_of(st.just("gpu[07-09],cpu1"), st.just("n1"), st.none(),
                                                       st.just("gpu[07-"))),
                  "SLURM_JOB_ID": draw(st.one_of(st.just(str(draw(st.integers(0, 10**7)))), st.none())),
                  "MASTER_PORT": draw(st.one_of(st.none(), st.just("29400"), st.just("0")))}
        if kind == "srun":
            values["SLURM_STEP_ID"] = str(draw(st.integers(0, 20)))
    else:
        values = {}
    env = {k: v for k, v in values.items() if v is not None}
    return kind, env


def _model(kind: str, env: dict):
    """The rules, written independently: a LaunchEnv, or the set of variables a refusal may name."""
    n = {k: _whole(v) for k, v in env.items()}
    if kind == "torchrun" and n.get("WORLD_SIZE") is not None:
        world = n["WORLD_SIZE"]
        if world == "bad" or world < 1:
            return {"WORLD_SIZE"}
        suspects = {k for k in ("LOCAL_RANK",) if n.get(k) == "bad" or (isinstance(n.get(k), int) and n[k] < 0)}
        if world == 1:
            suspects |= {k for k in ("RANK",) if n.get(k) == "bad" or n.get(k) not in (None, 0)}
            suspects |= {"MASTER_PORT"} if n.get("MASTER_PORT") == "bad" or (
                isinstance(n.get("MASTER_PORT"), int) and not 1 <= n["MASTER_PORT"] <= 65535) else set()
            if suspects:
                return suspects | {"RANK", "LOCAL_RANK", "MASTER_PORT"}
            return LaunchEnv(0, 1, n.get("LOCAL_RANK") or 0, env.get("MASTER_ADDR"), n.get("MASTER_PORT"), "torchrun")
        missing = {k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not env.get(k, "").strip()}
        bad = {k for k in ("RANK", "MASTER_PORT") if n.get(k) == "bad"}
        if suspects or missing or bad or not 0 <= n["RANK"] < world or not 1 <= n["MASTER_PORT"] <= 65535:
            return suspects | missing | bad | {"RANK", "MASTER_PORT", "LOCAL_RANK"}
        return LaunchEnv(n["RANK"], world, n.get("LOCAL_RANK") or 0, env["MASTER_ADDR"], n["MASTER_PORT"], "torchrun")
    if kind != "srun" or n.get("SLURM_NTASKS") is None:
        return LaunchEnv(0, 1, 0, None, None, "single")
    tasks = n["SLURM_NTASKS"]
    if tasks == "bad" or tasks < 1:
        return {"SLURM_NTASKS"}
    if tasks == 1:
        return LaunchEnv(0, 1, 0, None, None, "single")
    everything = {"SLURM_PROCID", "SLURM_LOCALID", "SLURM_JOB_NODELIST", "SLURM_JOB_ID", "MASTER_PORT"}
    procid, localid, port, job = (n.get(k) for k in ("SLURM_PROCID", "SLURM_LOCALID", "MASTER_PORT", "SLURM_JOB_ID"))
    if (None in (procid, localid) or "bad" in (procid, localid, port) or not 0 <= procid < tasks
            or localid < 0 or (port is not None and not 1 <= port <= 65535)
            or env.get("SLURM_JOB_NODELIST") in (None, "gpu[07-")
            or (port is None and (job == "bad" or (job or 0) < 0))):  # the job id matters only for the port
        return everything
    hosts = {"gpu[07-09],cpu1": "gpu07", "n1": "n1"}
    if port is None:
        port = SLURM_PORT_BASE + ((job or 0) * 16 + int(env["SLURM_STEP_ID"])) % SLURM_PORT_SPAN
    return LaunchEnv(procid, tasks, localid, hosts[env["SLURM_JOB_NODELIST"]], port, "slurm")


@settings(max_examples=fuzz_examples(400))
@given(launches())
def test_launch_env_follows_the_rules_or_refuses_naming_a_variable(launch):
    count("launch_env", 1)
    kind, env = launch
    expected = _model(kind, env)
    try:
        got = launch_env(env)
    except ProcessEnvError as err:
        message = str(err)
        assert isinstance(expected, set), (env, message)
        assert "\n" not in message and any(name in message for name in expected), (env, expected, message)
        return
    assert got == expected, (env, got, expected)
    assert 0 <= got.rank < got.world_size and got.local_rank >= 0
    if got.world_size > 1:
        assert got.master_addr and 1 <= got.master_port <= 65535


@st.composite
def host_groups(draw):
    """[(prefix, [(first number text, count)...], suffix)]: what a SLURM host list describes."""
    groups = []
    for _ in range(draw(st.integers(1, 4))):
        prefix = draw(st.text(string.ascii_lowercase + "-", min_size=1, max_size=6))
        ranges = []
        if draw(st.booleans()):
            for _ in range(draw(st.integers(1, 3))):
                width = draw(st.integers(1, 3))
                first = draw(st.integers(0, 10**width - 1))
                ranges.append((f"{first:0{width}d}", draw(st.integers(1, 5))))
        groups.append((prefix, ranges, draw(st.sampled_from(["", "-ib", "a"]))))
    return groups


def _write(groups) -> str:
    parts = []
    for prefix, ranges, suffix in groups:
        if not ranges:
            parts.append(prefix + suffix)
            continue
        inside = ",".join(low if n == 1 else f"{low}-{int(low) + n - 1}" for low, n in ranges)
        parts.append(f"{prefix}[{inside}]{suffix}")
    return ",".join(parts)


def _hosts(groups) -> list[str]:
    out = []
    for prefix, ranges, suffix in groups:
        numbers = [str(int(low) + i).zfill(len(low)) for low, n in ranges for i in range(n)] or [""]
        out += [prefix + number + suffix for number in numbers]
    return out


@settings(max_examples=fuzz_examples(300))
@given(host_groups())
def test_host_lists_expand_to_the_hosts_they_describe(groups):
    count("slurm_hostnames", 1)
    assert slurm_hostnames(_write(groups)) == _hosts(groups)


@settings(max_examples=fuzz_examples(300))
@given(st.text(string.ascii_letters + string.digits + "[]-,. \t_", max_size=40))
def test_any_host_list_text_gives_clean_hosts_or_a_named_refusal(text):
    count("slurm_hostnames", 1)
    try:
        hosts = slurm_hostnames(text, "SLURM_STEP_NODELIST")
    except ProcessEnvError as err:
        assert "SLURM_STEP_NODELIST" in str(err) and "\n" not in str(err)
        return
    assert hosts and all(h and not any(c in h for c in "[], \t") for h in hosts), (text, hosts)



LAUNCH_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_STEP_ID",
                    "SLURM_STEPID", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_JOB_NODELIST",
                    "SLURM_STEP_NODELIST", "SLURM_NODELIST", "SLURM_JOB_ID")


@settings(max_examples=fuzz_examples(25))
@given(launches().filter(lambda launch: isinstance(_model(*launch), set)))
def test_pretrain_under_a_broken_launch_refuses_and_writes_nothing(tmp_path_factory, launch):
    count("launch_env_cli", 1)
    kind, variables = launch
    tmp = tmp_path_factory.mktemp("launch")
    (tmp / "kept.txt").write_text("a file the refusal must not touch\n")
    before = snapshot(watched_files(str(tmp)))
    saved = {k: os.environ.get(k) for k in LAUNCH_VARIABLES}
    try:
        for k in LAUNCH_VARIABLES:
            os.environ.pop(k, None)
        os.environ.update(variables)
        code, output = run_cli(["pretrain", "--config", TINY, f"run.dir={tmp}/run", "data.subset=256"])
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    check_contract(code, output, names=tuple(_model(kind, variables)), before=before)
    assert code == 2 and not (tmp / "run").exists(), output
