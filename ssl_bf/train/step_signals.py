"""Keep preemption handlers (SIGUSR2/SIGTERM) out of the middle of a training step, and turn
Ctrl-C / SIGTERM outside SLURM into a stop at a step boundary (`StopSignals`).

A signal may be delivered to any thread (OpenMP, gloo, tqdm), and Python then runs the
handler in the main thread between two bytecodes, possibly halfway through an optimiser
update. Blocking signals in the main thread does not help for that reason. Instead the Python
handlers are wrapped: during a step they only record the signal, and the original handler runs
when the step ends, so a checkpoint written by it always holds a consistent state.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Callable, Iterator, Optional

DEFERRED = (signal.SIGUSR2, signal.SIGTERM)


class StepSignalGuard:
    """Wraps the current Python handlers of `signals`; `with guard.step():` defers them."""

    def __init__(self, signals: tuple[int, ...] = DEFERRED):
        self.signals = signals
        self.originals: dict[int, Callable] = {}
        self.pending: list[tuple[int, Optional[FrameType]]] = []
        self.in_step = False

    def install(self) -> "StepSignalGuard":
        if threading.current_thread() is not threading.main_thread():
            return self  # handlers can only be set from the main thread
        for sig in self.signals:
            handler = signal.getsignal(sig)
            if callable(handler):  # leave SIG_DFL / SIG_IGN alone
                self.originals[sig] = handler
                signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self.originals.items():
            if signal.getsignal(sig) == self._handle:  # bound methods: equal, never identical
                signal.signal(sig, handler)
        self.originals.clear()

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.in_step:
            self.pending.append((signum, frame))
        else:
            self.originals[signum](signum, frame)

    @contextmanager
    def step(self) -> Iterator[None]:
        """Defer the handlers to the end of the block; if the block raises, they never run
        (a checkpoint of a half-done step would be worse than none)."""
        self.in_step = True
        try:
            yield
        except BaseException:
            self.in_step = False
            self.pending.clear()
            raise
        self.in_step = False
        while self.pending:
            signum, frame = self.pending.pop(0)
            self.originals[signum](signum, frame)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Ctrl-C (SIGINT) and SIGTERM outside SLURM: a request to stop at the next step boundary.

    The first signal only records itself (`requested`); the trainer checks it between steps, saves a
    checkpoint and stops (exit 130 / 143 with one line). A second signal stops at once, without a
    checkpoint: SIGINT raises KeyboardInterrupt, SIGTERM gets its default action.

    Installed only over the interpreter's defaults (Python's KeyboardInterrupt for SIGINT, SIG_DFL
    for SIGTERM) and only outside a SLURM job: inside one, submitit (or the batch script) owns the
    signals and the preemption path (SIGUSR2 -> checkpoint -> requeue) stays as it is; an ignored
    signal (nohup) stays ignored.
    """

    def __init__(self) -> None:
        self.requested: Optional[int] = None
        self.previous: dict[int, Callable | int] = {}

    def install(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread() or os.environ.get("SLURM_JOB_ID"):
            return self
        for sig in STOP_SIGNALS:
            current = signal.getsignal(sig)
            default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
            if current is default:
                self.previous[sig] = current
                signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self.previous.items():
            if signal.getsignal(sig) == self._handle:  # bound methods: equal, never identical
                signal.signal(sig, handler)
        self.previous.clear()

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.requested is None:
            self.requested = signum
            return
        self.uninstall()  # the second one: stop now
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        os.kill(os.getpid(), signum)
