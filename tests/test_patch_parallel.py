"""Patch parallelism: bands of token rows over CPU processes (gloo); exact mode equals one process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import BASE_CONFIG, deep_update
from paravideo.config import parse_config
from paravideo.errors import ConfigError
from paravideo.parallel.layout import ParallelLayout
from paravideo.parallel.patch.bands import Band, BandSplit, band_conditioning, join_rows, take_rows

# 80 x 128 px: 5 x 8 token rows x cols, so 2 and 3 bands are uneven (3+2, 2+2+1). Two blocks with
# context and the feature cache; every band window holds >= 16 tokens (see docs/patch_modes.md).
RUN = {"video": {"num_frames": 9, "height": 80, "width": 128}, "blocks": {"block_frames": 2, "context_frames": 1},
       "sampling": {"steps": 3}, "output": {"save_latents": True}}
# 160 px tall: 10 token rows, 4 bands of 3, 3, 2, 2 rows; narrow, since only bytes are compared.
BYTES_RUN = {**RUN, "video": {"num_frames": 9, "height": 160, "width": 32}, "output": {"save_latents": False}}
STALE = {"warmup_steps": 1}
RUNS = {
    "one": (RUN, {}),
    "exact2": (RUN, {"patch": 2}),
    "exact3": (RUN, {"patch": 3}),
    "pipe2x2": (RUN, {"pipeline": 2, "patch": 2}),
    "distrifusion2": (RUN, {"patch": 2, "patch_mode": "distrifusion", **STALE}),
    "pcpp2_full": (RUN, {"patch": 2, "patch_mode": "pcpp", "pcpp_fraction": 1.0, **STALE}),
    "distrifusion2_warm": (RUN, {"patch": 2, "patch_mode": "distrifusion", "warmup_steps": 3}),
    "pcpp2_warm": (RUN, {"patch": 2, "patch_mode": "pcpp", "pcpp_fraction": 0.3, "warmup_steps": 3}),
    "distrifusion4": (BYTES_RUN, {"patch": 4, "patch_mode": "distrifusion", **STALE}),
    "pcpp4": (BYTES_RUN, {"patch": 4, "patch_mode": "pcpp", "pcpp_fraction": 0.3, **STALE}),
}


# ---- bands and row slicing (pure) ----

def test_uneven_bands_cover_every_row_once():
    assert [b.rows for b in BandSplit.even(30, 52, 4).bands] == [8, 8, 7, 7]  # 480p
    split = BandSplit.even(45, 80, 4)  # 720p
    assert [b.rows for b in split.bands] == [12, 11, 11, 11]
    assert [(b.lo, b.hi) for b in split.bands][-1] == (34, 45)
    with pytest.raises(ValueError):
        BandSplit.even(3, 4, 4)


def test_halo_pieces_take_the_nearest_rows_of_each_neighbour():
    split = BandSplit.even(30, 4, 4)  # rows 0-8, 8-16, 16-23, 23-30
    assert [(p.index, p.lo, p.hi) for p in split.halo_pieces(1, 0.3)] == [(0, 5, 8), (1, 8, 16), (2, 16, 19)]
    assert [(p.index, p.lo, p.hi) for p in split.halo_pieces(0, 0.3)] == [(0, 0, 8), (1, 8, 11)]
    assert split.halo_pieces(3, 1.0) == (split.full_pieces()[2], split.full_pieces()[3])
    assert split.halo_rows(2, 0.01) == 1  # any p > 0 sees at least one row


def test_rows_round_trip_and_band_rope_keeps_global_positions():
    frames, rows, cols = 3, 5, 4
    x = torch.arange(2 * frames * rows * cols * 6, dtype=torch.float32).view(2, frames * rows * cols, 6)
    parts = [take_rows(x, dim=1, frames=frames, rows=rows, cols=cols, lo=lo, hi=hi) for lo, hi in [(0, 2), (2, 5)]]
    assert torch.equal(join_rows(parts, dim=1, frames=frames, cols=cols), x)
    grid_idx = torch.arange(frames * rows * cols).view(frames, rows, cols)
    assert torch.equal(parts[1][0, :, 0], x[0, grid_idx[:, 2:5].reshape(-1), 0])

    from paravideo.models.wan.adapter import Conditioning

    cos = torch.randn(1, frames * rows * cols, 1, 8)
    cond = Conditioning(temb=None, timestep_proj=None, text=None, rotary=(cos, cos), grid=(frames, rows, cols))
    band = band_conditioning(cond, Band(1, 2, 5))
    assert band.grid == (frames, 3, cols)
    assert torch.equal(band.rotary[0][0, :, 0], cos[0, grid_idx[:, 2:5].reshape(-1), 0])


# ---- validation (before any worker starts) ----

def _config(**sections):
    return parse_config(deep_update(BASE_CONFIG, sections))


@pytest.mark.parametrize("parallel, field, hint", [
    ({"patch": 5}, "parallel.patch", "at most 4"),  # 64 px tall = 4 token rows
    ({"patch": 0}, "parallel.patch", "greater than or equal to 1"),
    ({"pcpp_fraction": 0.0}, "parallel.pcpp_fraction", "greater than 0"),
    ({"pcpp_fraction": 1.5}, "parallel.pcpp_fraction", "less than or equal to 1"),
    ({"patch_mode": "ring"}, "parallel.patch_mode", "'exact', 'distrifusion' or 'pcpp'"),
    ({"patch": 2, "patch_mode": "pcpp", "warmup_steps": 5}, "parallel.warmup_steps", "at most 4"),
    ({"warmup_steps": 0}, "parallel.warmup_steps", "greater than or equal to 1"),
])
def test_bad_patch_settings_name_the_field(parallel, field, hint):
    from paravideo.generate import preflight

    ranks = max(1, parallel.get("patch", 1))
    with pytest.raises(ConfigError) as info:
        # Token rows depend on the model's factors, so that check is preflight's.
        preflight(_config(video={"height": 64}, parallel=parallel, launch={"launcher": "local", "nproc": ranks}))
    assert field in str(info.value) and hint in str(info.value)


def test_good_patch_settings_pass():
    config = _config(video={"height": 64}, parallel={"patch": 4, "patch_mode": "pcpp", "pcpp_fraction": 1,
                                                     "warmup_steps": 4})
    assert config.parallel.pcpp_fraction == 1.0
    # Warm-up only matters to the stale modes: a short exact run keeps the default.
    _config(sampling={"steps": 2}, parallel={"patch": 2})


def test_world_size_must_match_pipeline_times_patch():
    from paravideo.generate import preflight

    ParallelLayout(pipeline=2, patch=2).check_world(4)
    with pytest.raises(ConfigError, match=r"parallel.pipeline x parallel.patch = 2 x 2 = 4.*launch.nproc"):
        ParallelLayout(pipeline=2, patch=2).check_world(2)
    config = _config(parallel={"patch": 2}, launch={"launcher": "local", "nproc": 3})
    with pytest.raises(ConfigError, match="parallel.patch"):
        preflight(config)
    layout = ParallelLayout(pipeline=2, patch=3)
    assert layout.band_ranks(1) == [3, 4, 5] and (layout.stage_of(4), layout.band_of(4)) == (1, 1)


# ---- multi-process runs ----

class Result:
    """A finished run: its report, clean latents (when saved) and decoded frames."""

    def __init__(self, report, out_dir: Path):
        from paravideo.io.sink import read_video

        self.report = report
        self.latents = torch.load(out_dir / "latents.pt", weights_only=True) if (out_dir / "latents.pt").exists() \
            else None
        self.frames = read_video(out_dir / "video.mp4")

    def bytes(self, kind: str) -> int:
        return sum(r["bytes_by_kind"].get(kind, 0) for r in self.report.ranks)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Runs each named config once per module."""
    from paravideo.generate import generate

    done: dict[str, Result] = {}

    def go(name: str) -> Result:
        if name not in done:
            sections, parallel = RUNS[name]
            nproc = parallel.get("pipeline", 1) * parallel.get("patch", 1)
            launch = {"launcher": "local", "nproc": nproc} if nproc > 1 else {"launcher": "inline"}
            out = tmp_path_factory.mktemp(name) / "run"
            data = deep_update(BASE_CONFIG, {**sections, "parallel": parallel, "launch": launch})
            data = deep_update(data, {"output": {"dir": str(out)}})
            report = generate(parse_config(data))
            assert report.complete and report.world_size == nproc
            done[name] = Result(report, out)
        return done[name]

    return go


