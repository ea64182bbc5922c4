"""Wan2.2 layouts: the A14B two-expert model and the TI2V-5B layout run block-wise on 1-3 ranks with the same
video, the expert rule is WanPipeline's, stage loads hold both experts' layers, streamed decode is exact, and
folders paravideo cannot run exactly are refused before any worker starts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BASE_CONFIG, WAN_INDEX, deep_update, write_wan_folder

from paravideo.errors import ConfigError, ModelLoadError
from paravideo.generate import generate, preflight
from paravideo.models.builtin import ensure_builtin
from paravideo.models.family import inspect_model

# Two blocks of 2 latent frames + 1 of 1, one context frame, the feature cache on; 4 steps (A14B: 2 per expert).
BLOCKS = {"block_frames": 2, "context_frames": 1, "feature_cache": True}
MODELS = {"tiny-a14b": {"video": {"num_frames": 17}, "sampling": {"steps": 4, "guidance_scale_2": 2.0}},
          "tiny-ti2v": {"video": {"num_frames": 17, "height": 128, "width": 128}, "sampling": {"steps": 4}}}


def _sections(model: str, **extra) -> dict:
    sections = deep_update(MODELS[model], {"model": {"path": f"builtin:{model}"}, "blocks": BLOCKS,
                                           "output": {"save_latents": True, "frames_png": True}})
    return deep_update(sections, extra)


def _pngs(out_dir) -> np.ndarray:
    import imageio.v3 as iio

    return np.stack([iio.imread(p) for p in sorted(Path(out_dir, "frames").glob("*.png"))])


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    """The 1-rank block-wise run of each Wan2.2 built-in model."""
    from paravideo.config import parse_config

    runs = {}
    for model in MODELS:
        data = deep_update(BASE_CONFIG, _sections(model, output={"dir": str(tmp_path_factory.mktemp(model) / "r")}))
        config = parse_config(data)
        runs[model] = (config, generate(config))
    return runs


def _assert_same_video(config, report, reference) -> None:
    ref_config, ref = reference
    assert report.complete and report.block_digests == ref.block_digests
    ours = torch.load(Path(config.output.dir) / "latents.pt", weights_only=True)
    assert torch.equal(ours, torch.load(Path(ref_config.output.dir) / "latents.pt", weights_only=True))
    assert np.array_equal(_pngs(config.output.dir), _pngs(ref_config.output.dir))


@pytest.mark.slow
@pytest.mark.parametrize("model, parallel", [
    ("tiny-a14b", {"pipeline": 2}), ("tiny-a14b", {"pipeline": 3}),
    ("tiny-ti2v", {"pipeline": 2}), ("tiny-ti2v", {"pipeline": 3}),
    ("tiny-ti2v", {"patch": 2, "patch_mode": "exact"}),
], ids=["a14b-pipe2", "a14b-pipe3", "ti2v-pipe2", "ti2v-pipe3", "ti2v-patch2"])
def test_ranks_give_the_one_rank_video(make_config, one_rank, model, parallel):
    ranks = parallel.get("pipeline", 1) * parallel.get("patch", 1)
    config = make_config(**_sections(model, parallel=parallel, launch={"launcher": "local", "nproc": ranks}))
    report = generate(config)
    _assert_same_video(config, report, one_rank[model])
    assert report.world_size == ranks
    if model == "tiny-a14b":
        # Each rank holds its layers of both experts, and run.json says how many bytes of each.
        for row in report.ranks:
            assert set(row["param_bytes_by_expert"]) == {"transformer", "transformer_2"}
            assert sum(row["param_bytes_by_expert"].values()) == row["param_bytes"]


def test_a14b_runs_both_experts_in_one_iteration(one_rank):
    """Blocks at different noise levels share an iteration, so both experts run in the same iteration."""
    from paravideo.schedule.plan import make_plan

    config, report = one_rank["tiny-a14b"]
    experts = report.model["expert_of_step"]
    assert report.model["experts"] == ["transformer", "transformer_2"] and set(experts) == {0, 1}
    plan = make_plan(report.latent_frames, 2, 4, 1, True)
    mixed = [i for i in range(plan.iterations)
             if len({experts[f.step] for f in plan.forwards if f.iteration == i}) == 2]
    assert mixed, "no iteration ran both experts"


def test_ti2v_run_reports_its_factors(one_rank):
    config, report = one_rank["tiny-ti2v"]
    assert report.model["latent_channels"] == 48 and report.model["spatial_stride"] == 16
    assert report.model["timestep_form"] == "per_token"
    assert report.frames == 17


@pytest.mark.parametrize("offset, expected", [(1e-3, 0), (0.0, 0), (-1e-3, 1)])
def test_expert_rule_matches_wan_pipeline_at_the_boundary(offset, expected):
    """WanPipeline: `t >= boundary_ratio * num_train_timesteps` runs `transformer`, else `transformer_2`."""
    _, factors = inspect_model(ensure_builtin("tiny-a14b"))
    t = torch.tensor(factors.boundary_ratio * factors.num_train_timesteps + offset)
    boundary_timestep = factors.boundary_ratio * 1000  # the pipeline's own expression
    wan_pipeline_choice = 0 if t >= boundary_timestep else 1
    assert factors.expert_for(float(t)) == wan_pipeline_choice == expected


def test_expert_choice_of_a_run_follows_the_timesteps():
    from paravideo.models.experts import ExpertChoice

    _, factors = inspect_model(ensure_builtin("tiny-a14b"))
    timesteps = torch.tensor([999.0, 875.0, 874.0, 500.0])
    choice = ExpertChoice.for_run(factors, timesteps, 5.0, 3.0)
    assert choice.expert_of_step == (0, 0, 1, 1)
    assert [choice.guidance(s) for s in range(4)] == [5.0, 5.0, 3.0, 3.0]
    assert ExpertChoice.for_run(factors, timesteps, 5.0, None).guidance_scales == (5.0, 5.0)


@torch.no_grad()
def test_a14b_stage_load_holds_exactly_its_layers_of_both_experts():
    from diffusers import WanTransformer3DModel

    root = ensure_builtin("tiny-a14b")
    family, factors = inspect_model(root)
    stages = family.load_stages(root, factors, 1, 3, dtype=torch.float32, device=torch.device("cpu"))
    assert len(stages) == 2 and stages[0].hooks is stages[1].hooks
    for stage, part in zip(stages, factors.experts):
        reference = WanTransformer3DModel.from_pretrained(root / part).state_dict()
        names = {n for n, _ in stage.model.named_parameters()}
        assert {n.split(".")[1] for n in names if n.startswith("blocks.")} == {"0", "1"}
        for name, param in stage.model.named_parameters():
            ref_name = name
            if name.startswith("blocks."):
                index, rest = name.split(".", 2)[1:]
                ref_name = f"blocks.{int(index) + 1}.{rest}"
            assert torch.equal(param, reference[ref_name]), f"{part}: {name}"
    # The experts differ (different weights), so a run that used one for both would be caught.
    assert not torch.equal(stages[0].model.blocks[0].attn1.to_q.weight, stages[1].model.blocks[0].attn1.to_q.weight)


@torch.no_grad()
def test_ti2v_streamed_decode_equals_one_shot_decode():
    root = ensure_builtin("tiny-ti2v")
    family, factors = inspect_model(root)
    vae = family.load_vae(root, device=torch.device("cpu"))
    latents = torch.randn(1, factors.latent_channels, 5, 4, 4, generator=torch.Generator().manual_seed(0))
    decoder = family.streaming_decoder(vae)
    streamed = torch.cat([decoder.decode(latents[:, :, lo:hi]) for lo, hi in ((0, 2), (2, 4), (4, 5))], dim=2)
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = 1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    whole = vae.decode(latents / std + mean, return_dict=False)[0]
    assert streamed.shape == whole.shape == (1, 3, 17, 64, 64)
    assert torch.equal(streamed, whole)


def test_resume_of_an_a14b_run_equals_the_uninterrupted_run(make_config, monkeypatch, one_rank):
    from paravideo.cli import main

    config = make_config(**_sections("tiny-a14b", output={"checkpoint_every": 1, "save_latents": False}))
    monkeypatch.setenv("PARAVIDEO_FAULT", "0:9")
    with pytest.raises(RuntimeError, match="injected failure"):
        generate(config)
    monkeypatch.delenv("PARAVIDEO_FAULT")
    assert main(["generate", "--resume", config.output.dir]) == 0
    data = json.loads((Path(config.output.dir) / "run.json").read_text())
    assert data["complete"] and data["block_digests"] == one_rank["tiny-a14b"][1].block_digests
    assert np.array_equal(_pngs(config.output.dir), _pngs(one_rank["tiny-a14b"][0].output.dir))


def test_guidance_scale_2_needs_two_experts_and_guidance(make_config):
    with pytest.raises(ConfigError, match="sampling.guidance_scale_2 applies to two-expert models"):
        preflight(make_config(sampling={"guidance_scale_2": 3.0}))
    with pytest.raises(ConfigError, match="guidance_scale_2 = 3.0 has no effect"):
        make_config(model={"path": "builtin:tiny-a14b"}, sampling={"guidance_scale": 1.0, "guidance_scale_2": 3.0})


def test_sizes_are_checked_with_the_models_factors(make_config):
    with pytest.raises(ConfigError, match=r"video.height: must be a multiple of 32 .*16x.*nearest valid values: 32 or 64"):
        preflight(make_config(model={"path": "builtin:tiny-ti2v"}, video={"height": 48, "width": 64}))
    with pytest.raises(ConfigError, match=r"video.num_frames: must be of the form 4k\+1.*17 or 21"):
        preflight(make_config(video={"num_frames": 18}))
    with pytest.raises(ConfigError, match="video.width: must be a multiple of 16.*96 or 112"):
        preflight(make_config(video={"width": 100}))
    with pytest.raises(ConfigError, match=r"parallel.patch = 3 bands.*2 token rows \(height / 32"):
        preflight(make_config(model={"path": "builtin:tiny-ti2v"}, video={"height": 64, "width": 64},
                              parallel={"patch": 3}, launch={"launcher": "local", "nproc": 3}))


# A Wan2.1-shaped transformer config for the refusal cases (no weights needed: refusals come first).
TRANSFORMER = {"_class_name": "WanTransformer3DModel", "num_layers": 2, "num_attention_heads": 2,
               "attention_head_dim": 16, "in_channels": 16, "out_channels": 16, "text_dim": 32, "ffn_dim": 64}
A14B_INDEX = {**WAN_INDEX, "transformer_2": ["diffusers", "WanTransformer3DModel"], "boundary_ratio": 0.875}
EXPERTS = ("transformer", "transformer_2")
REFUSALS = [
    ("i2v_pipeline", dict(index={**WAN_INDEX, "_class_name": "WanImageToVideoPipeline"}),
     ["'WanImageToVideoPipeline'", "WanPipeline"]),
    ("unknown_pipeline", dict(index={**WAN_INDEX, "_class_name": "FluxPipeline"}),
     ["'FluxPipeline'", "supported pipelines: WanPipeline"]),
    ("image_encoder", dict(index={**WAN_INDEX, "image_encoder": ["transformers", "CLIPVisionModel"]}),
     ["image encoder", "'image_encoder'"]),
    ("unknown_component", dict(index={**WAN_INDEX, "refiner": ["diffusers", "WanTransformer3DModel"]}),
     ["'refiner'", "supported components"]),
    ("unknown_option", dict(transformer={**TRANSFORMER, "sparse_attention": True}),
     ["sparse_attention", "does not implement"]),
    ("image_dim", dict(transformer={**TRANSFORMER, "image_dim": 1280}), ["image_dim", "image-to-video"]),
    ("second_expert_without_boundary", dict(index={**A14B_INDEX, "boundary_ratio": None}, experts=EXPERTS),
     ["transformer_2", "boundary_ratio"]),
    ("boundary_without_second_expert", dict(index={**WAN_INDEX, "boundary_ratio": 0.9}),
     ["boundary_ratio 0.9", "no transformer_2"]),
    ("bad_boundary", dict(index={**A14B_INDEX, "boundary_ratio": 1.5}, experts=EXPERTS), ["boundary_ratio 1.5"]),
    ("vae_channels", dict(vae={"z_dim": 48}), ["z_dim 48", "in_channels 16"]),
    ("unknown_vae_option", dict(vae={"temporal_tiling": True}), ["temporal_tiling", "AutoencoderKLWan"]),
    ("wrong_vae_class", dict(index={**WAN_INDEX, "vae": ["diffusers", "AutoencoderKLHunyuanVideo"]}),
     ["'vae'", "AutoencoderKLHunyuanVideo"]),
]


@pytest.mark.parametrize("case, folder, expected", REFUSALS, ids=[c[0] for c in REFUSALS])
def test_unsupported_folders_are_refused_before_any_worker(case, folder, expected, tmp_path, monkeypatch, capsys):
    from paravideo import generate as generate_module
    from paravideo.cli import main

    folder = dict(folder)
    root = write_wan_folder(tmp_path / "model", folder.pop("transformer", TRANSFORMER), **folder)
    monkeypatch.setattr(generate_module, "launch", lambda config: pytest.fail("workers were launched"))
    data = deep_update(BASE_CONFIG, {"model": {"path": str(root)}, "output": {"dir": str(tmp_path / "out")}})
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(data))
    assert main(["generate", "-c", str(path)]) == 2
    message = capsys.readouterr().err
    for fragment in ["model.path", *expected]:
        assert fragment in message, f"{case}: {fragment!r} missing from:\n{message}"


def test_experts_of_different_shapes_are_refused(tmp_path):
    root = write_wan_folder(tmp_path / "m", TRANSFORMER, index=A14B_INDEX, experts=EXPERTS)
    (root / "transformer_2" / "config.json").write_text(json.dumps({**TRANSFORMER, "num_layers": 3}))
    with pytest.raises(ModelLoadError, match="transformer and transformer_2 differ in num_layers"):
        inspect_model(root)


def test_builtin_wan22_folders_are_diffusers_layouts():
    a14b = json.loads((ensure_builtin("tiny-a14b") / "model_index.json").read_text())
    assert a14b["boundary_ratio"] == 0.875 and a14b["transformer_2"] == ["diffusers", "WanTransformer3DModel"]
    ti2v = json.loads((ensure_builtin("tiny-ti2v") / "model_index.json").read_text())
    assert ti2v["expand_timesteps"] is True
    vae = json.loads((ensure_builtin("tiny-ti2v") / "vae" / "config.json").read_text())
    assert (vae["z_dim"], vae["is_residual"], vae["scale_factor_spatial"], vae["patch_size"]) == (48, True, 16, 2)


def test_cost_model_counts_both_experts_and_the_models_strides(make_config):
    from paravideo.costmodel.memory import memory_by_rank
    from paravideo.costmodel.profiles import load_profile
    from paravideo.costmodel.scenario import DecodeShape, Scenario
    from paravideo.costmodel.shapes import DiTShape, stage_param_bytes

    tiny, a14b = (DiTShape.from_folder(ensure_builtin(m)) for m in ("tiny", "tiny-a14b"))
    assert (tiny.experts, a14b.experts) == (1, 2)
    assert stage_param_bytes(a14b, 2, 4) == 2 * stage_param_bytes(tiny, 2, 4)
    ti2v = DiTShape.from_folder(ensure_builtin("tiny-ti2v"))
    assert (ti2v.in_channels, ti2v.spatial_stride, ti2v.time_stride) == (48, 16, 4)
    scenario = Scenario.from_config(make_config(model={"path": "builtin:tiny-ti2v"}, video={"height": 64, "width": 96}))
    assert (scenario.latent_frames, scenario.latent_height, scenario.latent_width) == (5, 4, 6)
    profile = load_profile("cpu-local")
    one, two = (memory_by_rank(Scenario.from_config(make_config(model={"path": f"builtin:{m}"})), profile,
                               DecodeShape())
                for m in ("tiny", "tiny-a14b"))
    assert two[0].weights == 2 * one[0].weights
