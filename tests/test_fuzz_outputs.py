"""Fuzzing every output option through the output guard (ssl_bf/outputs.py): generated output paths
for `ssl-bf knn --json`, `ssl-bf inspect --json` and `ssl-bf export OUT` (cheap commands on a real
run folder that `ssl-bf pretrain train.epochs=0` made, and small embeddings files).

The generated targets: special files of each kind (FIFO, socket, folder, a character device when
root, links to them, dangling links), the files of a real run folder (existing or not), existing
files of every kind ssl-bf knows (and empty ones), names of 1 to 300 bytes, unicode, spaces and
newlines, trailing slashes, nested missing folders.

The contract, for every target:
- exit 0 or 2, never a traceback; a refusal names the option;
- exit 2 exactly when the target must be refused, which the generator knows by construction (a
  special file, a run file, a non-empty file of another kind, a name over NAME_MAX, a trailing
  slash) and exit 0 otherwise, the target then a regular file of the kind written;
- on refusal every watched file (the run folder, the inputs, the target and everything beside it)
  is byte-identical and a special file is still what it was; on success every file but the
  command's own outputs is byte-identical.
"""
from __future__ import annotations

import os
import pickle
import shutil
import socket
import stat
import tempfile
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz_contract import check_contract, count, fuzz_examples, run_cli, snapshot, watched_files
from ssl_bf.file_kinds import FileKind, file_kind
from tiny_run import TINY

NAME_MAX = 255
RUN_FILES = ("config.yaml", "metrics.jsonl", "results.json", "evaluations.jsonl", "checkpoints/last.pt",
             "checkpoints/new.pt", "embeddings/test.safetensors", "tensorboard/events.json", "linear_head.pt",
             "logreg_head.pt", ".lock")
SPECIALS = ("fifo", "socket", "folder", "chardev", "link-to-fifo", "link-to-folder", "link-to-chardev",
            "dangling-link")


def _npz(path: str) -> None:
    with open(path, "wb") as f:  # a file object: given a name, numpy would add .npz to it
        np.savez(f, x=np.zeros(3))


def _with_file(path: str, write: Callable) -> None:
    with open(path, "wb") as f:
        write(f)


def _pickle(path: str) -> None:
    with open(path, "wb") as f:
        pickle.dump({"a": [1, 2]}, f, protocol=4)


def _bytes(data: bytes) -> Callable[[str], None]:
    def write(path: str) -> None:
        with open(path, "wb") as f:
            f.write(data)
    return write


EXISTING: dict[str, tuple[Optional[FileKind], Callable[[str], None]]] = {  # what lies at the target already
    "empty": (None, _bytes(b"")),
    "torch": (FileKind.TORCH, lambda p: torch.save({"w": torch.ones(2)}, p)),
    "json": (FileKind.JSON, _bytes(b'{"mine": [1, 2, 3]}\n')),
    "jsonl": (FileKind.JSON, _bytes(b'{"step": 1}\n{"step": 2}\n')),
    "yaml": (FileKind.TEXT, _bytes(b"seed: 0\nmethod: mocov2\n")),
    "png": (FileKind.PNG, _bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))),
    "npy": (FileKind.NPY, lambda p: _with_file(p, lambda f: np.save(f, np.zeros(3)))),
    "npz": (FileKind.NPZ, _npz),
    "pickle": (FileKind.PICKLE, _pickle),
    "binary": (FileKind.OTHER, _bytes(bytes(range(256)))),
}


@dataclass(frozen=True)
class Target:
    """A generated output target: how to make it, and whether the guard must refuse it."""

    kind: str  # special | run | existing | name
    detail: str
    name: str = ""  # for 'name': the file name (and 'nested': its missing folders)
    nested: bool = False
    slash: bool = False


NAME_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00")


@st.composite
def targets(draw) -> Target:
    kind = draw(st.sampled_from(["special", "run", "existing", "name", "name"]))
    if kind == "special":
        return Target(kind, draw(st.sampled_from(SPECIALS)))
    if kind == "run":
        return Target(kind, draw(st.sampled_from(RUN_FILES)))
    if kind == "existing":
        return Target(kind, draw(st.sampled_from(sorted(EXISTING))))
    style = draw(st.sampled_from(["plain", "unicode", "spaces", "long"]))
    if style == "long":
        name = draw(st.sampled_from("abé")) * draw(st.integers(200, 300))
    elif style == "unicode":
        name = draw(st.text(NAME_CHARS, min_size=1, max_size=30))
    elif style == "spaces":
        name = draw(st.sampled_from(["a b", " lead", "trail ", "new\nline", "tab\there", "semi;colon 'q'"]))
    else:
        name = draw(st.from_regex(r"[A-Za-z0-9_.-]{1,20}", fullmatch=True))
    if name in (".", ".."):
        name = "dot" + name
    return Target(kind, style, name=name, nested=draw(st.booleans()), slash=draw(st.integers(0, 5)) == 0)


