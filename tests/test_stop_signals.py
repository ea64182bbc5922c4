"""A stopped job stops: SIGTERM, SIGHUP and SIGKILL to `paravideo generate` end every rank, and the
first two finalise the partial video and record the signal, as Ctrl-C does (real signals, real processes)."""

from __future__ import annotations

import secrets
import signal
from pathlib import Path

import pytest
from procfs import (LONG_RUN, TWO_RANKS, descendants, kill_leftovers, needs_proc, ranks_of, run_json, running,
                    start_generate, stderr_of, wait_for_frames, wait_until, write_config)

from paravideo.io.sink import read_video

pytestmark = [pytest.mark.slow, needs_proc]


def _assert_finalised(out: Path, signame: str) -> None:
    assert not (out / "video.mp4").exists(), "a stopped run must not leave a finished-looking video"
    assert len(read_video(out / "video.incomplete.mp4")) > 0  # finalised: it decodes
    report = run_json(out)
    assert report["complete"] is False
    assert signame in report["error"]


def _assert_one_line(tmp_path: Path, name: str) -> None:
    err = stderr_of(tmp_path)
    assert f"paravideo: interrupted by {name}" in err
    for spew in ("Traceback", "terminate called", "leaked semaphore"):  # nothing but the one line
        assert spew not in err, err[-3000:]


def _signal_two_rank_run(tmp_path: Path, signum: int, *, ranks_end_within_s: float) -> tuple[Path, int]:
    """Start a 2-rank local run, signal the CLI once frames exist; return the output folder and CLI's exit code."""
    config, out = write_config(tmp_path, LONG_RUN, TWO_RANKS)
    cli = start_generate(config, tmp_path)
    ranks = []
    try:
        wait_for_frames(out)
        ranks = wait_until(lambda: ranks_of(cli.pid) if len(ranks_of(cli.pid)) == 2 else None, 30, "two ranks")
        cli.send_signal(signum)
        code = cli.wait(timeout=90)
        wait_until(lambda: not any(running(p) for p in ranks), ranks_end_within_s, "the ranks to end")
    finally:
        cli.kill()
        kill_leftovers(ranks)
    return out, code


def test_sigterm_to_local_launcher_stops_ranks_and_finalises(tmp_path):
    out, code = _signal_two_rank_run(tmp_path, signal.SIGTERM, ranks_end_within_s=30)
    assert code == 128 + signal.SIGTERM
    _assert_finalised(out, "interrupted by SIGTERM")
    _assert_one_line(tmp_path, "SIGTERM")


def test_sigkill_to_local_launcher_leaves_no_rank_running(tmp_path):
    # The ranks get a parent-death signal and finalise; the launcher's grace bounds it (10 s).
    out, _ = _signal_two_rank_run(tmp_path, signal.SIGKILL, ranks_end_within_s=40)
    # Rank 0 finalised what it had and said why it stopped.
    _assert_finalised(out, "the launcher")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_stop_signal_to_inline_run_ends_cleanly(tmp_path, signum):
    config, out = write_config(tmp_path, LONG_RUN)
    cli = start_generate(config, tmp_path)
    try:
        wait_for_frames(out)
        cli.send_signal(signum)
        assert cli.wait(timeout=90) == 128 + signum
    finally:
        cli.kill()
    name = signal.Signals(signum).name
    _assert_finalised(out, f"interrupted by {name}")
    _assert_one_line(tmp_path, name)


def test_sigterm_to_ray_launcher_ends_cleanly(tmp_path):
    pytest.importorskip("ray")
    ray_ranks = {"parallel": {"pipeline": 2},
                 "launch": {"launcher": "ray", "nproc": 2, "ray_address": "local", "ray_num_cpus": 2,
                            "ray_cpus_per_rank": 0}}
    config, out = write_config(tmp_path, LONG_RUN, ray_ranks)
    # The private instance listens beyond loopback: token authentication, with a token of this test's own.
    cli = start_generate(config, tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    started = []
    try:
        wait_for_frames(out)
        started = descendants(cli.pid)  # the private Ray instance and the rank actors
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=90) == 128 + signal.SIGTERM
        wait_until(lambda: not any(running(p) for p in started), 60, "Ray's processes to end")
    finally:
        cli.kill()
        kill_leftovers(started)
    _assert_finalised(out, "interrupted by SIGTERM")
    _assert_one_line(tmp_path, "SIGTERM")
    assert "SIGTERM received" not in stderr_of(tmp_path)  # Ray's native stack dump
