"""Prompts of a run: the prompt active for each block, encoded once on rank 0 and shared with every rank."""

from __future__ import annotations

from pathlib import Path

import torch

from paravideo.config import RunConfig
from paravideo.models.factors import first_output_frame
from paravideo.models.family import ModelFamily
from paravideo.models.text import TextEncoder
from paravideo.models.wan.loading import DTYPES
from paravideo.parallel.layout import DistContext
from paravideo.parallel.stage_runner import DRIVER_RANK
from paravideo.telemetry.recorder import Recorder
from paravideo.schedule.plan import BlockPlan

def block_prompts(config: RunConfig, plan: BlockPlan, time_stride: int) -> tuple[list[str], list[int]]:
    """Distinct prompt texts and, per block, the index of the prompt active at its first output frame
    (frame 0 alone, then `time_stride` output frames per latent frame)."""
    spans = config.video.prompt_spans()
    texts: list[str] = []
    per_block: list[int] = []
    for block in plan.blocks:
        first = first_output_frame(block.start, time_stride)
        active = [s.text for s in spans if s.from_frame <= first][-1]
        if active not in texts:
            texts.append(active)
        per_block.append(texts.index(active))
    return texts, per_block


def encode_texts(config: RunConfig, family: ModelFamily, root: Path, ctx: DistContext, prompts: list[str],
                 text_dim: int, recorder: Recorder) -> torch.Tensor:
    """Rank 0 encodes the prompts (+ negative prompt) once; every rank receives the embeddings."""
    use_cfg = config.sampling.guidance_scale > 1.0
    all_prompts = prompts + ([config.video.negative_prompt] if use_cfg else [])
    shape = (len(all_prompts), config.model.text_max_length, text_dim)
    if ctx.is_driver:
        # On GPU the encoder runs in the model's dtype (UMT5-XXL is 21 GiB in float32); CPU keeps float32.
        dtype = DTYPES[config.model.dtype] if ctx.device.type == "cuda" else torch.float32
        tokenizer, encoder = family.load_text_encoder(root, dtype=dtype, device=ctx.device)
        embeds = TextEncoder(tokenizer, encoder, max_length=config.model.text_max_length).encode(all_prompts)
        del encoder
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()  # give the encoder's memory back before the stage's activations need it
    else:
        embeds = torch.zeros(shape)
    if ctx.distributed:
        import torch.distributed as dist

        wire = embeds.to(ctx.device)
        dist.broadcast(wire, src=DRIVER_RANK)
        embeds = wire.cpu()
        if ctx.is_driver:
            recorder.add_bytes("text", wire.numel() * wire.element_size() * (ctx.world_size - 1))
    return embeds


def projected_texts(stage, embeds: torch.Tensor, num_prompts: int, use_cfg: bool) -> dict:
    """Per prompt: projected text, batched with the negative prompt's under CFG."""
    projected = stage.project_text(embeds)
    out = {}
    for i in range(num_prompts):
        out[i] = torch.cat([projected[i:i + 1], projected[-1:]]) if use_cfg else projected[i:i + 1]
    return out
