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
def test_resume_on_one_rank_after_a_two_rank_run_failed(make_config, monkeypatch, uninterrupted):
    config = make_config(**RUN, parallel={"pipeline": 2}, launch={"launcher": "local", "nproc": 2})
    monkeypatch.setenv("PARAVIDEO_FAULT", "1:11")
    with pytest.raises(RankFailure):
        generate(config)
    monkeypatch.delenv("PARAVIDEO_FAULT")
    # Checkpoints hold the driver's state only, so one rank may continue what two began.
    assert main(["generate", "--resume", config.output.dir, "--set", "parallel.pipeline=1",
                 "--set", "launch.launcher=inline", "--set", "launch.nproc=1"]) == 0
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


# --- Resume that survives ordinary paths, refuses early and clearly, and deletes nothing of the stopped run.


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A one-rank run of RUN stopped by a failure after its second checkpoint (copy it before use)."""
    from conftest import BASE_CONFIG, deep_update
    from paravideo.config import parse_config

    config = parse_config(deep_update(BASE_CONFIG, deep_update(RUN, {"output": {
        "dir": str(tmp_path_factory.mktemp("stopped") / "run")}})))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PARAVIDEO_FAULT", "0:12")
        with pytest.raises(RuntimeError, match="injected failure"):
            generate(config)
    return Path(config.output.dir)


@pytest.fixture
def no_launch(monkeypatch):
    """Make loading models an error: what must be refused before that point is refused before it."""
    def launched(config):
        raise AssertionError("the run got past its checks and launched")

    monkeypatch.setattr("paravideo.generate.launch", launched)


def _copy(stopped, dest: Path) -> Path:
    import shutil

    shutil.copytree(stopped, dest, symlinks=True)
    return dest


@pytest.mark.slow
def test_resume_a_moved_folder_through_another_spelling_on_two_ranks(stopped, tmp_path, monkeypatch, uninterrupted):
    # Moved, under a name with a space and a quote, reached through a symlink, relative, with a
    # trailing slash; and resumed on two pipeline ranks where it ran on one.
    real = _copy(stopped, tmp_path / "out dir" / "it's")
    (tmp_path / "link").symlink_to(tmp_path / "out dir")
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--resume", "./link/it's/", "--set", "parallel.pipeline=2",
                 "--set", "launch.launcher=local", "--set", "launch.nproc=2"]) == 0
    _check_equal(real, uninterrupted)
    assert json.loads((real / "run.json").read_text())["world_size"] == 2
    assert not (real / "video.incomplete.mp4").exists()  # the finished video supersedes it


def test_resume_of_another_video_is_refused_before_loading_and_deletes_nothing(stopped, tmp_path, capsys,
                                                                              no_launch):
    out = _copy(stopped, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["generate", "--resume", str(out), "--set", "sampling.steps=4"]) == 2
    err = capsys.readouterr().err
    assert "another video" in err and "sampling.steps: 3 in the checkpoint, 4 now" in err
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_resume_failing_before_its_first_frame_keeps_the_stopped_runs_video(stopped, tmp_path, monkeypatch):
    out = _copy(stopped, tmp_path / "run")
    video = (out / "video.incomplete.mp4").read_bytes()
    monkeypatch.setenv("PARAVIDEO_FAULT", "0:9")  # the resumed run starts at forward 9
    with pytest.raises(RuntimeError, match="injected failure"):
        main(["generate", "--resume", str(out)])
    assert (out / "video.incomplete.mp4").read_bytes() == video


@pytest.mark.parametrize("damage, named, why", [
    ("truncate-checkpoint", CHECKPOINT_NAME, "is damaged or not a paravideo checkpoint"),
    ("garbage-checkpoint", CHECKPOINT_NAME, "is damaged or not a paravideo checkpoint"),
    ("remove-segment", "segments/seg-00000.mp4", "is missing"),
    ("truncate-segment", "segments/seg-00000.mp4", "is damaged"),
])
def test_damaged_checkpoint_or_segment_is_one_clear_error_before_loading(stopped, tmp_path, capsys, no_launch,
                                                                         damage, named, why):
    out = _copy(stopped, tmp_path / "run")
    target = out / named
    if damage.startswith("truncate"):
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif damage == "garbage-checkpoint":
        target.write_bytes(b"\x00garbage" * 100)
    else:
        target.unlink()
    assert main(["generate", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if line.startswith("paravideo: error:")]
    assert str(target) in line and why in line and "cannot be resumed" in line, err
    assert "Traceback" not in err
    assert (out / "video.incomplete.mp4").is_file()


def test_segments_join_in_a_folder_whose_name_has_quotes_and_spaces(tmp_path):
    from paravideo.io.sink import VideoSink

    sink = VideoSink(tmp_path / "it's a \"dir\"", width=16, height=16, fps=8)
    frames = torch.arange(3 * 16 * 16 * 3, dtype=torch.int64).reshape(3, 16, 16, 3).remainder(251).to(torch.uint8)
    for i in range(3):
        sink.write(frames[i:i + 1])
        sink.cut()
    video = sink.close(complete=True)
    assert video.name == "video.mp4" and read_video(video).shape == (3, 16, 16, 3)
    assert sorted(p.name for p in video.parent.iterdir()) == ["video.mp4"]  # segments and list removed
