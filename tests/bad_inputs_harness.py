"""The harness of tests/test_bad_inputs.py: one tiny pretrained run, bad files, and the checks
every bad input must pass (exit code, no traceback, a message naming the file or option, and no
byte changed where the command should not write).

A case table is a list of `Case`s in a `bad_cases_*.py` module. Placeholders in a case's argv and
`says` strings are filled from `Env.paths()`: {run} (a finished tiny run folder), {ckpt} (its
last.pt), {config} (its config.yaml), {train}/{test} (its embeddings files), {tmp} (a scratch
folder of this case), {bad_*} (the bad files of `BAD_FILES`), {tiny} (configs/tiny.yaml).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

from tiny_run import TINY

TRACEBACK = "Traceback (most recent call last)"


@dataclass
class Case:
    """One bad input: argv of `ssl-bf`, the exit code and the words the error must contain."""

    id: str
    argv: list[str]
    code: int = 2
    says: tuple[str, ...] = ()  # substrings of stderr+stdout, after placeholder filling
    setup: Optional[Callable[["Env", str], None]] = None  # (env, case tmp folder) -> None
    unchanged: tuple[str, ...] = ("{run}",)  # paths (files or folders) that must stay byte-identical
    subprocess: bool = False  # run `python -m ssl_bf` in a child (signals, real exit codes)
    wrong_result: bool = False  # a case that used to print a wrong number (for the tally)
    check: Optional[Callable[[str], None]] = None  # (case tmp folder) -> None: asserts on what it wrote
    environ: dict = field(default_factory=dict)  # variables set while the case runs (None: unset)


def _content(path: str) -> bytes:
    """A regular file's bytes; for a FIFO, socket or device (never opened: a FIFO would block) or a
    dangling link, what it is, so that replacing one with a regular file changes the digest."""
    try:
        st = os.stat(path)
    except OSError:
        return b"<dangling link>"
    if not stat.S_ISREG(st.st_mode):
        return f"<special file {stat.S_IFMT(st.st_mode):o}>".encode()
    with open(path, "rb") as f:
        return f.read()


def digest(path: str) -> str:
    """sha256 over a file, or over every file (name and bytes) under a folder; '-' if absent."""
    h = hashlib.sha256()
    if os.path.isdir(path):
        for dirpath, dirnames, filenames in sorted(os.walk(path)):
            dirnames.sort()
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                h.update(os.path.relpath(full, path).encode())
                h.update(_content(full))
    elif os.path.lexists(path):
        h.update(_content(path))
    else:
        return "-"
    return h.hexdigest()


def _pickle_with_global(path: str) -> None:
    import argparse

    import torch

    torch.save({"model": {}, "args": argparse.Namespace(lr=0.1)}, path)


class _Boom:
    def __reduce__(self):  # would run `touch` if anything unpickled it unrestricted
        return (os.system, (f"touch {os.environ.get('SSL_BF_PWNED', '/tmp/ssl-bf-pwned')}",))


def _malicious(path: str) -> None:
    import torch

    torch.save({"model": _Boom()}, path)


BAD_FILES: dict[str, Callable[[str], None]] = {
    "empty": lambda p: open(p, "wb").close(),
    "random": lambda p: open(p, "wb").write(os.urandom(4096)),
    "text": lambda p: open(p, "w").write("this is not a checkpoint\n"),
    "namespace_pickle": _pickle_with_global,
    "malicious_pickle": _malicious,
    "yaml_broken": lambda p: open(p, "w").write("method: [mocov2\n  seed: {\n"),
    "json_broken": lambda p: open(p, "w").write('{"knn": [1, 2'),
    "json_list": lambda p: open(p, "w").write("[1, 2, 3]\n"),
}
BAD_SUFFIX = {"yaml_broken": ".yaml", "json_broken": ".json", "json_list": ".json"}


@dataclass
class Env:
    """A finished tiny run with its embeddings, and a folder of bad files."""

    root: str
    run: str = ""
    bad: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, root: str) -> "Env":
        from ssl_bf.cli import main

        env = cls(root)
        env.run = os.path.join(root, "run")
        assert main(["pretrain", "--config", TINY, f"run.dir={env.run}", "train.epochs=1", "data.subset=256",
                     "moco.queue_size=128"]) == 0
        emb = os.path.join(root, "emb")
        for split in ("train", "test"):
            assert main(["embed", "--checkpoint", env.ckpt, "--split", split, "--subset", "300",
                         "--out", os.path.join(emb, f"{split}.safetensors"), "--no-progress"]) == 0
        bad = os.path.join(root, "bad")
        os.makedirs(bad)
        for name, make in BAD_FILES.items():
            path = os.path.join(bad, name + BAD_SUFFIX.get(name, ".pt"))
            make(path)
            env.bad[name] = path
        return env

    @property
    def ckpt(self) -> str:
        return os.path.join(self.run, "checkpoints", "last.pt")

    def paths(self, tmp: str) -> dict[str, str]:
        emb = os.path.join(self.root, "emb")
        return {"run": self.run, "ckpt": self.ckpt, "config": os.path.join(self.run, "config.yaml"),
                "train": os.path.join(emb, "train.safetensors"), "test": os.path.join(emb, "test.safetensors"),
                "tmp": tmp, "tiny": TINY, **{f"bad_{k}": v for k, v in self.bad.items()}}


def fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def run_case(case: Case, env: Env, tmp: str, capsys) -> tuple[int, str]:
    """Run one case; returns (exit code, stdout + stderr). An exception escaping main() is a
    traceback: it is re-raised by the caller's check."""
    from ssl_bf.cli import main

    values = env.paths(tmp)
    argv = [fill(a, values) for a in case.argv]
    if case.subprocess:
        done = subprocess.run([sys.executable, "-m", "ssl_bf", *argv], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        return done.returncode, done.stdout + done.stderr
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr()
    return int(code or 0), out.out + out.err


def copy_run(env: Env, dest: str) -> str:
    shutil.copytree(env.run, dest)
    return dest
