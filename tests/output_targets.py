"""Setups of the bad-output cases (tests/bad_cases_*.py, the output-guard blocks): special files,
files of another kind and names the file system refuses, made in a case's scratch folder.

Each `make_*(relpath)` returns a setup `(env, tmp) -> None` that creates `tmp/relpath` (and its
folders). `chardev` is a character device with /dev/null's numbers when the tests run as root
(as `--json /dev/null` would be), a FIFO otherwise.
"""
from __future__ import annotations

import os
import socket
import stat
from typing import Callable

LONG_NAME = "n" * 300 + ".json"  # longer than any file system's NAME_MAX (255 bytes)
Setup = Callable[[object, str], None]


def _at(tmp: str, relpath: str) -> str:
    path = os.path.join(tmp, relpath)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def make_fifo(relpath: str) -> Setup:
    return lambda env, tmp: os.mkfifo(_at(tmp, relpath))


def make_socket(relpath: str) -> Setup:
    def setup(env, tmp):
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(_at(tmp, relpath))
        sock.close()  # the socket file stays
    return setup


def make_chardev(relpath: str) -> Setup:
    def setup(env, tmp):
        path = _at(tmp, relpath)
        if os.geteuid() == 0:
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        else:
            os.mkfifo(path)
    return setup


def make_link(relpath: str, to: str) -> Setup:
    return lambda env, tmp: os.symlink(to, _at(tmp, relpath))


def make_bytes(relpath: str, data: bytes) -> Setup:
    def setup(env, tmp):
        with open(_at(tmp, relpath), "wb") as f:
            f.write(data)
    return setup


def copy_of(key: str, relpath: str) -> Setup:
    """A copy of one of the env's files (`key` of Env.paths: train, test, ckpt, config)."""
    def setup(env, tmp):
        with open(env.paths(tmp)[key], "rb") as src, open(_at(tmp, relpath), "wb") as dst:
            dst.write(src.read())
    return setup


def both(*setups: Setup) -> Setup:
    def setup(env, tmp):
        for s in setups:
            s(env, tmp)
    return setup


PNG = b"\x89PNG\r\n\x1a\n" + bytes(32)
JSON = b'{"mine": [1, 2, 3]}\n'
