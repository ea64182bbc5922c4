"""A local run listens on loopback only: the rendezvous store and gloo's pair sockets of every rank."""

from __future__ import annotations

import os
import threading

import pytest
from procfs import is_loopback, listening, needs_proc, ranks_of

from paravideo.generate import generate

pytestmark = [pytest.mark.slow, needs_proc]


def test_local_run_listens_on_loopback_only(make_config):
    seen: dict[int, set] = {}
    done = threading.Event()

    def watch() -> None:  # every listening socket of every rank, for the whole run
        while not done.is_set():
            for proc in ranks_of(os.getpid()):
                try:
                    seen.setdefault(proc.pid, set()).update(listening(proc.pid))
                except OSError:
                    pass  # the rank just ended
            done.wait(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        generate(make_config(parallel={"pipeline": 2}, launch={"launcher": "local", "nproc": 2}))
    finally:
        done.set()
        watcher.join()
    # Both ranks were seen listening (rank 0 hosts the store; each rank has gloo's listener) ...
    assert len([pid for pid, found in seen.items() if found]) == 2, seen
    # ... and never beyond loopback.
    exposed = {pid: sorted(s for s in found if not is_loopback(s[0])) for pid, found in seen.items()}
    assert not any(exposed.values()), f"listening beyond loopback: {exposed}"