def _assert_same_video(ours: Result, ref: Result) -> None:
    err = (ours.latents - ref.latents).abs().max().item()
    assert err <= 1e-6, f"max abs latent error {err:.3g} against one process"
    assert np.array_equal(ours.frames, ref.frames)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["exact2", "exact3"])
def test_exact_bands_equal_one_process(run, name):
    ours, ref = run(name), run("one")
    _assert_same_video(ours, ref)
    # Measured bit-exact on CPU: every band computes the same per-token arithmetic as one process.
    assert torch.equal(ours.latents, ref.latents) and ours.report.block_digests == ref.report.block_digests
    assert ours.report.parallel["patch_mode"] == "exact"
    assert all(r["bytes_by_kind"]["patch_kv_exact"] > 0 for r in ours.report.ranks)
    assert all(r["bytes_by_kind"]["latent_gather"] > 0 for r in ours.report.ranks[1:])


@pytest.mark.slow
def test_two_stages_by_two_bands_equal_one_process(run):
    ours, ref = run("pipe2x2"), run("one")
    _assert_same_video(ours, ref)
    kinds = [r["bytes_by_kind"] for r in ours.report.ranks]
    # Ranks 0, 1 are stage 0 (bands 0, 1); ranks 2, 3 are stage 1; hidden and predictions stay per band.
    assert all(k["hidden"] > 0 for k in kinds[:2]) and all(k["prediction"] > 0 for k in kinds[2:])
    assert all(k["patch_kv_exact"] > 0 for k in kinds)
    assert [r["layers"] for r in ours.report.ranks] == [[0, 2], [0, 2], [2, 4], [2, 4]]


