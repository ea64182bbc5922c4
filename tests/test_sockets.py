"""A local run listens on loopback only: the rendezvous store and gloo's pair sockets of every rank."""

from __future__ import annotations

import signal

import pytest
from procfs import (LONG_RUN, TWO_RANKS, is_loopback, kill_leftovers, listening, needs_proc, ranks_of,
                    start_generate, wait_for_frames, wait_until, write_config)

pytestmark = [pytest.mark.slow, needs_proc]


def test_local_run_listens_on_loopback_only(tmp_path):
    config, out = write_config(tmp_path, LONG_RUN, TWO_RANKS)
    cli = start_generate(config, tmp_path)
    ranks = []
    try:
        wait_for_frames(out)  # the group is up and talking
        ranks = wait_until(lambda: ranks_of(cli.pid) if len(ranks_of(cli.pid)) == 2 else None, 30, "two ranks")
        sockets = {proc.pid: listening(proc.pid) for proc in [*ranks]}
        sockets[cli.pid] = listening(cli.pid)
    finally:
        cli.send_signal(signal.SIGTERM)
        cli.wait(timeout=90)
        kill_leftovers(ranks)
    # Rank 0 hosts the store; every rank has gloo's listener.
    assert all(sockets[proc.pid] for proc in ranks), sockets
    exposed = {pid: [s for s in found if not is_loopback(s[0])] for pid, found in sockets.items()}
    assert not any(exposed.values()), f"listening beyond loopback: {exposed}"

