"""Stop signals: SIGINT, SIGTERM and SIGHUP end a job the same way, and ranks die with their launcher."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

# Schedulers stop jobs with SIGTERM (Slurm, Kubernetes, `timeout`), a closed terminal sends SIGHUP.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCH_S = 0.5  # how often a rank checks that its launcher still runs (where no parent-death signal exists)


def signal_name(signum: int) -> str:
    """SIGTERM for 15, and so on."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Interrupted(BaseException):
    """A stop signal reached this process: the job ends as on Ctrl-C, its output finalised, not as a crash.

    A BaseException, like KeyboardInterrupt, so `except Exception` cleanup code does not swallow it.
    """

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal_name(signum)}")
        self.signum = signum

    def __reduce__(self):
        return type(self), (self.signum,)

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by this signal (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def raise_on_stop_signals(exc: type[Interrupted] = Interrupted) -> Iterator[None]:
    """Inside, the first stop signal raises `exc` in the main thread; later ones are ignored (the
    cleanup the first one starts is bounded, and a second exception would cut it short).

    A signal this process ignores stays ignored (a rank of the local launcher ignores SIGINT: the
    launcher stops it). Outside the main thread, where Python cannot set handlers, nothing changes.
    """
    if not _in_main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum, frame):
        if not fired:
            fired.append(signum)
            raise exc(signum)

    previous = {}
    for sig in STOP_SIGNALS:
        current = signal.getsignal(sig)
        if current is not signal.SIG_IGN:
            previous[sig] = current
            signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def deferred_stop_signals() -> Iterator[list[int]]:
    """Inside, stop signals are held (in the list this yields); on leaving, the first one still held goes
    to the handler that was in place. A caller that polls may take a held signal out of the list itself.

    For steps that must not be cut in half (a teardown, a message written to the launcher's pipe), and
    for calls into native code that cannot pass on an exception raised by a handler (Ray's wait).
    (Blocking the signal with pthread_sigmask would not do: another thread could take it.)
    """
    held: list[int] = []
    if not _in_main_thread():
        yield held
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig, old in previous.items():
        if old is not signal.SIG_IGN:
            signal.signal(sig, lambda signum, frame: held.append(signum))
    try:
        yield held
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        if held and callable(previous[held[0]]):
            previous[held[0]](held[0], None)
        elif held and previous[held[0]] is signal.SIG_DFL:
            os.kill(os.getpid(), held[0])


def raise_held(held: list[int]) -> None:
    """Raise Interrupted for the first signal `deferred_stop_signals` held, taking them all out."""
    if held:
        signum = held[0]
        held.clear()
        raise Interrupted(signum)


@contextmanager
def keep_stop_handlers() -> Iterator[None]:
    """Put back, on leaving, the Python stop-signal handlers in place on entering.

    For calls that install their own (ray.init: a SIGTERM handler that exits at once, then Ray's
    native one that aborts with a stack dump), so a stop still ends the job cleanly.
    """
    if not _in_main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            if callable(old) and signal.getsignal(sig) is not old:
                signal.signal(sig, old)


def die_with_launcher(launcher_pid: int, *, grace_s: float, signum: int = signal.SIGTERM) -> None:
    """Make this rank get `signum` as soon as its launcher process ends, however it ends (SIGKILL too),
    and end it outright `grace_s` later.

    Linux delivers a parent-death signal at once (prctl PR_SET_PDEATHSIG); everywhere a watch thread
    also notices the parent pid change within WATCH_S, and enforces the grace: a rank stopped this
    way finalises its output, and must not run on when finalising hangs.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watch thread below still covers it

    def watch() -> None:
        while os.getppid() == launcher_pid:
            time.sleep(WATCH_S)
        os.kill(os.getpid(), signum)
        time.sleep(grace_s)
        os.kill(os.getpid(), signal.SIGKILL)

    # The launcher may have died before the parent-death signal was armed: the watch sees that too.
    threading.Thread(target=watch, daemon=True, name="launcher-watch").start()


def launcher_gone(launcher_pid: int) -> bool:
    """True once this process's launcher has ended (the process was re-parented)."""
    return os.getppid() != launcher_pid
