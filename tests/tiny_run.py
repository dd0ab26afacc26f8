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
