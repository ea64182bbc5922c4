"""The local launcher: N worker processes on this machine (127.0.0.1, a free port), supervised."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from multiprocessing.connection import wait as wait_any

from paravideo.config import RunConfig
from paravideo.launch.supervise import TEARDOWN_GRACE_S, describe_exit, fail_run, free_port, run_rank_message
from paravideo.report.run_report import RunReport


def _entry(config: RunConfig, rank: int, world: int, port: int, conn) -> None:
    try:
        message, failure = run_rank_message(config, rank=rank, world=world, local_rank=rank, addr="127.0.0.1",
                                             port=port)
        conn.send(message)
    finally:
        conn.close()
    if failure is not None:
        raise SystemExit(1) from failure  # the process exits without freeing the failed run's objects


def launch_local(config: RunConfig) -> RunReport:
    """Spawn launch.nproc ranks; if any fails, stop the rest and raise RankFailure naming it."""
    world = config.launch.nproc
    ctx = mp.get_context("spawn")
    port = free_port()
    os.environ.setdefault("OMP_NUM_THREADS", str(config.launch.threads_per_rank))
    pipes = [ctx.Pipe(duplex=False) for _ in range(world)]
    procs = [ctx.Process(target=_entry, args=(config, rank, world, port, pipes[rank][1]),
                         name=f"paravideo-rank{rank}") for rank in range(world)]
    for proc, (_, writer) in zip(procs, pipes):
        proc.start()
        writer.close()  # the child holds the only writer, so EOF means it is gone
    messages: list[tuple] = []
    failed = False
    try:
        # Read results as they come (a child cannot exit while its message sits unread in a full pipe).
        readers = {pipes[r][0]: r for r in range(world)}
        alive = {p.sentinel: r for r, p in enumerate(procs)}
        while (alive or readers) and not failed:
            for ready in wait_any(list(alive) + list(readers)):
                if ready in readers:
                    try:
                        messages.append(ready.recv())
                    except EOFError:
                        del readers[ready]
                        continue
                    failed = failed or messages[-1][0] == "error"
                else:
                    rank = alive.pop(ready)
                    procs[rank].join()
                    failed = failed or procs[rank].exitcode != 0
    finally:
        noticed = time.monotonic()
        _teardown(procs)
        teardown_s = time.monotonic() - noticed
        for reader in pipes:
            while reader[0].poll():
                try:
                    messages.append(reader[0].recv())
                except EOFError:
                    break
    errors = [(m[1], m[2], m[3]) for m in messages if m[0] == "error"]
    silent = {r: describe_exit(p.exitcode) for r, p in enumerate(procs) if p.exitcode not in (0, None)}
    if failed or errors:
        raise fail_run(config.output.dir, errors, silent, teardown_s=teardown_s)
    report = next(m[2] for m in messages if m[0] == "ok" and m[1] == 0)
    return RunReport(**report)


def _teardown(procs: list) -> None:
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + TEARDOWN_GRACE_S
    for proc in procs:
        proc.join(timeout=max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()
