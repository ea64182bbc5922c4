"""The cost model: FLOPs from shapes, exact weights and traffic, monotone predictions, plan ranking."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from paravideo.costmodel.cost_model import predict
from paravideo.costmodel.flops import Window, layer_flops, window
from paravideo.costmodel.profiles import HardwareProfile, load_profile
from paravideo.costmodel.scenario import DecodeShape, Scenario
from paravideo.costmodel.shapes import DiTShape, param_groups, stage_param_bytes, total_params
from paravideo.costmodel.simulate import replay
from paravideo.costmodel.traffic import traffic_by_rank


@pytest.fixture(scope="module")
def tiny_shape(tiny_root) -> DiTShape:
    return DiTShape.from_folder(tiny_root)


def _scenario(shape: DiTShape, **changes) -> Scenario:
    base = dict(shape=shape, latent_frames=9, latent_height=4, latent_width=6, steps=4, block_frames=2,
                context_frames=1, pipeline=2, text_tokens=512)
    return Scenario(**{**base, **changes})


def test_layer_flops_match_torch_flop_counter(tiny_root, tiny_shape):
    from torch.utils.flop_counter import FlopCounterMode

    from paravideo.models.wan.adapter import WanStage
    from paravideo.models.wan.loading import load_transformer_stage

    model = load_transformer_stage(tiny_root, 0, 4, dtype=torch.float32, device=torch.device("cpu"))
    stage = WanStage(model, lo=0, hi=4, num_layers=4)
    latents = torch.randn(1, 16, 3, 4, 6)
    text = stage.project_text(torch.randn(2, 512, tiny_shape.text_dim))
    cond = stage.condition(torch.tensor([500.0, 500.0]), text, stage.grid(latents.shape))
    hidden = stage.embed(latents).expand(2, -1, -1).contiguous()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        stage.run_layers(hidden, cond)
    terms = layer_flops(tiny_shape, Window(batch=2, query_tokens=18, key_tokens=18, text_tokens=512))
    # torch counts the projections (addmm) exactly; its CPU attention kernel is not in its table.
    projections = sum(v for k, v in terms.items() if not k.endswith("_attn"))
    assert counter.get_total_flops() == 4 * projections
    assert terms["self_attn"] == 2 * 2 * 2 * 18 * 18 * tiny_shape.dim


def test_feature_cache_keys_widen_self_attention(tiny_shape):
    s = _scenario(tiny_shape, context_frames=1, block_frames=2)
    with_future = [f for f in s.plan.forwards if f.future_block is not None and f.context_frames]
    assert with_future
    w = window(s.plan, with_future[0], tokens_per_frame=6, batch=2, text_tokens=512)
    assert w.query_tokens == 3 * 6 and w.key_tokens == 4 * 6  # context + block, then + 1 cached frame


def test_param_counts_match_the_diffusers_model():
    from diffusers import WanTransformer3DModel

    shape = DiTShape(num_layers=3, num_heads=4, head_dim=8, ffn_dim=48, text_dim=24, in_channels=16, out_channels=16,
                     patch=(1, 2, 2), time_stride=4, spatial_stride=8, freq_dim=16)
    with torch.device("meta"):
        model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=8,
                                      in_channels=16, out_channels=16, text_dim=24, freq_dim=16, ffn_dim=48,
                                      num_layers=3, cross_attn_norm=True, qk_norm="rms_norm_across_heads")
    assert total_params(shape) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("pipeline", [1, 2, 4])
def test_weights_per_gpu_are_a_stage_share_plus_shared_modules(tiny_root, tiny_shape, pipeline):
    from paravideo.models.wan.loading import load_transformer_stage

    s = _scenario(tiny_shape, pipeline=pipeline, dtype_bytes=2)
    pred = predict(s, load_profile("h100-nvlink"), DecodeShape())
    layer_low, layer_fp32 = param_groups(tiny_shape)["layer"]
    shared = stage_param_bytes(tiny_shape, 0, 2)
    for rank, (lo, hi) in zip(pred.ranks, s.ranges):
        assert rank.memory.weights == (hi - lo) * (2 * layer_low + 4 * layer_fp32) + shared
        model = load_transformer_stage(tiny_root, lo, hi, dtype=torch.bfloat16, device=torch.device("cpu"))
        assert rank.memory.weights == sum(p.numel() * p.element_size() for p in model.parameters())
    layer_parts = sum(r.memory.weights - shared for r in pred.ranks)
    assert layer_parts == stage_param_bytes(tiny_shape, tiny_shape.num_layers, 2) - shared


def test_predictions_are_monotone_in_frames_and_layers(tiny_shape):
    profile = load_profile("rtx4090-pcie")
    by_frames = [predict(_scenario(tiny_shape, latent_frames=n), profile, DecodeShape()) for n in (5, 9, 17, 33)]
    by_layers = [predict(_scenario(tiny_shape.with_layers(n)), profile, DecodeShape()) for n in (2, 4, 8, 16)]
    for series in (by_frames, by_layers):
        for a, b in zip(series, series[1:]):
            assert b.wall_s > a.wall_s and b.dit_flops > a.dit_flops
            assert b.max_peak_memory >= a.max_peak_memory
            assert b.bytes_sent >= a.bytes_sent
    assert by_layers[-1].max_peak_memory > by_layers[0].max_peak_memory


def test_one_stage_replay_never_waits(tiny_shape):
    from paravideo.costmodel.costs import schedule_costs

    s = _scenario(tiny_shape, pipeline=1)
    costs = schedule_costs(s, load_profile("a100"), DecodeShape())
    timeline = replay(s.plan, costs, stages=1)
    rank = timeline.ranks[0]
    assert rank.idle_s == 0
    total = (sum(costs.layers_s[0]) + sum(costs.embed_s) + sum(costs.head_s)
             + costs.scheduler_step_s * len(s.plan.forwards) + sum(costs.block_out_s))
    assert timeline.loop_s == pytest.approx(total)


def test_traffic_equals_the_recorders_bytes(make_config, tiny_root):
    from paravideo.generate import generate

    # Two prompts, CFG, bf16 hidden states, context frames: every term of the traffic model is exercised.
    config = make_config(model={"dtype": "bfloat16"}, video={"prompt": None, "prompts": [
        {"from_frame": 0, "text": "a fox"}, {"from_frame": 9, "text": "a cat"}]},
        sampling={"steps": 2}, blocks={"block_frames": 2, "context_frames": 1}, parallel={"pipeline": 2},
        launch={"launcher": "local", "nproc": 2})
    generate(config)
    run = json.loads((Path(config.output.dir) / "run.json").read_text())
    measured = {r["rank"]: {k: v for k, v in r["bytes_by_kind"].items() if v} for r in run["ranks"]}
    scenario = Scenario.from_config(config)
    assert scenario.prompts == 2 and scenario.dtype_bytes == 2
    assert traffic_by_rank(scenario.traffic) == measured
    assert set(measured[0]) == {"text", "hidden"} and set(measured[1]) == {"prediction"}
    params = {r["rank"]: r["param_bytes"] for r in run["ranks"]}
    pred = predict(scenario, load_profile("cpu-local"))
    assert {r.rank: r.memory.weights for r in pred.ranks} == params


def test_patch_traffic_equals_the_recorders_bytes(make_config, tiny_root):
    from paravideo.generate import generate

    # PCPP on 2 bands: exact K/V in the warm-up step, halo rows after it, finished rows gathered to rank 0.
    config = make_config(video={"height": 64, "width": 48}, sampling={"steps": 3},
                         blocks={"block_frames": 2, "context_frames": 1},
                         parallel={"patch": 2, "patch_mode": "pcpp", "warmup_steps": 1},
                         launch={"launcher": "local", "nproc": 2})
    generate(config)
    run = json.loads((Path(config.output.dir) / "run.json").read_text())
    measured = {r["rank"]: {k: v for k, v in r["bytes_by_kind"].items() if v} for r in run["ranks"]}
    assert traffic_by_rank(Scenario.from_config(config).traffic) == measured
    assert {"patch_kv_exact", "patch_kv_halo"} <= set(measured[1]) and "latent_gather" in measured[1]


def test_plan_ranks_candidates_and_prints_a_recommendation(tmp_path, capsys, tiny_root):
    import yaml

    from paravideo.cli import main

    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({"model": {"path": "builtin:tiny"},
                                      "video": {"prompt": "a fox", "num_frames": 33, "height": 32, "width": 48},
                                      "sampling": {"steps": 4}, "blocks": {"block_frames": 2, "context_frames": 1}}))
    assert main(["plan", "-c", str(config), "--gpus", "4", "--profile", "h100-nvlink", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(r["gpus_used"] <= 4 for r in rows)
    fitting = [r["wall_s"] for r in rows if r["fits"]]
    assert fitting == sorted(fitting)
    assert main(["plan", "-c", str(config), "--gpus", "2", "--profile", "cpu-local"]) == 0
    assert "recommended: --set parallel.pipeline=" in capsys.readouterr().out


def test_profiles_are_strict(tmp_path):
    from paravideo.errors import ConfigError

    data = load_profile("a100").model_dump()
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({**data, "tflops": 1.0}))
    with pytest.raises(ConfigError, match="tflops"):
        load_profile(str(bad))
    with pytest.raises(ConfigError, match="unknown hardware profile"):
        load_profile("no-such-gpu")
    assert isinstance(load_profile("cpu-local"), HardwareProfile)


def test_time_sharing_stretches_overlapping_forwards_but_not_a_decode_that_runs_alone():
    from types import SimpleNamespace

    from paravideo.costmodel.cost_model import _slowdown
    from paravideo.costmodel.simulate import RankTimeline, Replay

    # One stage of 4 replicas (CFG 2 x Ulysses 2) on 2 cores: 10 s of forwards, then 5 s of decode alone.
    stage = RankTimeline(spans=[("forward", "busy", 0.0, 10.0), ("decode", "io", 10.0, 15.0)], end_s=15.0)
    s = SimpleNamespace(patch=1, replicas=4, threads_per_rank=1)
    slow = _slowdown(s, SimpleNamespace(compute_slots=2), Replay(ranks=[stage], first_frame_s=15.0))
    assert slow.busy == pytest.approx(2.0) and slow.io == pytest.approx(1.0)
    # A decode beside the forwards of two ranks shares the cores with them.
    ranks = [RankTimeline(spans=[("forward", "busy", 0.0, 10.0), ("decode", "io", 0.0, 10.0)], end_s=10.0),
             RankTimeline(spans=[("forward", "busy", 0.0, 10.0)], end_s=10.0)]
    slow = _slowdown(SimpleNamespace(patch=1, replicas=1, threads_per_rank=1), SimpleNamespace(compute_slots=2),
                     Replay(ranks=ranks, first_frame_s=10.0))
    assert slow.busy == pytest.approx(1.5) and slow.io == pytest.approx(1.5)
    assert _slowdown(s, SimpleNamespace(compute_slots=None), Replay(ranks=[stage], first_frame_s=15.0)).busy == 1.0
