"""What the cost model predicts for: a model shape, a video, a block plan and a stage layout."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

from paravideo.parallel.patch.bands import BandSplit
from paravideo.costmodel.flops import Window, decoder_piece_traffic, vae_decode_flops, window
from paravideo.costmodel.shapes import DiTShape
from paravideo.costmodel.traffic import TrafficLayout
from paravideo.io.decoder_pieces import decoder_piece_costs
from paravideo.models.factors import first_output_frame, latent_frames
from paravideo.schedule.plan import BlockPlan, Forward, make_plan

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Scenario:
    """One candidate run; `from_config` reads it off a RunConfig without loading any weights."""

    shape: DiTShape
    latent_frames: int
    latent_height: int
    latent_width: int
    steps: int
    block_frames: int = 0
    context_frames: int = 0
    feature_cache: bool = True
    pipeline: int = 1
    stage_layers: tuple[int, ...] | None = None
    cfg: bool = True
    dtype_bytes: int = 4
    text_tokens: int = 512
    prompts: int = 1
    threads_per_rank: int = 1
    patch: int = 1
    patch_mode: str = "exact"
    pcpp_fraction: float = 0.3
    warmup_steps: int = 4
    decode: str = "rank0"  # parallel.decode
    decode_ranks: tuple[int, ...] | None = None
    decode_pieces: tuple[int, ...] | None = None
    cfg_parallel: int = 1  # parallel.cfg: the guidance batch split over two rank groups
    ulysses: int = 1
    ring: int = 1
    # Each decoder piece's FLOPs per later latent frame (DecodeShape.pieces), for the joint balance of layers
    # and decode; empty: counted from the VAE config when parallel.decode is pipeline.
    decode_flops: tuple[int, ...] = ()

    @classmethod
    def from_config(cls, config, shape: DiTShape | None = None) -> Scenario:
        """The scenario of a RunConfig (`shape` defaults to the model folder's configs)."""
        from paravideo.costmodel.shapes import shape_for_model_path
        from paravideo.runtime.prompts import block_prompts

        shape = shape or shape_for_model_path(config.model.path)
        latent = latent_frames(config.video.num_frames, shape.time_stride)
        b = config.blocks
        plan = make_plan(latent, b.block_frames, config.sampling.steps, b.context_frames, b.feature_cache)
        prompts, _ = block_prompts(config, plan, shape.time_stride)
        return cls(shape=shape, latent_frames=latent, latent_height=config.video.height // shape.spatial_stride,
                   latent_width=config.video.width // shape.spatial_stride, steps=config.sampling.steps,
                   block_frames=config.blocks.block_frames, context_frames=config.blocks.context_frames,
                   feature_cache=config.blocks.feature_cache, pipeline=config.parallel.pipeline,
                   stage_layers=tuple(config.parallel.stage_layers) if config.parallel.stage_layers else None,
                   cfg=config.sampling.guidance_scale > 1.0, dtype_bytes=DTYPE_BYTES[config.model.dtype],
                   text_tokens=config.model.text_max_length, prompts=len(prompts),
                   threads_per_rank=config.launch.threads_per_rank, patch=config.parallel.patch,
                   patch_mode=config.parallel.patch_mode, pcpp_fraction=config.parallel.pcpp_fraction,
                   warmup_steps=config.parallel.warmup_steps, decode=config.parallel.decode,
                   decode_ranks=tuple(config.parallel.decode_ranks) if config.parallel.decode_ranks else None,
                   decode_pieces=tuple(config.parallel.decode_pieces) if config.parallel.decode_pieces else None,
                   cfg_parallel=config.parallel.cfg, ulysses=config.parallel.ulysses, ring=config.parallel.ring)

    def but(self, **changes) -> Scenario:
        """A copy with some fields changed (layer split reset when the stage count changes)."""
        if "pipeline" in changes and "stage_layers" not in changes:
            changes["stage_layers"] = None
        if ("pipeline" in changes or "patch" in changes) and "decode_ranks" not in changes:
            changes.update(decode_ranks=None, decode_pieces=None)
        if "latent_height" in changes or "latent_width" in changes or "shape" in changes:
            changes.setdefault("decode_flops", ())
        if changes.get("decode", self.decode) == "pipeline" and \
                changes.get("pipeline", self.pipeline) * changes.get("patch", self.patch) < 2:
            changes["decode"] = "rank0"  # one rank has nobody to share the decode with
        return replace(self, **changes)

    @property
    def seq(self) -> int:
        """Ranks splitting a stage's tokens (Ulysses x ring)."""
        return self.ulysses * self.ring

    @property
    def replicas(self) -> int:
        """Ranks that run the same schedule as one (stage, band) rank: CFG groups x sequence chunks."""
        return self.cfg_parallel * self.seq

    @property
    def world_size(self) -> int:
        return self.pipeline * self.patch * self.replicas

    @property
    def batch(self) -> int:
        return 2 if self.cfg else 1

    @property
    def rank_batch(self) -> int:
        """Rows of the guidance batch one rank computes."""
        return self.batch // self.cfg_parallel

    @cached_property
    def layout(self):
        """The engine's rank numbering for these degrees."""
        from paravideo.parallel.layout import ParallelLayout

        return ParallelLayout(pipeline=self.pipeline, patch=self.patch, cfg=self.cfg_parallel, ulysses=self.ulysses,
                              ring=self.ring)

    @property
    def tokens_per_frame(self) -> int:
        return (self.latent_height // self.shape.patch[1]) * (self.latent_width // self.shape.patch[2])

    @cached_property
    def split(self) -> BandSplit:
        """The frame's token rows cut into `patch` bands, as the engine cuts them."""
        return BandSplit.even(self.latent_height // self.shape.patch[1], self.latent_width // self.shape.patch[2],
                              self.patch)

    @property
    def output_frames(self) -> int:
        return first_output_frame(self.latent_frames, self.shape.time_stride)

    @cached_property
    def plan(self) -> BlockPlan:
        return make_plan(self.latent_frames, self.block_frames, self.steps, self.context_frames, self.feature_cache)

    @cached_property
    def balance(self):
        """Layers per stage and decode placement, chosen as the engine chooses them (parallel/balance.py)."""
        from paravideo.parallel.balance import SplitCosts, choose_split

        flops = self.decode_flops
        if self.decode == "pipeline" and not flops and self.shape.vae_config:
            flops = tuple(p.flops for p in decoder_piece_costs(self.shape.vae_config, self.latent_height,
                                                               self.latent_width))
        decode = self.decode == "pipeline" and bool(flops)
        costs = None
        if decode:
            s = self.shape.spatial_stride
            costs = SplitCosts.of_run(self.plan, tokens_per_frame=self.tokens_per_frame, batch=self.rank_batch,
                                      text_tokens=self.text_tokens, dim=self.shape.dim, ffn_dim=self.shape.ffn_dim,
                                      token_split=self.patch * self.seq, piece_flops=list(flops),
                                      output_pixels=self.output_frames * self.latent_height * s * self.latent_width * s)
        return choose_split(num_layers=self.shape.num_layers, layout=self.layout, decode=decode, costs=costs,
                            stage_layers=list(self.stage_layers) if self.stage_layers else None,
                            decode_ranks=list(self.decode_ranks) if self.decode_ranks else None,
                            decode_pieces=list(self.decode_pieces) if self.decode_pieces else None)

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """[lo, hi) layers per stage, as the engine splits them."""
        return self.balance.ranges

    def window(self, fwd: Forward, band: int = 0) -> Window:
        """Tokens of band `band` (the whole frame without patch parallelism) in forward `fwd`, for one rank.

        A sequence chunk computes 1/seq of the queries (the largest chunk) against every key: under Ulysses
        with 1/U of the heads, which costs the same FLOPs; a CFG group computes one row of the batch.
        """
        cols = self.split.token_cols
        seen = lambda step: sum(p.rows for p in self.traffic.pieces_of(band, step)) * cols  # noqa: E731
        w = window(self.plan, fwd, tokens_per_frame=self.split.bands[band].rows * cols, batch=self.rank_batch,
                   text_tokens=self.text_tokens, key_tokens_per_frame=seen(fwd.step),
                   cached_tokens_per_frame=seen(max(fwd.step - 1, 0)))
        return replace(w, query_tokens=-(-w.query_tokens // self.seq)) if self.seq > 1 else w

    def block_output_frames(self, block: int) -> int:
        """Pixel frames decoded from a block (the very first latent frame gives one frame, others four)."""
        b = self.plan.blocks[block]
        return sum(1 if f == 0 else self.shape.time_stride for f in range(b.start, b.stop))

    @cached_property
    def traffic(self) -> TrafficLayout:
        """The message sizes of this scenario."""
        return TrafficLayout(plan=self.plan, shape=self.shape, stage_layers=tuple(hi - lo for lo, hi in self.ranges),
                             split=self.split, batch=self.batch, dtype_bytes=self.dtype_bytes,
                             texts=self.prompts + (1 if self.cfg else 0), text_tokens=self.text_tokens,
                             patch_mode=self.patch_mode, pcpp_fraction=self.pcpp_fraction,
                             warmup_steps=self.warmup_steps, cfg=self.cfg_parallel, ulysses=self.ulysses,
                             ring=self.ring)


@dataclass(frozen=True)
class DecodeShape:
    """The VAE's parameters and decode FLOPs per latent frame at this resolution (zero when unknown)."""

    params: int = 0
    first_frame_flops: int = 0
    frame_flops: int = 0
    pieces: tuple = ()  # PieceCost of each decoder piece (io/decoder_pieces.py), a later frame
    traffic: tuple = ()  # PieceTraffic of each piece (costmodel/flops.py): its ops' FLOPs and bytes, a later frame

    def placement(self, scenario: Scenario):
        """The engine's DecodePlacement for `scenario` (None: rank 0 decodes everything)."""
        if scenario.decode != "pipeline" or not self.pieces:
            return None
        if not scenario.decode_flops:  # balance on the pieces counted here, not counted again
            scenario = scenario.but(decode_flops=tuple(p.flops for p in self.pieces))
        return scenario.balance.decode

    def shares(self, scenario: Scenario) -> dict[int, float]:
        """Fraction of the decode FLOPs each rank runs ({0: 1.0} when rank 0 decodes everything)."""
        placement = self.placement(scenario)
        if placement is None:
            return {0: 1.0}
        total = sum(p.flops for p in self.pieces) or 1
        return {r: sum(p.flops for p in self.pieces[slice(*placement.range_of(r))]) / total
                for r in placement.ranks}

    def memory(self, scenario: Scenario, rank: int) -> int:
        """Decode working set of `rank`: its pieces' causal caches, the widest activation it makes (held
        with its input), and the activations of sends in flight and pooled receives at its cuts."""
        if not self.pieces:
            return 0
        from paravideo.parallel.comm import MAX_SENDS_IN_FLIGHT

        placement = self.placement(scenario)
        lo, hi = placement.range_of(rank) if placement else ((0, len(self.pieces)) if rank == 0 else (0, 0))
        if lo == hi:
            return 0
        mine = self.pieces[lo:hi]
        held = sum(p.cache_bytes for p in mine) + 2 * max(p.out_bytes for p in mine)
        if placement is not None:
            held += MAX_SENDS_IN_FLIGHT // 2 * mine[-1].out_bytes  # a header and a tensor per frame
            held += self.pieces[lo - 1].out_bytes if lo > 0 else 0  # the receive buffer
        return held

    @classmethod
    def of(cls, scenario: Scenario) -> DecodeShape:
        """Counted on meta tensors from the VAE config (a few seconds for Wan's VAE at 480p, no weights)."""
        config = scenario.shape.vae_config
        if not config:
            return cls()
        import torch
        from diffusers import AutoencoderKLWan

        with torch.device("meta"):
            params = sum(p.numel() for p in AutoencoderKLWan(
                **{k: v for k, v in config.items() if not k.startswith("_")}).parameters())
        first, later = vae_decode_flops(config, scenario.latent_height, scenario.latent_width)
        pieces = tuple(decoder_piece_costs(config, scenario.latent_height, scenario.latent_width))
        return cls(params=params, first_frame_flops=first, frame_flops=later, pieces=pieces,
                   traffic=tuple(decoder_piece_traffic(config, scenario.latent_height, scenario.latent_width)))

    def block_flops(self, scenario: Scenario, block: int) -> int:
        """FLOPs to decode one block's latent frames."""
        b = scenario.plan.blocks[block]
        return sum(self.first_frame_flops if f == 0 else self.frame_flops for f in range(b.start, b.stop))
