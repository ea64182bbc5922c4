"""The decode spread over ranks (parallel.decode: pipeline): exact frames, resume, failures, placement."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from paravideo.errors import ConfigError, RankFailure
from paravideo.generate import generate
from paravideo.io.sink import read_video

RUN = {"video": {"num_frames": 25}, "blocks": {"block_frames": 2, "context_frames": 1}, "sampling": {"steps": 3},
       "output": {"frames_png": True}}


def _pngs(out_dir):
    import imageio.v3 as iio

    return np.stack([iio.imread(p) for p in sorted(Path(out_dir, "frames").glob("*.png"))])


# Exact bands are bit-exact against one process when every band window holds >= 16 tokens
# (docs/patch_modes.md): 80 x 128 px gives 5 x 8 token rows x cols.
BAND_RUN = {**RUN, "video": {"num_frames": 9, "height": 80, "width": 128}}


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    """The one-rank reference of each geometry, run once."""
    from conftest import BASE_CONFIG, deep_update
    from paravideo.config import parse_config

    done = {}

    def go(run):
        key = json.dumps(run, sort_keys=True)
        if key not in done:
            config = parse_config(deep_update(BASE_CONFIG, deep_update(run, {"output": {
                "dir": str(tmp_path_factory.mktemp("one") / "run")}})))
            done[key] = config, generate(config)
        return done[key]

    return go


def _spread(make_config, *, pipeline=2, patch=1, run=RUN, **extra):
    world = pipeline * patch
    sections = {**run, "parallel": {"pipeline": pipeline, "patch": patch, "decode": "pipeline",
                                    **extra.pop("parallel", {})},
                "launch": {"launcher": "local", "nproc": world, "timeout_s": 60}}
    sections.update(extra)
    return make_config(**sections)


# Pieces of the tiny VAE's decoder: in+mid, 4 up-blocks of 2 resnets (+ upsampler on 3 of them), out = 13.
@pytest.mark.slow
@pytest.mark.parametrize("pipeline,patch,parallel", [
    (3, 1, {"decode_pieces": [2, 6, 5]}),  # three decode ranks, a hand-made split
    (1, 2, {}),  # two patch bands of one stage share the decode
])
def test_every_decode_placement_gives_the_one_rank_frames(make_config, one_rank, pipeline, patch, parallel):
    run = BAND_RUN if patch > 1 else RUN
    ref_config, ref = one_rank(run)
    config = _spread(make_config, pipeline=pipeline, patch=patch, parallel=parallel, run=run,
                     output={**RUN["output"], "trace": True})
    report = generate(config)
    assert report.complete and report.block_digests == ref.block_digests
    assert np.array_equal(_pngs(config.output.dir), _pngs(ref_config.output.dir))
    assert np.array_equal(read_video(Path(config.output.dir) / "video.mp4"),
                          read_video(Path(ref_config.output.dir) / "video.mp4"))
    placement = report.parallel["decode"]
    assert placement["ranks"] == list(range(pipeline * patch)) and sum(placement["pieces"]) == 13
    # Every decode rank did decode work and sent its output on; the trace has decode spans on each track.
    # The layers were chosen with the decode (parallel/balance.py), as the cost model predicts them.
    from paravideo.costmodel.scenario import Scenario

    assert report.parallel["stage_layers"] == [list(r) for r in Scenario.from_config(config).ranges]
    assert len(report.parallel["relative_load"]) == pipeline * patch and max(report.parallel["relative_load"]) == 1
    for row in report.ranks:
        assert row["decode_s"] > 0 and row["io_s"] == pytest.approx(row["decode_s"] + row["write_s"])
        assert (row["write_s"] > 0) == (row["rank"] == 0)  # rank 0 alone owns the mp4
        assert row["bytes_by_kind"].get("frames" if row["rank"] == pipeline * patch - 1 else "decode", 0) > 0
    from paravideo.telemetry.trace import read_tracks

    tracks = read_tracks(Path(config.output.dir) / "trace.json")
    for name, events in tracks.items():
        assert any(e["name"].startswith("decode") for e in events), name
    assert any(e["name"].startswith("write") for e in tracks[next(n for n in tracks if n.startswith("rank 0"))])


# 33 frames = 9 latent frames in blocks of 2 (block k leaves the queue in iteration k + 2); checkpoints after
# iterations 1 and 3, when 0 and 4 latent frames are decoded. Rank 1 fails before decoding latent frame 6.
RESUME_RUN = {**RUN, "video": {"num_frames": 33}, "output": {**RUN["output"], "checkpoint_every": 2}}


@pytest.mark.slow
def test_decode_failure_names_the_rank_and_resume_gives_the_one_rank_frames(make_config, one_rank, monkeypatch):
    from paravideo.cli import main
    from paravideo.io.checkpoint import load_checkpoint

    ref_config, ref = one_rank(RESUME_RUN)
    config = _spread(make_config, run=RESUME_RUN)
    monkeypatch.setenv("PARAVIDEO_FAULT", "1:decode:6")
    with pytest.raises(RankFailure) as info:
        generate(config)
    assert info.value.rank == 1 and "decoding on rank 1 failed" in str(info.value)
    out = Path(config.output.dir)
    data = json.loads((out / "run.json").read_text())
    assert data["complete"] is False and data["error"].startswith("rank 1:")
    state = load_checkpoint(out)
    assert state["iteration"] == 3 and state["output"]["decoder"]["frames_in"] == 4
    # Playable, and it holds at least the frames of the 4 latent frames the checkpoint covers (1 + 3 x 4).
    assert read_video(out / "video.incomplete.mp4").shape[0] >= state["output"]["sink"]["frames_written"] == 13
    monkeypatch.delenv("PARAVIDEO_FAULT")
    assert main(["generate", "--resume", str(out)]) == 0
    data = json.loads((out / "run.json").read_text())
    assert data["complete"] and data["block_digests"] == ref.block_digests
    assert data["parallel"]["decode"]["ranks"] == [0, 1]
    assert np.array_equal(_pngs(out), _pngs(ref_config.output.dir))
    assert np.array_equal(read_video(out / "video.mp4"), read_video(Path(ref_config.output.dir) / "video.mp4"))


def test_decode_placement_is_validated(make_config):
    with pytest.raises(ConfigError, match="parallel.decode: pipeline spreads"):
        make_config(parallel={"decode": "pipeline"})
    with pytest.raises(ConfigError, match="apply to parallel.decode: pipeline"):
        make_config(parallel={"pipeline": 2, "decode_pieces": [3, 10]})
    from paravideo.io.decode_placement import chain_ranks, placement_of

    with pytest.raises(ConfigError, match="must start with rank 0"):
        chain_ranks(world_size=2, num_pieces=13, ranks=[1, 0])
    with pytest.raises(ConfigError, match="sum to the decoder's 13 pieces"):
        placement_of(chain_ranks(world_size=2, num_pieces=13, ranks=None), [3, 3], 13)
    placement = placement_of(chain_ranks(world_size=3, num_pieces=4, ranks=None), [1, 2, 1], 4)
    assert placement.cuts == (0, 1, 3, 4) and placement.next_of(2) == 0 and placement.range_of(1) == (1, 3)


@pytest.mark.parametrize("name,hw", [("tiny", (4, 6)), ("tiny-ti2v", (2, 4))])
def test_decoder_pieces_in_sequence_equal_the_streaming_decoder(name, hw):
    from paravideo.io.decoder_pieces import DecoderRange, decoder_pieces
    from paravideo.io.vae_stream import StreamingDecoder
    from paravideo.models.builtin import ensure_builtin
    from paravideo.models.wan.loading import load_vae

    vae = load_vae(ensure_builtin(name), device=torch.device("cpu"))
    z = torch.randn(1, vae.config.z_dim, 5, *hw, generator=torch.Generator().manual_seed(0))
    streaming = StreamingDecoder(vae)
    ref = torch.cat([streaming.decode(z[:, :, :2]), streaming.decode(z[:, :, 2:])], dim=2)
    n = len(decoder_pieces(vae.decoder))
    head, tail = DecoderRange(vae, 0, n // 2), DecoderRange(vae, n // 2, n)
    outs = []
    for block in (z[:, :, :2], z[:, :, 2:]):
        x = head.prepare(block)
        outs += [tail.frame(head.frame(x[:, :, i:i + 1])) for i in range(x.shape[2])]
        if block.shape[2] == 2:  # a checkpoint between blocks: the caches survive a round trip
            head.load_state(head.state())
            tail.load_state(tail.state())
    assert torch.equal(torch.cat(outs, dim=2), ref)
    # The pieces' caches are the whole decoder's, slot for slot: checkpoints move between placements.
    from paravideo.io.decoder_pieces import join_feat_map, split_feat_map

    flat = streaming.state()["feat_map"]
    mine = join_feat_map(head.state()["caches"] + tail.state()["caches"], len(flat))
    assert all((a is None and b is None) or (isinstance(a, str) and a == b) or torch.equal(a, b)
               for a, b in zip(mine, flat))
    assert split_feat_map(head.pieces, flat)[0][0] is flat[0]


# ---- cost model (no processes) ----

@pytest.fixture(scope="module")
def small_shape():
    from paravideo.costmodel.shapes import shape_for_model_path

    return shape_for_model_path("builtin:small")


def _predict(shape, *, frames=9, side=8, decode="pipeline", pipeline=2, steps=4, decode_pieces=None, stage_layers=None):
    from paravideo.costmodel.cost_model import predict
    from paravideo.costmodel.profiles import load_profile
    from paravideo.costmodel.scenario import DecodeShape, Scenario

    s = Scenario(shape=shape, latent_frames=frames, latent_height=side, latent_width=side, steps=steps,
                 block_frames=2, context_frames=1, pipeline=pipeline, decode=decode, decode_pieces=decode_pieces,
                 stage_layers=stage_layers)
    d = DecodeShape.of(s)
    return s, d, predict(s, load_profile("cpu-local"), d)


def test_decode_cost_terms_are_monotone_in_frames_and_resolution(small_shape):
    # One placement throughout (the default one moves with the costs: parallel/balance.py).
    by_frames = [_predict(small_shape, frames=n, decode_pieces=(10, 3))[2] for n in (5, 9, 17)]
    by_side = [_predict(small_shape, side=n, decode_pieces=(10, 3)) for n in (4, 8, 16)]
    for runs in (by_frames, [p for _, _, p in by_side]):
        for rank in (0, 1):
            io = [p.ranks[rank].io_s for p in runs]
            assert io == sorted(io) and io[0] < io[-1], io
        walls = [p.wall_s for p in runs]
        assert walls == sorted(walls)
    for key in ("frame_flops", "params"):
        values = [getattr(d, key) for _, d, _ in by_side]
        assert values == sorted(values)
    # The decode working set grows with the frame size (caches and activations), never with the length.
    mem = [[p.ranks[r].memory.decode for r in (0, 1)] for _, _, p in by_side]
    assert mem == sorted(mem) and mem[0] < mem[-1]
    assert len({tuple(p.ranks[r].memory.decode for r in (0, 1)) for p in by_frames}) == 1


def test_spreading_the_decode_moves_work_off_rank_0(small_shape):
    _, d, rank0 = _predict(small_shape, decode="rank0")
    # A fixed split: the default one weighs decode FLOPs by this machine's measured rate (parallel/balance.py),
    # which differs from the cpu-local profile's, so the cost model need not find it faster.
    s, _, spread = _predict(small_shape, decode_pieces=(11, 2), stage_layers=(4, 4))
    shares = d.shares(s)
    assert set(shares) == {0, 1} and abs(sum(shares.values()) - 1) < 1e-9 and min(shares.values()) > 0.2
    assert rank0.ranks[1].io_s == 0 and spread.ranks[1].io_s > 0
    assert spread.ranks[0].io_s < rank0.ranks[0].io_s and spread.loop_s < rank0.loop_s
    # rank 1 now holds the VAE and its pieces' caches
    assert spread.ranks[1].memory.decode > d.params * 4


def test_plan_ranks_decode_placements(small_shape):
    from paravideo.costmodel.planner import candidates
    from paravideo.costmodel.profiles import load_profile

    s, _, _ = _predict(small_shape, decode="rank0", pipeline=1)
    found = candidates(s, 2, load_profile("cpu-local"))
    assert {c.scenario.decode for c in found if c.scenario.world_size == 2} == {"rank0", "pipeline"}
    assert {c.scenario.decode for c in found if c.scenario.world_size == 1} == {"rank0"}
    assert "parallel.decode=" in " ".join(found[0].overrides)
    # The split column is the engine's choice: layers per stage | pieces per decode rank.
    spread = next(c for c in found if c.scenario.decode == "pipeline")
    balance = spread.scenario.balance
    assert spread.row()["split"] == "+".join(map(str, balance.stage_layers)) + " | " + "+".join(
        str(b - a) for a, b in zip(balance.decode.cuts, balance.decode.cuts[1:]))