def _special(scratch: str, what: str) -> str:
    path = os.path.join(scratch, what)
    if what in ("fifo", "link-to-fifo"):
        os.mkfifo(os.path.join(scratch, "the-fifo"))
    elif what == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(path)
        sock.close()
    elif what in ("folder", "link-to-folder"):
        os.mkdir(os.path.join(scratch, "the-folder"))
    elif what in ("chardev", "link-to-chardev"):
        if os.geteuid() == 0:  # our own node of /dev/null's numbers; a FIFO stands in otherwise
            os.mknod(os.path.join(scratch, "the-dev"), stat.S_IFCHR | 0o666, os.makedev(1, 3))
        else:
            os.mkfifo(os.path.join(scratch, "the-dev"))
    real = {"fifo": "the-fifo", "folder": "the-folder", "chardev": "the-dev"}
    if what in real:
        return os.path.join(scratch, real[what])
    if what.startswith("link-to-") or what == "dangling-link":
        os.symlink({"link-to-fifo": "the-fifo", "link-to-folder": "the-folder", "link-to-chardev": "the-dev",
                    "dangling-link": "nowhere"}[what], path)
    return path


def place(target: Target, env: Env, scratch: str, suffix: str) -> tuple[str, bool]:
    """(the output path, whether the guard must refuse it); creates what lies there."""
    if target.kind == "special":
        return _special(scratch, target.detail), True
    if target.kind == "run":
        return os.path.join(env.run, target.detail), True
    if target.kind == "existing":
        path = os.path.join(scratch, "existing" + suffix)  # the kind is in the bytes, not the name
        kind, make = EXISTING[target.detail]
        make(path)
        return path, kind is not None and kind is not _written_kind(suffix)
    name = target.name + suffix
    folder = os.path.join(scratch, "new", "deeper") if target.nested else scratch
    path = os.path.join(folder, name) + ("/" if target.slash else "")
    sidecar = os.path.splitext(name)[0] + ".json" if suffix == ".pt" else name
    too_long = max(len(os.fsencode(name)), len(os.fsencode(sidecar))) > NAME_MAX
    return path, too_long or target.slash


def _written_kind(suffix: str) -> FileKind:
    return FileKind.TORCH if suffix == ".pt" else FileKind.JSON


def _type(path: str) -> Optional[int]:
    try:
        return stat.S_IFMT(os.lstat(path).st_mode)
    except OSError:
        return None


COMMANDS = {  # name -> (argv given the env and the output, the option a refusal names, the suffix added)
    "knn": (lambda env, out: ["knn", "--train", env.embeddings("train"), "--test", env.embeddings("test"), "--k", "5",
                              "--no-progress", "--json", out], "--json", ".json"),
    "inspect": (lambda env, out: ["inspect", env.ckpt, "--json", out], "--json", ".json"),
    "export": (lambda env, out: ["export", env.ckpt, out], "export OUT", ".pt"),
}


@dataclass(frozen=True)
class Env:
    """A real run folder (an untrained network saved by pretrain) and two small embeddings files."""

    root: str

    @property
    def run(self) -> str:
        return os.path.join(self.root, "run")

    @property
    def ckpt(self) -> str:
        return os.path.join(self.run, "checkpoints", "last.pt")

    def embeddings(self, split: str) -> str:
        return os.path.join(self.root, "emb", f"{split}.safetensors")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from ssl_bf.cli import main
    from ssl_bf.eval.formats import save_embeddings

    made = Env(str(tmp_path_factory.mktemp("fuzz_outputs")))
    assert main(["pretrain", "--config", TINY, f"run.dir={made.run}", "train.epochs=0", "data.subset=256"]) == 0
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        save_embeddings(made.embeddings(split), rng.normal(size=(60, 8)), rng.integers(0, 3, 60))
    return made


def _check(command: str, target: Target, env: Env) -> None:
    argv_of, option, suffix = COMMANDS[command]
    scratch = tempfile.mkdtemp(dir=env.root, prefix="scratch-")
    try:
        out, refused = place(target, env, scratch, suffix)
        watched = [*watched_files(env.run), *watched_files(os.path.join(env.root, "emb")), *watched_files(scratch)]
        before, types = snapshot(watched), {p: _type(p) for p in [out, *watched]}
        code, output = run_cli(argv_of(env, out))
        count("outputs", 1)
        own = {out, os.path.splitext(out)[0] + ".json"} if command == "export" else {out}
        check_contract(code, output, names=(option,),
                       before=before if code else {p: d for p, d in before.items() if p not in own})
        assert code == (2 if refused else 0), (target, out, output[-2000:])
        if code:
            assert all(_type(p) == t for p, t in types.items()), "a refused target changed type"
            assert not os.path.exists(os.path.join(scratch, "new")), "a refusal created folders"
        else:
            assert stat.S_ISREG(os.lstat(out).st_mode) and file_kind(out) is _written_kind(suffix)
        leftovers = [n for _, _, files in os.walk(scratch) for n in files if n.startswith(".ssl-bf-")]
        assert not leftovers, leftovers  # no temp file left behind
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@settings(max_examples=fuzz_examples(60))
@given(target=targets())
def test_knn_json_targets(env, target):
    _check("knn", target, env)


@settings(max_examples=fuzz_examples(30))
@given(target=targets())
def test_inspect_json_targets(env, target):
    _check("inspect", target, env)


@settings(max_examples=fuzz_examples(40))
@given(target=targets())
def test_export_targets(env, target):
    _check("export", target, env)
