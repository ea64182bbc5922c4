"""Whole-video generation equals diffusers' WanPipeline for the same folder, prompt, noise and scheduler:
Wan2.1's layout, Wan2.2-T2V-A14B's two experts and Wan2.2-TI2V-5B's 48-channel VAE with per-token timesteps."""

import pytest
import torch

from paravideo.generate import generate, preflight
from paravideo.models.builtin import ensure_builtin

# (model, scheduler, sampling changes): A14B with 4 UniPC steps runs 2 steps on each expert.
CASES = [
    ("tiny", "unipc", {}),
    ("tiny", "flow_euler", {}),
    ("tiny-a14b", "unipc", {"guidance_scale_2": 2.5}),
    ("tiny-a14b", "flow_euler", {}),
    ("tiny-ti2v", "unipc", {}),
]


@pytest.mark.parametrize("model, scheduler, sampling", CASES, ids=[f"{m}-{s}" for m, s, _ in CASES])
def test_whole_video_equals_wan_pipeline(make_config, model, scheduler, sampling):
    from diffusers import WanPipeline

    from paravideo.schedule.sampler import make_scheduler

    size = {"height": 64, "width": 64} if model == "tiny-ti2v" else {}  # TI2V sizes step by 32 (16x VAE, 2x2 patch)
    config = make_config(model={"path": f"builtin:{model}"}, video=size,
                         sampling={"scheduler": scheduler, "steps": 4, "guidance_scale": 4.0, "seed": 3, **sampling},
                         output={"save_latents": True})
    factors = preflight(config)
    report = generate(config)
    ours = torch.load(f"{config.output.dir}/latents.pt", weights_only=True)

    pipe = WanPipeline.from_pretrained(ensure_builtin(model))
    pipe.scheduler = make_scheduler(scheduler, dict(pipe.scheduler.config))
    v = config.video
    rows, cols = factors.latent_size(v.height, v.width)
    noise = torch.randn((1, factors.latent_channels, factors.latent_frames(v.num_frames), rows, cols),
                        generator=torch.Generator().manual_seed(config.sampling.seed))
    with torch.no_grad():
        theirs = pipe(prompt=v.prompt, negative_prompt=v.negative_prompt, height=v.height, width=v.width,
                      num_frames=v.num_frames, num_inference_steps=config.sampling.steps,
                      guidance_scale=config.sampling.guidance_scale,
                      guidance_scale_2=config.sampling.guidance_scale_2, latents=noise.clone(),
                      output_type="latent").frames
    assert report.complete and report.blocks == 1
    if model == "tiny-a14b":
        assert set(report.model["expert_of_step"]) == {0, 1}, "both experts must run in this test"
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= 1e-5
