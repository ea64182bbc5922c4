"""What one rank loads and derives for a run: the model's factors, its layers of every expert, the block
plan and schedulers, the projected prompts, and the geometry of its share of each frame."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from paravideo.config import RunConfig
from paravideo.models.builtin import resolve_model_path
from paravideo.models.experts import ExpertChoice, ExpertStages
from paravideo.models.factors import ModelFactors
from paravideo.models.family import ModelFamily, inspect_model
from paravideo.models.wan.loading import DTYPES, read_scheduler_config
from paravideo.parallel.layout import DistContext, ParallelLayout
from paravideo.parallel.balance import Split, SplitCosts, choose_split
from paravideo.parallel.patch.bands import BandSplit
from paravideo.parallel.seq.split import SeqShare
from paravideo.parallel.stage_runner import Geometry
from paravideo.runtime.prompts import block_prompts, encode_texts, projected_texts
from paravideo.schedule.plan import BlockPlan, make_plan
from paravideo.schedule.sampler import SchedulerBank, make_scheduler
from paravideo.telemetry.recorder import Recorder


@dataclass
class RankModel:
    """One rank's loaded share of the model and everything derived from the config and the model's factors."""

    family: ModelFamily
    factors: ModelFactors
    root: Path
    plan: BlockPlan
    bank: SchedulerBank
    experts: ExpertStages
    texts: list[dict[int, torch.Tensor]]  # [expert][prompt]: projected by that expert's text embedder
    block_prompt: list[int]  # per block, the index of its prompt
    geometry: Geometry
    split: BandSplit
    ranges: list[tuple[int, int]]  # [lo, hi) layers of every stage
    stage_index: int
    balance: Split  # the layers per stage and the decode placement, chosen together

    @property
    def layers(self) -> tuple[int, int]:
        """This rank's [lo, hi) layers."""
        return self.ranges[self.stage_index]


def build_plan(config: RunConfig, factors: ModelFactors) -> BlockPlan:
    """The block plan the config asks for, in the model's latent frames."""
    b = config.blocks
    return make_plan(factors.latent_frames(config.video.num_frames), b.block_frames, config.sampling.steps,
                     b.context_frames, b.feature_cache)


def run_split(config: RunConfig, factors: ModelFactors, layout: ParallelLayout, plan: BlockPlan) -> Split:
    """Layers per stage and decode placement of this run (the same on every rank: counted FLOPs, no timing)."""
    par = config.parallel
    costs = None
    if par.decode == "pipeline":
        from paravideo.io.decoder_pieces import decoder_piece_costs

        latent_h, latent_w = factors.latent_size(config.video.height, config.video.width)
        pieces = decoder_piece_costs(factors.vae_config, latent_h, latent_w)
        batch = 2 if config.sampling.guidance_scale > 1.0 else 1
        costs = SplitCosts.of_run(
            plan, tokens_per_frame=(latent_h // factors.patch_size[1]) * (latent_w // factors.patch_size[2]),
            batch=batch // layout.cfg, text_tokens=config.model.text_max_length, dim=factors.dim,
            ffn_dim=factors.transformer_config["ffn_dim"], token_split=layout.patch * layout.seq,
            piece_flops=[p.flops for p in pieces],
            output_pixels=config.video.num_frames * config.video.height * config.video.width)
    return choose_split(num_layers=factors.num_layers, layout=layout, decode=par.decode == "pipeline", costs=costs,
                        stage_layers=par.stage_layers, decode_ranks=par.decode_ranks, decode_pieces=par.decode_pieces)


def model_root(config: RunConfig, ctx: DistContext, barrier) -> Path:
    """The model folder; rank 0 builds a built-in model once while the others wait, then read the same folder."""
    if ctx.is_driver:
        root = resolve_model_path(config.model.path)
        barrier()
    else:
        barrier()
        root = resolve_model_path(config.model.path)
    return root


def _schedule(config: RunConfig, root: Path, factors: ModelFactors) -> tuple[BlockPlan, SchedulerBank, ExpertChoice]:
    plan = build_plan(config, factors)
    s = config.sampling
    bank = SchedulerBank(make_scheduler(s.scheduler, read_scheduler_config(root), flow_shift=s.flow_shift), s.steps)
    return plan, bank, ExpertChoice.for_run(factors, bank.timesteps, s.guidance_scale, s.guidance_scale_2)


def _geometry(config: RunConfig, factors: ModelFactors, layout: ParallelLayout, rank: int) -> tuple[Geometry, BandSplit]:
    latent_h, latent_w = factors.latent_size(config.video.height, config.video.width)
    patch_hw = factors.patch_size[1:]
    split = BandSplit.even(latent_h // patch_hw[0], latent_w // patch_hw[1], layout.patch)
    geo = Geometry(channels=factors.latent_channels, height=latent_h, width=latent_w,
                   batch=2 if config.sampling.guidance_scale > 1.0 else 1, dim=factors.dim, patch_hw=patch_hw,
                   band=split.bands[layout.band_of(rank)],
                   cfg_index=layout.cfg_of(rank) if layout.cfg > 1 else None,
                   seq=SeqShare(layout.seq_of(rank), layout.seq) if layout.seq > 1 else None)
    return geo, split


def load_rank_model(config: RunConfig, ctx: DistContext, layout: ParallelLayout, recorder: Recorder, barrier,
                    on_factors=lambda factors, choice: None) -> RankModel:
    """Read the folder's factors, load this rank's layers of every expert, encode and project the prompts.

    `on_factors` hears the factors and expert choice as soon as they are known (a failure report names them).
    """
    root = model_root(config, ctx, barrier)
    family, factors = inspect_model(root)
    plan, bank, choice = _schedule(config, root, factors)
    balance = run_split(config, factors, layout, plan)
    ranges = balance.ranges
    stage_index = layout.stage_of(ctx.rank)
    lo, hi = ranges[stage_index]
    on_factors(factors, choice)
    experts = ExpertStages(family.load_stages(root, factors, lo, hi, dtype=DTYPES[config.model.dtype],
                                              device=ctx.device), choice)
    prompts, per_block = block_prompts(config, plan, factors.time_stride)
    use_cfg = config.sampling.guidance_scale > 1.0
    embeds = encode_texts(config, family, root, ctx, prompts, factors.text_dim, recorder)
    texts = [projected_texts(expert, embeds, len(prompts), use_cfg) for expert in experts.stages]
    geo, split = _geometry(config, factors, layout, ctx.rank)
    return RankModel(family=family, factors=factors, root=root, plan=plan, bank=bank, experts=experts, texts=texts,
                     block_prompt=per_block, geometry=geo, split=split, ranges=ranges, stage_index=stage_index,
                     balance=balance)