@pytest.mark.slow
def test_pcpp_with_whole_neighbour_equals_distrifusion_on_two_bands(run):
    pcpp, distrifusion, exact = run("pcpp2_full"), run("distrifusion2"), run("exact2")
    assert torch.equal(pcpp.latents, distrifusion.latents)
    assert pcpp.bytes("patch_kv_halo") == distrifusion.bytes("patch_kv_stale") > 0
    # Stale K/V really were used: the result moved away from the exact one.
    assert (distrifusion.latents - exact.latents).abs().max() > 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name, exact", [("distrifusion2_warm", "exact2"), ("pcpp2_warm", "exact2")])
def test_warmup_over_every_step_is_exact(run, name, exact):
    ours = run(name)
    assert torch.equal(ours.latents, run(exact).latents)
    assert ours.bytes("patch_kv_stale") == ours.bytes("patch_kv_halo") == 0


@pytest.mark.slow
def test_pcpp_sends_a_quarter_of_distrifusion_or_less(run):
    pcpp, distrifusion = run("pcpp4"), run("distrifusion4")
    stale_forwards = 2 * 2  # 2 blocks x the 2 steps after the 1 warm-up step
    per_step_pcpp = pcpp.bytes("patch_kv_halo") / stale_forwards
    per_step_distrifusion = distrifusion.bytes("patch_kv_stale") / stale_forwards
    assert 0 < per_step_pcpp <= 0.25 * per_step_distrifusion, (per_step_pcpp, per_step_distrifusion)
    # Synchronous warm-up traffic is the same in both; only neighbours exchange halos.
    assert pcpp.bytes("patch_kv_exact") == distrifusion.bytes("patch_kv_exact")
    halo = [r["bytes_by_kind"]["patch_kv_halo"] for r in pcpp.report.ranks]
    assert halo[0] < halo[1] and halo[3] < halo[2]  # edge bands have one neighbour
