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
    problems += _sequence_problems(config, factors)
    if config.sampling.guidance_scale_2 is not None and len(factors.experts) == 1:
        problems.append("sampling.guidance_scale_2 applies to two-expert models (Wan2.2-T2V-A14B), but "
                        f"{config.model.path} has one transformer; drop sampling.guidance_scale_2")
    if problems:
        raise ConfigError("invalid config for this model:\n  " + "\n  ".join(problems))


def _sequence_problems(config: RunConfig, factors: ModelFactors) -> list[str]:
    """Ulysses needs whole heads per rank; every rank of a sequence group needs at least one token per window."""
    par, video, problems = config.parallel, config.video, []
    if factors.num_heads % par.ulysses:
        divisors = [d for d in range(1, factors.num_heads + 1) if factors.num_heads % d == 0]
        problems.append(f"parallel.ulysses = {par.ulysses} must divide the model's {factors.num_heads} attention "
                        f"heads (each rank attends with whole heads); use one of {divisors}, or parallel.ring for "
                        "the rest")
    seq = par.ulysses * par.ring
    if seq > 1:
        latent = factors.latent_frames(video.num_frames)
        block = config.blocks.block_frames or latent
        smallest = latent % block or block  # the last block may be shorter
        tokens = smallest * factors.token_rows(video.height) * (video.width // factors.size_multiple[1])
        if tokens < seq:
            problems.append(f"parallel.ulysses x parallel.ring = {seq} ranks split each window's tokens, but the "
                            f"smallest window holds {tokens} tokens; use at most {tokens} ranks, or larger blocks")
    return problems
