"""Config checks that need the model's factors: run at preflight, before any worker starts."""

from __future__ import annotations

from paravideo.config import RunConfig
from paravideo.errors import ConfigError
from paravideo.models.factors import ModelFactors


def check_against_model(config: RunConfig, factors: ModelFactors) -> None:
    """Raise ConfigError naming the field and the model's factor when the config does not fit the model."""
    video = config.video
    factors.check_video(video.num_frames, video.height, video.width)
    problems = []
    latent = factors.latent_frames(video.num_frames)
    block = config.blocks.block_frames
    if block > latent:
        problems.append(f"blocks.block_frames = {block} is larger than the video's {latent} latent frames "
                        f"(video.num_frames = {video.num_frames}, time stride {factors.time_stride}); use at most "
                        f"{latent}, or 0 for one block")
    rows = factors.token_rows(video.height)
    if config.parallel.patch > rows:
        problems.append(f"parallel.patch = {config.parallel.patch} bands, but video.height = {video.height} gives "
                        f"{rows} token rows (height / {factors.size_multiple[0]} for this model); use at most {rows} "
                        "bands, or a taller video")
    if config.sampling.guidance_scale_2 is not None and len(factors.experts) == 1:
        problems.append("sampling.guidance_scale_2 applies to two-expert models (Wan2.2-T2V-A14B), but "
                        f"{config.model.path} has one transformer; drop sampling.guidance_scale_2")
    if problems:
        raise ConfigError("invalid config for this model:\n  " + "\n  ".join(problems))
