"""One run per output folder: an OS lock on `<output.dir>/.paravideo.lock`, held for the whole run.

`flock` rather than a pid file: the kernel drops the lock when the holding process ends, however it
ends (a crash, SIGKILL), so a stale lock never blocks the next run. The file holds who has it
(pid, host, since when) for the message a refused run prints; it stays in the folder, empty when
nobody holds it (removing it would let a run lock a file another run has just unlinked).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from paravideo.errors import ConfigError

LOCK_NAME = ".paravideo.lock"


class OutputLock:
    """The held lock of one output folder; `release()` (or leaving the `with` block) gives it up."""

    def __init__(self, path: Path, fd: int | None):
        self.path, self._fd = path, fd

    @classmethod
    def acquire(cls, out_dir: str | Path) -> OutputLock:
        """Lock `out_dir` (which exists) or raise ConfigError naming the run that holds it."""
        path = Path(out_dir) / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise ConfigError(f"output.dir {str(out_dir)!r}: cannot create the lock file {LOCK_NAME} "
                              f"({err.strerror}); make the folder writable or choose another output.dir") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_holder(fd)
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ConfigError(f"output.dir {str(out_dir)!r} is in use by another paravideo run ({holder}); "
                                  "wait for it to end or stop it, or choose another output.dir") from None
            # A file system without locks (some network mounts): run unprotected rather than not at all.
            print(f"paravideo: warning: cannot lock output.dir {str(out_dir)!r} ({err.strerror}); nothing stops "
                  "a second run from writing there at the same time", file=sys.stderr, flush=True)
            return cls(path, None)
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        except OSError:
            pass  # a full disk: the lock holds all the same, only its description is missing
        return cls(path, fd)

    def release(self) -> None:
        """Give the lock up (idempotent); the file stays, emptied."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    """The holder as `pid P on HOST since TIME`, from the lock file's contents."""
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {data['pid']} on {data['host']}, running since {data['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has just started"
