"""Resume: a run stopped after some blocks and resumed equals an uninterrupted run, frame for frame."""

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from paravideo.cli import main
from paravideo.errors import RankFailure
from paravideo.generate import generate
from paravideo.io.checkpoint import CHECKPOINT_NAME, load_checkpoint, load_scheduler_state, scheduler_state
from paravideo.io.sink import read_video
from paravideo.schedule.sampler import SchedulerBank, make_scheduler

RUN = {"video": {"num_frames": 33}, "blocks": {"block_frames": 2, "context_frames": 1},
       "sampling": {"steps": 3}, "output": {"checkpoint_every": 2, "frames_png": True}}
# 5 blocks x 3 steps; iterations 0..6 end at forwards 0, 2, 5, 8, 11, 13, 14: checkpoints after
# iterations 1 and 3 (forwards 2 and 8). Blocks 0 and 1 have left the queue by forward 8.


def _pngs(out_dir):
    return np.stack([iio.imread(p) for p in sorted(Path(out_dir, "frames").glob("*.png"))])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from conftest import BASE_CONFIG, deep_update
    from paravideo.config import parse_config

    config = parse_config(deep_update(BASE_CONFIG, deep_update(RUN, {"output": {
        "dir": str(tmp_path_factory.mktemp("full") / "run")}})))
    return config, generate(config)


def _check_equal(out_dir, reference):
    ref_config, ref_report = reference
    data = json.loads((Path(out_dir) / "run.json").read_text())
    assert data["complete"] is True and data["frames"] == 33
    assert data["block_digests"] == ref_report.block_digests
    assert np.array_equal(_pngs(out_dir), _pngs(ref_config.output.dir))
    assert np.array_equal(read_video(Path(out_dir) / "video.mp4"), read_video(Path(ref_config.output.dir) / "video.mp4"))
    assert not (Path(out_dir) / CHECKPOINT_NAME).exists() and not (Path(out_dir) / "segments").exists()


def test_resume_after_failure_equals_uninterrupted_run(make_config, monkeypatch, uninterrupted):
    config = make_config(**RUN)
    monkeypatch.setenv("PARAVIDEO_FAULT", "0:12")
    with pytest.raises(RuntimeError, match="injected failure"):
        generate(config)
    out = Path(config.output.dir)
    state = load_checkpoint(out)
    assert state["iteration"] == 3 and state["driver"]["applied"] == 8
    # The failed run's video is playable and holds at least what the checkpoint covers.
    assert read_video(out / "video.incomplete.mp4").shape[0] >= state["output"]["sink"]["frames_written"] > 0
    monkeypatch.delenv("PARAVIDEO_FAULT")
    assert main(["generate", "--resume", str(out)]) == 0
    _check_equal(out, uninterrupted)


@pytest.mark.slow
def test_resume_on_two_ranks_after_a_rank_failure(make_config, monkeypatch, uninterrupted):
    config = make_config(**RUN, parallel={"pipeline": 2}, launch={"launcher": "local", "nproc": 2})
    monkeypatch.setenv("PARAVIDEO_FAULT", "1:11")
    with pytest.raises(RankFailure):
        generate(config)
    monkeypatch.delenv("PARAVIDEO_FAULT")
    assert main(["generate", "--resume", config.output.dir]) == 0
    _check_equal(config.output.dir, uninterrupted)


def test_resume_needs_a_checkpoint(make_config, capsys):
    config = make_config()
    generate(config)
    assert main(["generate", "--resume", config.output.dir]) == 2
    assert "no checkpoint.pt" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["unipc", "flow_euler", "dpm"])
def test_scheduler_state_round_trips_through_weights_only_load(tmp_path, name):
    bank = SchedulerBank(make_scheduler(name, {"_class_name": "UniPCMultistepScheduler"}), 5)
    gen = torch.Generator().manual_seed(0)
    a, x = bank.new_block_scheduler(), torch.randn(1, 2, 3, generator=gen)
    for i in range(2):
        x = a.step(torch.randn(1, 2, 3, generator=gen), bank.timesteps[i], x, return_dict=False)[0]
    torch.save(scheduler_state(a), tmp_path / "s.pt")
    b = bank.new_block_scheduler()
    load_scheduler_state(b, torch.load(tmp_path / "s.pt", weights_only=True))
    pred = torch.randn(1, 2, 3, generator=gen)
    assert torch.equal(a.step(pred, bank.timesteps[2], x, return_dict=False)[0],
                       b.step(pred, bank.timesteps[2], x, return_dict=False)[0])
