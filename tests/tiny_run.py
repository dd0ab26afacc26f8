"""Helpers shared by the tests: the tiny preset with overrides."""
from __future__ import annotations

import os

from ssl_bf.run_config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.yaml")


def tiny_config(tmp_path=None, *overrides: str):
    """configs/tiny.yaml with overrides (and the run folder under tmp_path)."""
    extra = [f"run.dir={tmp_path}/run"] if tmp_path is not None else []
    return load_config(TINY, [*extra, *overrides])


def each_key_once(*args: str) -> list[str]:
    """Command-line arguments with every `key=value` override given once: a later one replaces an
    earlier one of the same key in place (`ssl-bf pretrain` refuses a key given twice)."""
    out: list[str] = []
    where: dict[str, int] = {}
    for arg in args:
        key = arg.split("=", 1)[0] if "=" in arg and not arg.startswith("-") else None
        if key is not None and key in where:
            out[where[key]] = arg
            continue
        if key is not None:
            where[key] = len(out)
        out.append(arg)
    return out
