"""One trainer per run folder: an OS lock on RUN/.lock, held for the whole run.

`fcntl.flock` locks belong to the open file, so the kernel drops them when the process ends in any
way (exit, exception, SIGKILL, node reboot): a killed run never leaves a stale lock, and a requeued
SLURM job takes it as soon as the old attempt's processes are gone. The lock file stays; while
held it names the holder (pid, host, start time) so a refused second process can say who it is,
and it is emptied on a clean release.

Forked children (DataLoader workers) inherit the descriptor, which would keep the lock alive
after the parent died until they notice; they close their copy at fork (closing a copy never
unlocks: only the last close of the open file, or an explicit LOCK_UN, does).
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import time
from typing import Optional

LOCK_NAME = ".lock"
_HELD: set[int] = set()  # descriptors of the locks this process holds


def _close_inherited_locks() -> None:
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


class RunLockError(RuntimeError):
    """The run folder is locked by another process (or the lock file cannot be made)."""


def lock_path(run_dir: str) -> str:
    return os.path.join(run_dir, LOCK_NAME)


def _holder_text(path: str) -> str:
    """Who holds the lock, from the lock file ('' when it says nothing readable)."""
    try:
        with open(path) as f:
            info = json.loads(f.read() or "{}")
    except (OSError, ValueError):
        return ""
    if not isinstance(info, dict) or "pid" not in info:
        return ""
    where = f" on {info['host']}" if info.get("host") else ""
    since = f", since {info['started']}" if info.get("started") else ""
    return f"PID {info['pid']}{where}{since}"


class RunLock:
    """`acquire()` takes RUN/.lock (or raises RunLockError naming the holder); `release()` drops it."""

    def __init__(self, run_dir: str, label: str = "run.dir", owner: str = "`ssl-bf pretrain`"):
        self.run_dir = run_dir
        self.path = lock_path(run_dir)
        self.fd: Optional[int] = None
        self.label = label  # how messages name the folder (the option that gave it)
        self.owner = owner  # what may run there, one at a time

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self, wait_s: float = 0.0) -> "RunLock":
        """Take the lock, waiting up to `wait_s` seconds for another holder to go away."""
        if self.fd is not None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise RunLockError(f"{self.label} {self.run_dir}: cannot create the lock file {self.path} "
                               f"({e.strerror or e}); choose a writable {self.label}") from None
        deadline = time.monotonic() + max(0.0, wait_s)
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    holder = _holder_text(self.path) or "another process"
                    waited = f" (waited {wait_s:.0f} s)" if wait_s > 0 else ""
                    raise RunLockError(
                        f"{self.label} {self.run_dir} is in use: {holder} holds {self.path}{waited}. Only one "
                        f"{self.owner} may run in a folder: wait for that one to end (or stop it), "
                        f"or give this run another {self.label}") from None
                if not told:
                    print(f"ssl-bf: waiting up to {wait_s:.0f} s for {self.path} "
                          f"({_holder_text(self.path) or 'another process'} holds it)", file=sys.stderr, flush=True)
                    told = True
                time.sleep(0.5)
            except OSError as e:
                if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    os.close(fd)  # a file system without flock: run unguarded rather than not at all
                    print(f"ssl-bf: warning: {self.path}: this file system does not support locks "
                          f"({e.strerror}); nothing stops a second process from using this run.dir",
                          file=sys.stderr, flush=True)
                    return self
                os.close(fd)
                raise RunLockError(f"{self.label} {self.run_dir}: cannot lock {self.path} ({e.strerror or e})") from None
        self.fd = fd
        _HELD.add(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "slurm_job_id": os.environ.get("SLURM_JOB_ID")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except OSError:
            pass  # the lock holds without the note
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        _HELD.discard(fd)
        try:
            os.ftruncate(fd, 0)  # the holder's note goes with it
        except OSError:
            pass
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def claim_on_main(lock: RunLock, device, wait_s: float = 0.0) -> None:
    """Rank 0 creates the lock's folder and takes the lock; under a process group every rank learns
    the outcome, so a refused rank 0 never leaves the others waiting in a collective. Raises
    RunLockError (on every rank) when the folder cannot be made or is held by another process."""
    import torch

    from .. import distributed as dist_utils

    problem = ""
    if dist_utils.is_main():
        try:
            os.makedirs(lock.run_dir, exist_ok=True)
            lock.acquire(wait_s=wait_s)
        except RunLockError as e:
            problem = str(e)
        except OSError as e:
            problem = (f"{lock.label} {lock.run_dir}: cannot create the folder ({e.strerror or e}); choose "
                       f"another {lock.label}")
    if dist_utils.is_initialized():
        flag = torch.tensor([1.0 if problem else 0.0], device=device)
        dist_utils.broadcast_(flag, src=0)
        if flag.item() and not problem:
            problem = f"rank 0 could not take the run folder {lock.run_dir} (its message says why)"
    if problem:
        raise RunLockError(problem)
