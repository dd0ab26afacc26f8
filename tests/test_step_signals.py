"""Preemption handlers never run in the middle of a training step."""
import os
import signal
import threading
import time

from ssl_bf.train.step_signals import StepSignalGuard


def _spin(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # run bytecode so Python checks for pending signals
        sum(range(1000))


def test_signal_from_another_thread_is_deferred_to_the_step_end():
    calls = []
    old = signal.signal(signal.SIGUSR2, lambda s, f: calls.append(time.monotonic()))
    guard = StepSignalGuard((signal.SIGUSR2,)).install()
    try:
        with guard.step():
            # delivered from another thread, as OpenMP/gloo threads receive it in a real job
            t = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGUSR2))
            t.start()
            t.join()
            _spin(0.3)
            assert calls == [], "the handler ran inside the step"
            step_end = time.monotonic()
        assert len(calls) == 1 and calls[0] >= step_end
        os.kill(os.getpid(), signal.SIGUSR2)  # between steps: runs at once
        _spin(0.1)
        assert len(calls) == 2
    finally:
        guard.uninstall()
        signal.signal(signal.SIGUSR2, old)
    assert signal.getsignal(signal.SIGUSR2) is old


def test_default_handlers_are_left_alone():
    old = signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    try:
        guard = StepSignalGuard((signal.SIGUSR2,)).install()
        assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL and not guard.originals
    finally:
        signal.signal(signal.SIGUSR2, old)


def test_uninstall_puts_the_original_handler_back():
    """A guard left installed after a run would wrap the next run's handlers with an emptied table
    (a KeyError in the SLURM handler of the second job of a chain)."""
    def handler(s, f):
        return None
    old = signal.signal(signal.SIGUSR2, handler)
    try:
        guard = StepSignalGuard((signal.SIGUSR2,)).install()
        assert signal.getsignal(signal.SIGUSR2) is not handler
        guard.uninstall()
        assert signal.getsignal(signal.SIGUSR2) is handler
    finally:
        signal.signal(signal.SIGUSR2, old)
