"""Whole-video generation equals diffusers' WanPipeline for the same prompt, noise and scheduler."""

import pytest
import torch

from paravideo.generate import generate


@pytest.mark.parametrize("scheduler", ["unipc", "flow_euler"])
def test_whole_video_equals_wan_pipeline(make_config, tiny_root, scheduler):
    from diffusers import WanPipeline

    from paravideo.schedule.sampler import make_scheduler

    config = make_config(sampling={"scheduler": scheduler, "steps": 4, "guidance_scale": 4.0, "seed": 3},
                         output={"save_latents": True})
    report = generate(config)
    ours = torch.load(f"{config.output.dir}/latents.pt", weights_only=True)

    pipe = WanPipeline.from_pretrained(tiny_root)
    pipe.scheduler = make_scheduler(scheduler, dict(pipe.scheduler.config))
    v = config.video
    noise = torch.randn((1, 16, v.latent_frames, v.height // 8, v.width // 8),
                        generator=torch.Generator().manual_seed(config.sampling.seed))
    with torch.no_grad():
        theirs = pipe(prompt=v.prompt, negative_prompt=v.negative_prompt, height=v.height, width=v.width,
                      num_frames=v.num_frames, num_inference_steps=config.sampling.steps,
                      guidance_scale=config.sampling.guidance_scale, latents=noise.clone(),
                      output_type="latent").frames
    assert report.complete and report.blocks == 1
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= 1e-5
