"""One run per output folder: a second run into a folder in use is refused, naming the holder, and the
first still writes its own video and run.json; the lock goes with its holder however it ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import BASE_CONFIG, deep_update
from paravideo.config import parse_config
from paravideo.errors import ConfigError
from paravideo.generate import generate
from paravideo.io.sink import read_video
from paravideo.io.output_lock import LOCK_NAME, OutputLock


def _start_run(tmp_path: Path, out_dir: Path, **sections) -> subprocess.Popen:
    """`paravideo generate` (inline launcher) as a real process of its own."""
    cfg = tmp_path / f"{out_dir.name}.yaml"
    cfg.write_text(yaml.safe_dump(deep_update(BASE_CONFIG, deep_update(sections, {"output": {"dir": str(out_dir)}}))))
    return subprocess.Popen([sys.executable, "-m", "paravideo", "generate", "-c", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_holder(out_dir: Path, proc: subprocess.Popen, timeout_s: float = 120.0) -> dict:
    """The lock file's holder record once `proc` has written it (it holds the lock from then on)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the holder ended early: {(proc.communicate()[1] or '')[-2000:]}"
        try:
            holder = json.loads((out_dir / LOCK_NAME).read_text() or "{}")
        except (OSError, ValueError):
            holder = {}
        if holder.get("pid") == proc.pid:
            return holder
        time.sleep(0.01)
    raise AssertionError("the first run never took the output folder's lock")


def test_second_run_into_a_busy_folder_is_refused_and_the_first_keeps_its_video(tmp_path, tiny_root):
    out_dir = tmp_path / "shared"
    first = _start_run(tmp_path, out_dir, video={"prompt": "the first run's prompt"})
    try:
        holder = _wait_for_holder(out_dir, first)
        # Hold the first run still while the second arrives, so the overlap does not depend on timing.
        os.kill(first.pid, signal.SIGSTOP)
        second = parse_config(deep_update(BASE_CONFIG, {"video": {"prompt": "the second run's prompt"},
                                                        "sampling": {"seed": 99},
                                                        "output": {"dir": str(out_dir), "overwrite": True}}))
        with pytest.raises(ConfigError) as refused:
            generate(second)
        message = str(refused.value)
        assert f"pid {first.pid}" in message and holder["host"] in message and holder["since"] in message
        assert "in use by another paravideo run" in message and "choose another output.dir" in message
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    run = json.loads((out_dir / "run.json").read_text())
    assert run["complete"] is True and run["config"]["video"]["prompt"] == "the first run's prompt"
    assert read_video(out_dir / "video.mp4").shape[0] == 17
    # The holder has gone: a new run is admitted (overwrite replaces the first run's files).
    third = parse_config(deep_update(BASE_CONFIG, {"sampling": {"steps": 2}, "output": {
        "dir": str(out_dir), "overwrite": True}}))
    assert generate(third).complete
    assert json.loads((out_dir / "run.json").read_text())["config"]["sampling"]["steps"] == 2


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from paravideo.io.output_lock import OutputLock\n"
                               "lock = OutputLock.acquire(sys.argv[1]); time.sleep(600)", str(tmp_path)])
    try:
        _wait_for_holder(tmp_path, holder)
        with pytest.raises(ConfigError, match=f"pid {holder.pid} on "):
            OutputLock.acquire(tmp_path)
    finally:
        holder.kill()  # SIGKILL: no cleanup code of the holder runs
        holder.wait(timeout=60)
    with OutputLock.acquire(tmp_path) as lock:  # the kernel dropped the dead process's flock
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert lock.path.read_text() == ""  # released: nobody named as holder


def test_a_failed_run_releases_the_lock(make_config, monkeypatch):
    config = make_config()
    monkeypatch.setenv("PARAVIDEO_FAULT", "0:1")
    with pytest.raises(RuntimeError, match="injected failure"):
        generate(config)
    with OutputLock.acquire(config.output.dir):
        pass


def test_a_held_lock_refuses_in_process(tmp_path):
    with OutputLock.acquire(tmp_path):
        with pytest.raises(ConfigError, match=f"pid {os.getpid()} on "):
            OutputLock.acquire(tmp_path)
    OutputLock.acquire(tmp_path).release()
