"""CFG, sequence and patch parallelism composed with resume checkpoints and the decode pipeline: one-rank frames.

The runs form chains, so each multi-process run is both a resumed and an interrupted one:
one rank stops after checkpoint 1 -> Ulysses 2 (decode pipeline) resumes it and stops after checkpoint 2 ->
CFG 2 (decode pipeline) finishes it; patch 2 stops after checkpoint 2 -> patch 2 finishes it. Each ends
with the uninterrupted one-rank run's frames, and each checkpoint equals the one one rank writes there.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import BASE_CONFIG, deep_update
from paravideo.cli import main
from paravideo.config import parse_config
from paravideo.errors import RankFailure
from paravideo.generate import generate
from paravideo.io.checkpoint import load_checkpoint
from paravideo.io.queue_state import cut_rows, join_rows
from test_resume import RUN as RESUME_RUN
from test_resume import _check_equal

# 33 frames at 64 x 48 px (4 token rows: two bands of 2 rows are bit-identical to one rank); 5 blocks x 3
# steps, checkpoints after iterations 1 and 3 (forwards 2 and 8). Faults hit the driver (rank 0) before
# forward 6 or 12, so the checkpoint before them is always written (a fault elsewhere would race with it).
RUN = deep_update(RESUME_RUN, {"video": {"height": 64}})
FIRST, SECOND = "0:6", "0:12"


def _launch(parallel: dict) -> dict:
    nproc = 1
    for key in ("cfg", "ulysses", "ring", "pipeline", "patch"):
        nproc *= parallel.get(key, 1)
    return {"launcher": "local", "nproc": nproc, "timeout_s": 60} if nproc > 1 else {"launcher": "inline"}


def _config(out: Path, parallel: dict):
    return parse_config(deep_update(BASE_CONFIG, {**RUN, "parallel": parallel, "launch": _launch(parallel),
                                                  "output": {**RUN["output"], "dir": str(out)}}))


def _resume_args(out: Path, parallel: dict) -> list[str]:
    """`paravideo generate --resume OUT` with the degrees (and a launch to match) set anew."""
    sets = {f"parallel.{key}": value for key, value in parallel.items()}
    sets.update({f"launch.{key}": value for key, value in _launch(parallel).items()})
    return ["generate", "--resume", str(out)] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]


def _with_fault(fault: str | None, run):
    """`run()` with PARAVIDEO_FAULT set to `fault` (none: unset)."""
    with pytest.MonkeyPatch.context() as mp:
        if fault is not None:
            mp.setenv("PARAVIDEO_FAULT", fault)
        return run()


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _assert_same_checkpoint(out: Path, ref: Path) -> None:
    """The queue (every band's rows joined), decode caches and video position equal one rank's, bit for bit."""
    ours, theirs = load_checkpoint(out), load_checkpoint(ref)
    assert ours["iteration"] == theirs["iteration"] == 3
    assert _same(ours["driver"], theirs["driver"])
    assert _same(ours["output"]["decoder"], theirs["output"]["decoder"])
    assert ours["output"]["sink"]["frames_written"] == theirs["output"]["sink"]["frames_written"] > 0


def _assert_same_frames(out: Path, ref: Path) -> None:
    """`out` finished with the frames, video and block digests of the uninterrupted run in `ref`."""
    digests = [json.loads((d / "run.json").read_text())["block_digests"] for d in (out, ref)]
    assert digests[0] == digests[1]
    _check_equal(out, (SimpleNamespace(output=SimpleNamespace(dir=str(ref))),
                       SimpleNamespace(block_digests=digests[1])))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each named run (a reference, a stopped run or a chain step), once per module; returns its folder."""
    done: dict[str, Path] = {}

    def resumed(src: str, parallel: dict, fault: str | None = None):
        def make(out: Path) -> None:
            shutil.copytree(go(src), out)
            code = _with_fault(fault, lambda: main(_resume_args(out, parallel)))
            assert code == (0 if fault is None else 2)  # 2: the injected failure, reported as a rank failure
        return make

    def stopped(parallel: dict, fault: str):
        def make(out: Path) -> None:
            with pytest.raises((RankFailure, RuntimeError), match="injected failure"):
                _with_fault(fault, lambda: generate(_config(out, parallel)))
        return make

    makers = {
        "one": lambda out: generate(_config(out, {})),
        "one_at_1": stopped({}, FIRST),
        "one_at_3": stopped({}, SECOND),
        # Ulysses 2 with the decode pipeline continues one rank's first checkpoint and stops after the second;
        "ulysses2_at_3": resumed("one_at_1", {"ulysses": 2, "decode": "pipeline"}, SECOND),
        # CFG 2 with the decode pipeline finishes that.
        "cfg2_done": resumed("ulysses2_at_3", {"ulysses": 1, "cfg": 2, "decode": "pipeline"}),
        "patch2_at_3": stopped({"patch": 2}, SECOND),
        "patch2_done": resumed("patch2_at_3", {"patch": 2}),
    }

    def go(name: str) -> Path:
        if name not in done:
            out = tmp_path_factory.mktemp(name) / "run"
            makers[name](out)
            done[name] = out
        return done[name]

    return go


@pytest.mark.slow
def test_ulysses2_resumes_a_checkpoint_and_writes_one_ranks_next_one(runs):
    # Rank 1 (the second token chunk) got its replica of the queue from rank 0, and its decoder caches went
    # into the checkpoint: everything equals what one rank holds at the same point.
    _assert_same_checkpoint(runs("ulysses2_at_3"), runs("one_at_3"))


@pytest.mark.slow
def test_cfg2_with_the_decode_pipeline_finishes_it_with_one_ranks_frames(runs):
    # The unconditional group's replica and rank 1's decoder caches came back from rank 0's checkpoint.
    out = runs("cfg2_done")
    _assert_same_frames(out, runs("one"))
    data = json.loads((out / "run.json").read_text())
    assert data["parallel"]["decode"]["ranks"] == [0, 1] and data["world_size"] == 2


@pytest.mark.slow
def test_patch_bands_checkpoint_every_rows_and_resume_with_one_ranks_frames(runs):
    _assert_same_checkpoint(runs("patch2_at_3"), runs("one_at_3"))  # both bands' rows, joined
    _assert_same_frames(runs("patch2_done"), runs("one"))


@pytest.mark.parametrize("parallel, message", [
    ({"ring": 2}, "parallel.ring x parallel.ulysses: 1 x 1 in the checkpoint, 2 x 1 now"),
    ({"patch": 2}, "parallel.patch: 1 in the checkpoint, 2 now"),
])
def test_resume_refuses_a_split_that_would_change_the_frames(runs, tmp_path, capsys, parallel, message):
    out = tmp_path / "run"
    shutil.copytree(runs("one_at_3"), out)
    before = sorted(p.name for p in out.iterdir())
    assert main(_resume_args(out, parallel)) == 2
    err = capsys.readouterr().err
    assert message in err and "resume with parallel." in err
    assert sorted(p.name for p in out.iterdir()) == before  # refused before loading; nothing deleted


def test_band_rows_of_a_queue_join_to_the_whole_and_cut_back():
    from paravideo.io.checkpoint import load_scheduler_state, scheduler_state
    from paravideo.schedule.sampler import SchedulerBank, make_scheduler

    bank = SchedulerBank(make_scheduler("unipc", {"_class_name": "UniPCMultistepScheduler"}), 4)
    gen = torch.Generator().manual_seed(0)
    rows = [(0, 5), (5, 8)]
    x = torch.randn(1, 4, 2, 8, 6, generator=gen)
    whole, bands = bank.new_block_scheduler(), [bank.new_block_scheduler() for _ in rows]
    parts = [x[:, :, :, lo:hi] for lo, hi in rows]
    for i in range(2):  # two steps: UniPC now holds model outputs and the last sample (latent-shaped history)
        pred = torch.randn(1, 4, 2, 8, 6, generator=gen)
        x = whole.step(pred, bank.timesteps[i], x, return_dict=False)[0]
        parts = [s.step(pred[:, :, :, lo:hi], bank.timesteps[i], p, return_dict=False)[0]
                 for s, p, (lo, hi) in zip(bands, parts, rows)]
    tail = x[:, :, -1:]
    states = [{"applied": 7, "latents": {3: p}, "schedulers": {3: scheduler_state(s)},
               "tails": {2: tail[:, :, :, lo:hi]}} for p, s, (lo, hi) in zip(parts, bands, rows)]
    joined = join_rows(states)
    assert _same(joined, {"applied": 7, "latents": {3: x}, "schedulers": {3: scheduler_state(whole)},
                          "tails": {2: tail}})
    for state, band_rows in zip(states, rows):
        assert _same(cut_rows(joined, band_rows), state)
    # A band restored from its cut continues exactly as the whole frame's rows do.
    restored = bank.new_block_scheduler()
    load_scheduler_state(restored, cut_rows(joined, rows[1])["schedulers"][3])
    pred = torch.randn(1, 4, 2, 8, 6, generator=gen)
    lo, hi = rows[1]
    assert torch.equal(restored.step(pred[:, :, :, lo:hi], bank.timesteps[2], parts[1], return_dict=False)[0],
                       whole.step(pred, bank.timesteps[2], x, return_dict=False)[0][:, :, :, lo:hi])


def test_stale_patch_modes_are_not_checkpointed(make_config):
    from paravideo.errors import ConfigError

    with pytest.raises(ConfigError, match=r"output.checkpoint_every is not supported with parallel.patch_mode = "
                                          r"'pcpp' .*set parallel.patch_mode: exact"):
        make_config(parallel={"patch": 2, "patch_mode": "pcpp", "warmup_steps": 2}, output={"checkpoint_every": 2})
    make_config(parallel={"patch": 2}, output={"checkpoint_every": 2})  # exact bands are
