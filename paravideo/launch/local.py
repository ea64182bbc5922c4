"""The local launcher: N worker processes on this machine (127.0.0.1, a free port), supervised."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import time
import traceback
from multiprocessing.connection import wait as wait_any
from pathlib import Path

from paravideo.config import RunConfig
from paravideo.errors import RankFailure
from paravideo.io.sink import INCOMPLETE_NAME, PARTIAL_NAME
from paravideo.report.run_report import RunReport, mark_failed

TEARDOWN_GRACE_S = 10.0
# Errors a rank raises because another rank went away first; they never name the root cause.
SECONDARY = ("Terminated", "CommTimeout", "Connection closed", "Connection reset", "pair closure",
             "KeyboardInterrupt")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(config: RunConfig, rank: int, world: int, port: int, conn) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from paravideo.launch.torchrun import run_torchrun_rank
    from paravideo.worker import describe_failure

    try:
        report = run_torchrun_rank(config)
        conn.send(("ok", rank, report.to_json() if report else None))
    except BaseException as err:  # noqa: BLE001 - reported to the supervisor
        conn.send(("error", rank, describe_failure(err), traceback.format_exc()))
        raise SystemExit(1) from None
    finally:
        conn.close()


def _root_cause(errors: list[tuple[int, str, str]], exits: dict[int, int]) -> tuple[int, str]:
    primary = [e for e in errors if not any(mark in e[1] for mark in SECONDARY)]
    if primary:
        return primary[0][0], primary[0][1]
    silent = [r for r, code in exits.items() if code not in (0, None) and r not in {e[0] for e in errors}]
    if silent:
        code = exits[silent[0]]
        how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        return silent[0], f"the process {how} without reporting an error"
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
        _teardown(procs)
        for reader in pipes:
            while reader[0].poll():
                try:
                    messages.append(reader[0].recv())
                except EOFError:
                    break
    errors = [(m[1], m[2], m[3]) for m in messages if m[0] == "error"]
    exits = {r: p.exitcode for r, p in enumerate(procs)}
    if failed or errors:
        rank, cause = _root_cause(errors, exits)
        out_dir = Path(config.output.dir)
        finalize_orphan_video(out_dir)
        mark_failed(out_dir, f"rank {rank}: {cause}")
        raise RankFailure(rank, cause)
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
