"""The local launcher: N worker processes on this machine (127.0.0.1, a free port), supervised.

The ranks live only as long as this launcher: they get SIGTERM when it ends, however it ends
(SIGKILL included), and a stop signal to the launcher stops them the way Ctrl-C does.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import wait as wait_any

from paravideo.config import RunConfig
from paravideo.launch.stop import Interrupted, deferred_stop_signals, die_with_launcher, launcher_gone
from paravideo.launch.supervise import (REPORT_GRACE_S, TEARDOWN_GRACE_S, describe_exit, fail_run, free_port,
                                        is_secondary, record_interrupt, run_rank_message)
from paravideo.telemetry.run_report import RunReport, mark_failed

LOOPBACK = "127.0.0.1"


def _entry(config: RunConfig, rank: int, world: int, port: int, conn, launcher_pid: int) -> None:
    # Ctrl-C in a terminal reaches every process of the foreground group at once; the launcher stops
    # the ranks itself (SIGTERM), so a rank is never cut at a random point by a second signal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_launcher(launcher_pid, grace_s=TEARDOWN_GRACE_S)
    # Progress bars (ours, the loaders') would lock with a multiprocessing semaphore, which a rank
    # leaving through os._exit never releases (the resource tracker then warns): one process needs
    # only a thread lock.
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())

    def deliver(message: tuple) -> None:
        with deferred_stop_signals():  # a message cut in half would be lost with its cause
            try:
                conn.send(message)
            except OSError:
                pass  # the launcher is gone; rank 0 records that below

    try:
        _, failure = run_rank_message(config, rank=rank, world=world, local_rank=rank, addr=LOOPBACK, port=port,
                                      deliver=deliver)
    finally:
        conn.close()
    if failure is not None:
        if rank == 0 and isinstance(failure, Interrupted) and launcher_gone(launcher_pid):
            mark_failed(config.output.dir, f"stopped: the launcher (pid {launcher_pid}) ended without stopping "
                                           f"the ranks (e.g. it was killed with SIGKILL), so they were {failure}")
        # Leave without the interpreter's teardown: freeing a failed group's objects can block on
        # communication that never completes, or abort on a wait still in flight in a helper thread.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def launch_local(config: RunConfig) -> RunReport:
    """Spawn launch.nproc ranks; if any fails, stop the rest and raise RankFailure naming it.

    A stop signal (Interrupted) stops every rank, records "interrupted by SIG..." in run.json and
    propagates.
    """
    world = config.launch.nproc
    ctx = mp.get_context("spawn")
    port = free_port(LOOPBACK)
    os.environ.setdefault("OMP_NUM_THREADS", str(config.launch.threads_per_rank))
    pipes = [ctx.Pipe(duplex=False) for _ in range(world)]
    procs = [ctx.Process(target=_entry, args=(config, rank, world, port, pipes[rank][1], os.getpid()),
                         name=f"paravideo-rank{rank}") for rank in range(world)]
    messages: list[tuple] = []
    teardown_s = None
    try:
        for proc, (_, writer) in zip(procs, pipes):
            proc.start()
            writer.close()  # the child holds the only writer, so EOF means it is gone
        failed = _supervise(procs, pipes, messages)
    except Interrupted as err:
        with deferred_stop_signals():
            _teardown(procs)
            record_interrupt(config.output.dir, str(err))
        raise
    finally:
        noticed = time.monotonic()
        with deferred_stop_signals():
            _teardown(procs)
        teardown_s = time.monotonic() - noticed
        _drain(pipes, messages)
    errors = [(m[1], m[2], m[3]) for m in messages if m[0] == "error"]
    silent = {r: describe_exit(p.exitcode) for r, p in enumerate(procs) if p.exitcode not in (0, None)}
    if failed or errors:
        raise fail_run(config.output.dir, errors, silent, teardown_s=teardown_s)
    report = next(m[2] for m in messages if m[0] == "ok" and m[1] == 0)
    return RunReport(**report)


def _supervise(procs: list, pipes: list, messages: list) -> bool:
    """Collect messages until every rank ended, or one failed; True if one failed.

    When the first error is only a consequence of another rank's loss, the ranks get REPORT_GRACE_S
    more to report (the one that caused it is usually a moment behind).
    """
    readers = {pipes[r][0]: r for r in range(len(procs))}
    alive = {p.sentinel: r for r, p in enumerate(procs)}
    failed_at = None
    # Read results as they come (a child cannot exit while its message sits unread in a full pipe).
    while alive or readers:
        if failed_at is not None:
            primary = any(m[0] == "error" and not is_secondary(m[2]) for m in messages)
            if primary or time.monotonic() - failed_at > REPORT_GRACE_S:
                break
        timeout = None if failed_at is None else max(0.0, failed_at + REPORT_GRACE_S - time.monotonic())
        for ready in wait_any(list(alive) + list(readers), timeout=timeout):
            if ready in readers:
                try:
                    messages.append(ready.recv())
                except EOFError:
                    del readers[ready]
                    continue
                if messages[-1][0] == "error" and failed_at is None:
                    failed_at = time.monotonic()
            else:
                rank = alive.pop(ready)
                procs[rank].join()
                if procs[rank].exitcode != 0:
                    if not any(m[0] == "error" and m[1] == rank for m in messages):
                        return True  # a silent death is a root cause itself
                    failed_at = failed_at or time.monotonic()
    return failed_at is not None


def _drain(pipes: list, messages: list) -> None:
    for reader, _ in pipes:
        while reader.poll():
            try:
                messages.append(reader.recv())
            except (EOFError, OSError):
                break


def _teardown(procs: list) -> None:
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + TEARDOWN_GRACE_S
    for proc in procs:
        if proc.pid is None:
            continue  # never started
        proc.join(timeout=max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()
