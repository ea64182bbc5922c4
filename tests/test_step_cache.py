"""Step caching: the policy, exact residual reuse on the stage runner, the same reuse and video for any split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import BASE_CONFIG, deep_update
from paravideo.cache.feature_cache import FeatureCache
from paravideo.cache.step_cache import StepCache
from paravideo.cache.step_policy import BlockIndicator, StepCachePolicy, change_stats, relative_change
from paravideo.config import StepCacheConfig, parse_config
from paravideo.errors import ConfigError
from paravideo.generate import generate
from paravideo.schedule.plan import make_plan

TEACACHE = {"policy": "teacache", "threshold": 0.2, "schedule": "flat", "warmup_steps": 1}
# 5 latent frames in blocks of 2 with 1 context frame: 3 blocks x 6 steps. 80 x 128 px has 5 token rows, so
# 2 bands are uneven (3 + 2) and every band window holds >= 16 tokens, as in test_patch_parallel.
RUN = {"video": {"num_frames": 17, "height": 80, "width": 128}, "blocks": {"block_frames": 2, "context_frames": 1},
       "sampling": {"steps": 6}, "output": {"save_latents": True}, "cache": {"step": TEACACHE}}


# ---- the policy (pure) ----

def _policy(steps=8, expert_of_step=None, checkpoint_every=0, **cfg):
    cfg = StepCacheConfig(**{"policy": "teacache", **cfg})
    unit = torch.linspace(1.0, 0.0, steps + 1)[:-1]
    return StepCachePolicy.from_config(cfg, timesteps_unit=unit, expert_of_step=expert_of_step or (0,) * steps,
                                       checkpoint_every=checkpoint_every)


def _forwards(steps, blocks=1):
    return [f for f in make_plan(blocks * 2, 2, steps).forwards if f.block == 0]


def test_forced_steps_warmup_cooldown_expert_switch_and_refresh():
    policy = _policy(warmup_steps=2, cooldown_steps=1, expert_of_step=(0, 0, 0, 0, 1, 1, 1, 1))
    assert policy.forced == {0: "warm-up", 1: "warm-up", 4: "expert switch", 7: "cool-down"}
    refresh = _policy(checkpoint_every=3)
    assert [refresh.forced_reason(f) for f in _forwards(8)][2:7] == [None, "refresh", None, None, "refresh"]


def test_bell_schedule_has_no_budget_at_the_ends():
    bell, flat = _policy(threshold=0.5), _policy(threshold=0.5, schedule="flat")
    assert bell.budget(0) == 0.0 and max(bell.weights) <= 1.0 and bell.budget(4) == pytest.approx(0.5)
    assert bell.budget(1) < bell.budget(3) and bell.budget(7) < bell.budget(5)
    assert set(flat.weights) == {1.0}


def test_teacache_accumulates_and_threshold_zero_never_reuses():
    policy = _policy(threshold=0.25, schedule="flat", warmup_steps=1, cooldown_steps=1, max_consecutive=2)
    state, verdicts = BlockIndicator(), []
    for fwd, change in zip(_forwards(8), [None, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01]):
        verdicts.append(policy.decide(fwd, change, state).reason)
    assert verdicts == ["warm-up", "within budget", "within budget", "max consecutive", "within budget",
                        "within budget", "max consecutive", "cool-down"]
    never = _policy(threshold=0.0, schedule="flat", warmup_steps=1, cooldown_steps=0)
    state = BlockIndicator()
    assert not any(never.decide(f, 0.0, state).reuse for f in _forwards(8))


def test_change_statistics_are_the_same_summed_over_bands():
    torch.manual_seed(0)
    cur, ref = torch.randn(2, 5 * 7 * 3, 16), torch.randn(2, 5 * 7 * 3, 16)  # 5 rows of 7 x 3 tokens
    whole = change_stats(cur, ref)
    rows = lambda x, lo, hi: x.view(2, 5, 21, 16)[:, lo:hi].reshape(2, -1, 16)  # noqa: E731
    banded = sum(change_stats(rows(cur, lo, hi), rows(ref, lo, hi)) for lo, hi in [(0, 3), (3, 4), (4, 5)])
    assert torch.equal(whole, banded)
    assert relative_change(whole) == pytest.approx(((cur - ref).abs().sum() / ref.abs().sum()).item(), rel=1e-5)


@pytest.mark.parametrize("step, sampling, parallel, field", [
    ({"policy": "sometimes"}, {}, {}, "cache.step.policy"),
    ({"threshold": -0.1}, {}, {}, "cache.step.threshold"),
    ({"threshold": 11.0}, {}, {}, "cache.step.threshold"),
    ({"threshold": float("nan")}, {}, {}, "cache.step.threshold"),
    ({"warmup_steps": 0}, {}, {}, "cache.step.warmup_steps"),
    ({"max_consecutive": 0}, {}, {}, "cache.step.max_consecutive"),
    ({"spare": 1}, {}, {}, "cache.step.spare"),
    ({"policy": "teacache", "warmup_steps": 3, "cooldown_steps": 1}, {"steps": 4}, {}, "cooldown_steps"),
    ({"policy": "teacache", "cooldown_steps": 0}, {"steps": 8}, {"patch": 2, "patch_mode": "pcpp"},
     "cooldown_steps >= 1"),
])
def test_bad_step_cache_settings_name_the_field(step, sampling, parallel, field):
    data = deep_update(BASE_CONFIG, {"cache": {"step": step}, "sampling": sampling, "parallel": parallel})
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        parse_config(data)


# ---- the stage runner: a forced reuse adds exactly the stored residual ----

class _Source:
    """Deterministic hidden states per forward (stands in for the embedding)."""

    def __init__(self, shape_of):
        self.shape_of, self.given = shape_of, {}

    def hidden(self, fwd, frames):
        gen = torch.Generator().manual_seed(fwd.seq)
        self.given[fwd.seq] = torch.randn(self.shape_of(frames), generator=gen)
        return self.given[fwd.seq].clone()

    def release(self, hidden):
        pass

    def finish(self):
        pass


class _Sink:
    def __init__(self):
        self.out = {}

    def put(self, fwd, hidden, cond):
        self.out[fwd.seq] = hidden.clone()

    def finish(self):
        pass


def _runner(tiny_root, override):
    from paravideo.models.experts import ExpertChoice, ExpertStages
    from paravideo.models.wan.adapter import WanStage
    from paravideo.models.wan.loading import load_transformer_stage
    from paravideo.parallel.stage_runner import Geometry, StageRunner
    from paravideo.telemetry.recorder import Recorder

    steps = 4
    plan = make_plan(5, 2, steps, context_frames=1)
    stage = WanStage(load_transformer_stage(tiny_root, 0, 4, dtype=torch.float32, device=torch.device("cpu")),
                     lo=0, hi=4, num_layers=4)
    experts = ExpertStages([stage], ExpertChoice((0,) * steps, (4.0,)))
    cache_kv = FeatureCache(retain=True)
    experts.hooks.add(FeatureCache.name, cache_kv)
    policy = _policy(steps=steps, threshold=0.0, warmup_steps=1, cooldown_steps=0)  # computes unless overridden
    recorder = Recorder(keep_spans=True)
    cache = StepCache(experts, policy, first_stage=True, last_stage=True, recorder=recorder,
                      feature_cache=cache_kv, max_blocks=plan.max_queue)
    cache.override.update(override)
    geo = Geometry(channels=16, height=4, width=6, batch=2, dim=stage.dim, patch_hw=(2, 2))
    text = torch.randn(2, 8, stage.dim, generator=torch.Generator().manual_seed(1))
    source, sink = _Source(geo.hidden_shape), _Sink()
    layer_calls = []
    real_run = stage.run_layers
    stage.run_layers = lambda h, c, **kw: (layer_calls.append(1), real_run(h, c, **kw))[1]
    runner = StageRunner(experts, plan, texts=[{0: text}], block_prompt=[0] * len(plan.blocks),
                         timesteps=torch.tensor([999.0, 750.0, 500.0, 250.0]), geometry=geo, recorder=recorder,
                         source=source, sink=sink, layers=cache)
    return plan, runner, cache, cache_kv, source, sink, layer_calls, recorder


def test_forced_reuse_adds_exactly_the_stored_residual(tiny_root):
    plan, runner, *_, ref_source, ref_sink, _, _ = _runner(tiny_root, {})
    runner.run()
    target = next(f for f in plan.forwards if f.block == 1 and f.step == 2)
    prev = next(f for f in plan.forwards if f.block == 1 and f.step == 1)
    plan, runner, cache, kv, source, sink, calls, recorder = _runner(tiny_root, {target.seq: True})
    stored, kept = {}, {}

    def before(fwd):
        if fwd.seq == target.seq:
            stored["residual"] = cache.residuals[1].clone()
            kept["kv"] = kv.peek(1, 0)
            calls.clear()

    def after(fwd):
        if fwd.seq == target.seq:
            kept["calls"], kept["kv_after"] = len(calls), kv.peek(1, 0)

    runner.before_forward, runner.after_forward = before, after
    runner.run()
    # The residual block 1 left at its previous (computed) step, added to this forward's input, bit for bit.
    assert torch.equal(stored["residual"], ref_sink.out[prev.seq] - ref_source.given[prev.seq])
    assert torch.equal(sink.out[target.seq], source.given[target.seq] + stored["residual"])
    assert kept["calls"] == 0  # no layer ran
    assert kept["kv_after"] is kept["kv"] and kept["kv"] is not None  # block 0 reads the last computed K/V
    assert cache.decisions[target.seq].reuse and cache.reused_seqs() == [target.seq]
    # Forwards before it are the uncached ones; the reuse is a span of its own.
    assert all(torch.equal(sink.out[s], ref_sink.out[s]) for s in range(target.seq))
    assert [s.args["block"] for s in recorder.spans if s.name == "step cache: reuse"] == [1]
    assert not cache.residuals and not cache.indicators  # every block left the queue


# ---- end to end ----

def _config(tmp, name, **sections):
    data = deep_update(deep_update(BASE_CONFIG, RUN), sections)
    return parse_config(deep_update(data, {"output": {"dir": str(tmp / name)}}))


def _latents(config):
    return torch.load(Path(config.output.dir) / "latents.pt", weights_only=True)


@pytest.fixture(scope="module")
def cached_one_rank(tmp_path_factory):
    config = _config(tmp_path_factory.mktemp("one"), "run")
    return config, generate(config)


def test_threshold_zero_is_bit_identical_to_off(tmp_path, cached_one_rank):
    off_cfg = _config(tmp_path, "off", cache={"step": {"policy": "off"}})
    zero_cfg = _config(tmp_path, "zero", cache={"step": {"threshold": 0.0}})
    off, zero = generate(off_cfg), generate(zero_cfg)
    assert zero.block_digests == off.block_digests and torch.equal(_latents(zero_cfg), _latents(off_cfg))
    assert zero.step_cache["forwards_reused"] == 0 and off.step_cache is None
    cached = cached_one_rank[1]
    assert cached.block_digests != off.block_digests  # reuse is an approximation, and it happened
    section = cached.step_cache
    assert 0 < section["forwards_reused"] < section["forwards"] == 18
    assert section["saved_fraction"] == section["forwards_reused"] / section["forwards"]
    assert all(b["computed"][0] == 0 and 5 in b["computed"] for b in section["blocks"])  # warm-up, cool-down
    assert cached.ranks[0]["step_cache"]["peak_blocks"] <= cached.plan["max_queue"]


@pytest.mark.slow
@pytest.mark.parametrize("parallel", [{"pipeline": 2}, {"pipeline": 3}, {"patch": 2}],
                         ids=["pipe2", "pipe3", "bands2"])
def test_any_split_reuses_the_same_forwards_and_gives_the_same_video(tmp_path, cached_one_rank, parallel):
    ref_config, ref = cached_one_rank
    ranks = parallel.get("pipeline", 1) * parallel.get("patch", 1)
    config = _config(tmp_path, "run", parallel=parallel, launch={"launcher": "local", "nproc": ranks},
                     output={"trace": True})
    report = generate(config)
    assert report.block_digests == ref.block_digests and torch.equal(_latents(config), _latents(ref_config))
    assert report.step_cache == ref.step_cache  # per block computed / reused steps and the indicator
    reused = ref.ranks[0]["step_cache"]["reused_forwards"]
    assert reused and all(r["step_cache"]["reused_forwards"] == reused for r in report.ranks)
    # Reused forwards are spans on every rank's track.
    events = json.loads((Path(config.output.dir) / "trace.json").read_text())["traceEvents"]
    for rank in range(ranks):
        spans = [e for e in events if e["ph"] == "X" and e["pid"] == rank and e["name"] == "step cache: reuse"]
        assert len(spans) == len(reused)
    kinds = report.ranks[0]["bytes_by_kind"]
    if "pipeline" in parallel:
        assert kinds["step_cache_header"] == 16 * 18 and kinds["step_cache_start"] > 0
    else:
        assert kinds["step_cache_stats"] > 0


def test_resume_of_a_cached_run_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    from paravideo.cli import main

    run = {"video": {"num_frames": 25}, "output": {"checkpoint_every": 2}}
    full = generate(_config(tmp_path, "full", **run))
    # Reuse happens after the resume point too (iteration 4 on; iterations 4, 6 and 8 are refreshes).
    assert any(b["block"] + step in (5, 7) for b in full.step_cache["blocks"] for step in b["reused"])
    config = _config(tmp_path, "cut", **run)
    monkeypatch.setenv("PARAVIDEO_FAULT", "0:14")  # 4 blocks x 6 steps; checkpoints after iterations 1 and 3
    with pytest.raises(RuntimeError, match="injected failure"):
        generate(config)
    monkeypatch.delenv("PARAVIDEO_FAULT")
    assert main(["generate", "--resume", config.output.dir]) == 0
    resumed = json.loads((Path(config.output.dir) / "run.json").read_text())
    assert resumed["block_digests"] == full.block_digests
    assert resumed["step_cache"] == full.step_cache  # the decision log survives the checkpoint


# ---- the bench: cached plans against the uncached one ----

def test_bench_compares_plans_with_the_reference_plan(tmp_path):
    import imageio.v3 as iio
    import numpy as np
    import yaml

    from paravideo.bench.sweep import load_sweep, sweep_points
    from paravideo.bench.versus import add_versus

    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE_CONFIG))
    sweep_file = tmp_path / "sweep.yaml"
    plans = [{"name": "uncached"}, {"name": "t02", "set": {"cache.step.policy": "teacache",
                                                           "cache.step.threshold": 0.2}}]
    sweep_file.write_text(yaml.safe_dump({"base": "base.yaml", "reference_plan": "nope",
                                          "axes": {"frames": [17], "plans": plans}}))
    with pytest.raises(ConfigError, match="reference_plan 'nope'"):
        load_sweep(sweep_file)
    sweep_file.write_text(yaml.safe_dump({"base": "base.yaml", "reference_plan": "uncached",
                                          "axes": {"frames": [17], "plans": plans}}))
    sweep, base = load_sweep(sweep_file)
    points = sweep_points(sweep, base, tmp_path / "out")
    assert all(p.config.output.frames_png for p in points) and points[1].config.cache.step.threshold == 0.2

    rows = []
    for point, wall, shift in [(points[0], 2.0, 0), (points[1], 1.0, 3)]:
        frames = Path(point.config.output.dir) / "frames"
        frames.mkdir(parents=True)
        for i in range(2):
            iio.imwrite(frames / f"{i:05d}.png", np.full((32, 48, 3), 100 + shift * i, dtype=np.uint8))
        (frames.parent / "run.json").write_text(json.dumps({"step_cache": {"forwards_reused": 5,
                                                                           "saved_fraction": 0.25}}))
        rows.append({"name": point.name, "plan": point.plan, "ranks": 1, "frames": 17, "run_dir":
                     point.config.output.dir, "measured": {"wall_s": wall}})
    add_versus(rows, "uncached")
    ref, cached = rows[0]["versus_reference"], rows[1]["versus_reference"]
    assert ref["equal"] and ref["speedup"] == 1.0
    # One of two frames is off by 3 everywhere: MSE 4.5.
    assert cached["speedup"] == 2.0 and cached["max_abs_error"] == 3.0
    assert cached["psnr_db"] == pytest.approx(10 * np.log10(255 ** 2 / 4.5))
    assert cached["forwards_reused"] == 5 and cached["layer_forwards_saved_fraction"] == 0.25
    from paravideo.bench.versus import versus_table

    assert any("t02-f17-r1 | uncached-f17-r1 | 2.00 |" in line for line in versus_table(rows))


def test_two_expert_model_computes_and_resets_at_the_switch(tmp_path):
    config = _config(tmp_path, "a14b", model={"path": "builtin:tiny-a14b"},
                     cache={"step": {"threshold": 0.5}}, video={"height": 32, "width": 48})
    report = generate(config)
    switch = report.model["expert_of_step"].index(1)
    assert 0 < switch < 5
    for block in report.step_cache["blocks"]:
        assert switch in block["computed"] and block["change"][switch] is None  # reset: no reference across experts
    assert report.step_cache["forwards_reused"] > 0


def test_yaml_off_is_the_off_policy(tmp_path):
    from paravideo.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("video:\n  prompt: x\ncache:\n  step:\n    policy: off\n")
    assert load_config(path).cache.step.policy == "off"
    assert load_config(path, ["cache.step.policy=off"]).cache.step.policy == "off"
    with pytest.raises(ConfigError, match="cache.step.policy"):
        load_config(path, ["cache.step.policy=on"])  # YAML true is no policy


def test_a_step_cache_makes_the_checkpoint_period_part_of_the_video():
    from paravideo.io.checkpoint import config_differences

    def resolved(policy, every):
        data = deep_update(BASE_CONFIG, {"cache": {"step": {"policy": policy}}, "output": {"checkpoint_every": every}})
        return parse_config(data).resolved()

    assert config_differences(resolved("off", 2), resolved("off", 3)) == []
    assert any("checkpoint_every" in d for d in config_differences(resolved("teacache", 2), resolved("teacache", 3)))
    assert any("cache.step.policy" in d for d in config_differences(resolved("off", 2), resolved("teacache", 2)))
    old = resolved("off", 2)
    del old["cache"]  # a checkpoint written before step caching existed still resumes
    assert config_differences(old, resolved("off", 2)) == []
