"""Supervision shared by the launchers that start workers: run a rank, pick the root cause, clean up."""

from __future__ import annotations

import os
import socket
import time
import traceback
from pathlib import Path
from typing import Callable

from paravideo.config import RunConfig
from paravideo.errors import RankFailure
from paravideo.io.sink import INCOMPLETE_NAME, PARTIAL_NAME
from paravideo.launch.stop import raise_on_stop_signals
from paravideo.telemetry.run_report import mark_failed

TEARDOWN_GRACE_S = 10.0
# After a rank reports an error that is only a consequence (SECONDARY), the launcher waits this long for
# the rank that caused it to report, before stopping the rest.
REPORT_GRACE_S = 3.0
# Errors a rank raises because another rank went away first, or because it was stopped; they never
# name the root cause.
SECONDARY = ("interrupted by SIG", "lost the connection to rank", "Connection closed", "Connection reset",
             "pair closure", "KeyboardInterrupt")
Deliver = Callable[[tuple], None]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def run_rank_message(config: RunConfig, *, rank: int, world: int, local_rank: int, addr: str, port: int,
                     deliver: Deliver | None = None) -> tuple[tuple, BaseException | None]:
    """Join the group as `rank` through torchrun-style env vars and run it; never raises.

    Returns the supervisor message, ("ok", rank, report-json-or-None) or ("error", rank, cause,
    traceback text), and the failure itself. The message describes the *first* failure, made when it
    was raised and before this rank left the group: leaving is what the other ranks notice, and
    a stop signal during that teardown must not replace the cause. With `deliver`, the message is
    also handed over at that moment, so it reaches the launcher before any peer's consequent error.
    Keep the failure referenced until the message is delivered: freeing a failed rank's objects can
    block on communication that never completes.
    """
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local_rank),
                      MASTER_ADDR=addr, MASTER_PORT=str(port))
    from paravideo.launch.torchrun import run_torchrun_rank
    from paravideo.runtime.worker import Terminated, describe_failure

    first: list[tuple] = []

    def on_failure(err: BaseException) -> None:
        if not first:
            first.append(("error", rank, describe_failure(err), traceback.format_exc()))
            if deliver is not None:
                deliver(first[0])

    # The whole life of the rank, leaving the group included, turns stop signals into Terminated.
    with raise_on_stop_signals(Terminated):
        try:
            report = run_torchrun_rank(config, on_failure=on_failure)
            message = ("ok", rank, report.to_json() if report else None)
            if deliver is not None:
                deliver(message)
            return message, None
        except BaseException as err:  # noqa: BLE001 - reported to the supervisor
            on_failure(err)
            return first[0], err


def is_secondary(cause: str) -> bool:
    """Whether a rank's error is only a consequence of another rank's loss, or of a stop."""
    return any(mark in cause for mark in SECONDARY)


def describe_exit(code: int) -> str:
    """How a process with this exit code ended (negative: killed by that signal)."""
    return f"the process was killed by signal {-code}" if code < 0 else f"the process exited with code {code}"


def root_cause(errors: list[tuple[int, str, str]], silent: dict[int, str]) -> tuple[int, str]:
    """(rank, cause) of a failed run.

    `errors` are (rank, cause, traceback) reported by ranks, in arrival order; `silent` maps ranks that
    ended without reporting to how they ended ("the process ..."), most telling first. A reported error
    that is not a consequence of another rank's loss wins, then a silent death, then the first report.
    """
    primary = [e for e in errors if not is_secondary(e[1])]
    if primary:
        return primary[0][0], primary[0][1]
    reported = {e[0] for e in errors}
    unreported = [r for r in silent if r not in reported]
    if unreported:
        return unreported[0], f"{silent[unreported[0]]}, without reporting an error"
    return errors[0][0], errors[0][1]


def finalize_orphan_video(out_dir: Path) -> None:
    """If rank 0 died before closing the mp4, its ffmpeg finalises on EOF: give the file its failed name."""
    partial = out_dir / PARTIAL_NAME
    for _ in range(50):
        if not partial.exists():
            return
        time.sleep(0.1)
        try:
            os.replace(partial, out_dir / INCOMPLETE_NAME)
            return
        except OSError:
            continue


def record_failure(out_dir: str | Path, rank: int, cause: str) -> None:
    """On the machine holding the output: finalise an orphaned mp4 and mark run.json failed."""
    out_dir = Path(out_dir)
    finalize_orphan_video(out_dir)
    mark_failed(out_dir, f"rank {rank}: {cause}")


def fail_run(out_dir: str | Path, errors: list[tuple[int, str, str]], silent: dict[int, str], *,
             teardown_s: float | None = None) -> RankFailure:
    """Record the root cause in the output folder here; return the RankFailure to raise."""
    rank, cause = root_cause(errors, silent)
    record_failure(out_dir, rank, cause)
    return RankFailure(rank, cause, teardown_s=teardown_s)


def record_interrupt(out_dir: str | Path, cause: str) -> None:
    """After the ranks of an interrupted job ended: finalise an orphaned mp4, record `cause` ("interrupted
    by SIGTERM") in run.json."""
    out_dir = Path(out_dir)
    if out_dir.is_dir():
        finalize_orphan_video(out_dir)
        mark_failed(out_dir, cause)
