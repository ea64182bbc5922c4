"""Step caching with CFG groups and sequence chunks: the same decisions, the same video as one rank (gloo, CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import BASE_CONFIG, deep_update
from paravideo.cache.step_wiring import first_stage_ranks
from paravideo.config import parse_config
from paravideo.parallel.layout import ParallelLayout

# As in test_sequence_parallel: 3 x 3 tokens per frame, windows of 3 latent frames (27 tokens: 14 + 13 over two
# chunks), blocks of 2 latent frames with a context frame and the feature cache; 3 blocks x 4 steps.
RUN = {"video": {"num_frames": 17, "height": 48, "width": 48},
       "blocks": {"block_frames": 2, "context_frames": 1, "feature_cache": True},
       "sampling": {"steps": 4}, "output": {"save_latents": True}}
# Thresholds between the indicator's values on builtin:tiny, so the data decides both ways: teacache reuses
# step 1 of every block (change 0.083-0.094) and computes step 2 (accumulated 0.17-0.21); first_block reuses
# step 2 (0.081-0.098 against the last computed step) and computes step 1 (0.11-0.15).
TEACACHE = {"policy": "teacache", "threshold": 0.1, "schedule": "flat", "warmup_steps": 1, "cooldown_steps": 1}
FIRST_BLOCK = {**TEACACHE, "policy": "first_block"}
RUNS = {
    "one": (TEACACHE, {}),
    "pipe2_ulysses2": (TEACACHE, {"pipeline": 2, "ulysses": 2}),
    "ring2": (TEACACHE, {"ring": 2}),
    "first_block_one": (FIRST_BLOCK, {}),
    "first_block_cfg2": (FIRST_BLOCK, {"cfg": 2}),
}
RING_TOLERANCE = 1e-5  # ring attention's log-sum-exp merge (docs/sequence_parallel.md)
STATS_BYTES = 16  # two int64 sums per forward per peer


def _config(out: Path, step: dict, parallel: dict, **sections):
    nproc = 1
    for value in parallel.values():
        nproc *= value
    launch = {"launcher": "local", "nproc": nproc} if nproc > 1 else {"launcher": "inline"}
    data = deep_update(BASE_CONFIG, {**RUN, "cache": {"step": step}, "parallel": parallel, "launch": launch})
    return parse_config(deep_update(data, {"output": {"dir": str(out)}, **sections}))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Runs each named config once per module; returns (report, clean latents)."""
    from paravideo.generate import generate

    done: dict[str, tuple] = {}

    def go(name: str):
        if name not in done:
            step, parallel = RUNS[name]
            config = _config(tmp_path_factory.mktemp(name) / "run", step, parallel)
            report = generate(config)
            assert report.complete
            done[name] = report, torch.load(Path(config.output.dir) / "latents.pt", weights_only=True)
        return done[name]

    return go


def test_every_first_stage_rank_holds_a_share_of_the_statistics():
    assert first_stage_ranks(ParallelLayout(pipeline=2, cfg=2, ulysses=2)) == [0, 1, 4, 5]
    assert first_stage_ranks(ParallelLayout(pipeline=3, patch=2)) == [0, 1]
    assert first_stage_ranks(ParallelLayout(pipeline=2)) == [0]


def test_the_axes_are_accepted_with_and_without_checkpoints(tmp_path):
    config = _config(tmp_path, TEACACHE, {"cfg": 2, "ulysses": 2})
    assert config.cache.step.policy == "teacache"
    resumable = _config(tmp_path, TEACACHE, {"ring": 2}, output={"dir": str(tmp_path), "checkpoint_every": 2})
    assert resumable.output.checkpoint_every == 2 and resumable.parallel.ring == 2


def _reused(report) -> list[list[int]]:
    return [r["step_cache"]["reused_forwards"] for r in report.ranks]


@pytest.mark.slow
@pytest.mark.parametrize("name, ref", [("first_block_cfg2", "first_block_one"), ("pipe2_ulysses2", "one")])
def test_exact_axes_reuse_the_same_forwards_and_give_the_same_video(run, name, ref):
    (report, latents), (ref_report, ref_latents) = run(name), run(ref)
    section = ref_report.step_cache
    assert 0 < section["forwards_reused"] < section["forwards"] == 12
    # Reuse, the indicator per step (the summed statistic, to 6 digits) and the video: as on one rank.
    assert report.step_cache == section
    assert torch.equal(latents, ref_latents) and report.block_digests == ref_report.block_digests
    assert _reused(report) == _reused(ref_report) * report.world_size
    # Each first-stage rank sends its two sums to every other one, for every forward with a reference (not step 0).
    layout = ParallelLayout(**RUNS[name][1])
    sharers = first_stage_ranks(layout)
    for rank in sharers:
        kinds = report.ranks[rank]["bytes_by_kind"]
        assert kinds["step_cache_stats"] == STATS_BYTES * (len(sharers) - 1) * 9
        if layout.pipeline > 1:  # the header goes chunk to same chunk; so do the computed forwards' starts
            assert kinds["step_cache_header"] == 16 * 12 and kinds["step_cache_start"] > 0


@pytest.mark.slow
def test_ring_reuses_the_same_forwards_within_its_tolerance(run):
    (report, latents), (ref_report, ref_latents) = run("ring2"), run("one")
    err = (latents - ref_latents).abs().max().item()
    assert err <= RING_TOLERANCE, f"ring 2 with a step cache: max abs latent error {err:.3g} against one rank"
    assert _reused(report) == _reused(ref_report) * 2 and ref_report.step_cache["forwards_reused"] > 0
    for block, ref_block in zip(report.step_cache["blocks"], ref_report.step_cache["blocks"]):
        assert block["reused"] == ref_block["reused"] and block["computed"] == ref_block["computed"]
        assert block["change"][1:] == pytest.approx(ref_block["change"][1:], abs=1e-5)
