"""The Ray launcher on a private local Ray instance with two CPU actors: same frames as the local
launcher, and a rank killed mid-run ends the job fast with a finalised video."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow
RAY_RANKS = {"launcher": "ray", "nproc": 2, "ray_cpus_per_rank": 0}
PIPELINE_2 = {"pipeline": 2}


@pytest.fixture(scope="module")
def ray_instance(_model_cache):
    """A private Ray instance for this module (2 CPUs, no dashboard, its own temp dir, no auth)."""
    temp_dir = tempfile.mkdtemp(prefix="pv-ray-")  # short: Ray's unix socket paths are length-limited
    previous = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir)
    yield
    ray.shutdown()
    if previous is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = previous
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def rank0_elsewhere(monkeypatch):
    """Treat every rank's node as another machine than the driver's, so the cross-machine paths run:
    rank 0 prepares the output folder itself, signals and failure records go through pinned tasks,
    and with output.fetch_to_driver the driver copies the results back."""
    from paravideo.launch import ray_launcher

    monkeypatch.setattr(ray_launcher, "_same_machine", lambda where, driver: False)


def test_ray_frames_equal_local_launcher(ray_instance, rank0_elsewhere, make_config, tiny_root, capsys):
    from paravideo.generate import generate, preflight
    from paravideo.io.sink import read_video
    from paravideo.costmodel.run_plan import describe_run

    blocks = {"block_frames": 2, "context_frames": 1}
    local = make_config(blocks=blocks, parallel=PIPELINE_2, launch={"launcher": "local", "nproc": 2})
    remote = make_config(blocks=blocks, parallel=PIPELINE_2, launch=RAY_RANKS, output={"fetch_to_driver": True})
    local_report = generate(local)
    ray_report = generate(remote)

    assert "fetched video.mp4, run.json from rank 0's machine" in capsys.readouterr().err
    assert ray_report.complete and ray_report.frames == 17
    assert ray_report.block_digests == local_report.block_digests
    np.testing.assert_array_equal(read_video(Path(ray_report.video)), read_video(Path(local_report.video)))
    run = json.loads((Path(remote.output.dir) / "run.json").read_text())
    assert run["complete"] is True and run["video_node"] == socket.gethostname()
    # The weight bytes `paravideo validate` predicts from the config are what each rank loaded.
    predicted = [r["weight_bytes"] for r in describe_run(remote, preflight(remote))["ranks"]]
    assert predicted == [r["param_bytes"] for r in run["ranks"]]


def _kill_after_first_frame(out_dir: Path, rank: int, killed: dict):
    """An on_placed hook: once the first frame is on disk, SIGKILL `rank`'s actor process."""

    def on_placed(placed):
        pid = dict(placed)[rank].pid

        def watch():
            deadline = time.monotonic() + 120
            while not any((out_dir / "frames").glob("*.png")) and time.monotonic() < deadline:
                time.sleep(0.01)
            os.kill(pid, signal.SIGKILL)
            killed["at"] = time.monotonic()

        threading.Thread(target=watch, daemon=True, name="kill-rank").start()

    return on_placed


def test_sigkilled_rank_fails_fast_with_playable_video(ray_instance, rank0_elsewhere, make_config, tiny_root):
    from paravideo.errors import RankFailure
    from paravideo.generate import preflight
    from paravideo.io.sink import INCOMPLETE_NAME, read_video
    from paravideo.launch.ray_launcher import launch_ray
    from paravideo.io.output_dir import prepare_output_dir

    # 16 one-frame blocks x 10 steps: the first block leaves the queue well before the last one.
    config = make_config(video={"num_frames": 61}, sampling={"steps": 10}, parallel=PIPELINE_2, launch=RAY_RANKS,
                         blocks={"block_frames": 1, "context_frames": 1}, output={"frames_png": True})
    preflight(config)
    out_dir = prepare_output_dir(config.output.dir, overwrite=False)
    killed: dict = {}
    with pytest.raises(RankFailure) as failure:
        launch_ray(config, on_placed=_kill_after_first_frame(out_dir, 1, killed))
    ended = time.monotonic()

    assert "at" in killed, "the run finished before the kill"
    assert ended - killed["at"] < 60
    assert failure.value.rank == 1 and "died" in failure.value.cause
    assert "rank 1" in str(failure.value)
    frames = read_video(out_dir / INCOMPLETE_NAME)
    assert 0 < len(frames) < 61
    run = json.loads((out_dir / "run.json").read_text())
    assert run["complete"] is False and run["error"].startswith("rank 1:")
