"""The layer partition and the decode placement, chosen together (parallel.decode: pipeline).

With the decode spread over ranks, a rank's work is its layers' forwards plus its decoder pieces
(plus, on rank 0, the scheduler steps and the writing). Balancing the layers alone and then the
decode on top lets a rank that carries the heavy full-resolution pieces keep a full share of
layers; here both are chosen at once to minimise the largest rank's load. Every rank computes the
same split from counted FLOPs (no timing at start-up), and the cost model calls the same function.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from itertools import combinations

from paravideo.errors import ConfigError
from paravideo.io.decode_placement import DecodePlacement, chain_ranks, placement_of
from paravideo.models.factors import dit_layer_flops
from paravideo.parallel.partition import LAST_STAGE_EXTRA, stage_ranges

# CPU seconds per VAE-decode FLOP over seconds per DiT-layer FLOP. The decoder's convs have few
# channels and are bound by unfolding their inputs, so a decode FLOP runs ~15x slower than a DiT
# FLOP on this machine's CPU: `python benchmarks/decode_weight.py` (builtin:small, 128x128, one
# thread, thread CPU time) gave 14.4, 16.8 and 15.4 on 2026-12-01 (decode 3.5-4.2 GFLOP/s, DiT
# layers 50-67 GFLOP/s). On GPUs with a real Wan VAE the ratio is smaller; it only moves the split.
DECODE_FLOP_WEIGHT = 15.0
# Rank 0's own work per forward besides its layers, in layer-forwards: patch embedding, the
# scheduler step (its decode share is counted apart, piece by piece).
DRIVER_EXTRA = 0.25
# Writing one output pixel (uint8 conversion, hand-off to ffmpeg), in DiT-FLOP equivalents: the
# cpu-local profile's write_s_per_mpixel (0.024 s) at its DiT rate (39 GFLOP/s) is ~900.
WRITE_FLOPS_PER_PIXEL = 900.0
# Decoder-piece splits tried exhaustively; the Wan2.1 VAE's 17 pieces over 9 ranks give 12,870.
MAX_SPLITS = 20000


@dataclass(frozen=True)
class SplitCosts:
    """The work the balance spreads, in DiT-FLOP equivalents over the whole run, as one rank does it."""

    layer: float  # one layer's forwards on one rank of a stage (its share of tokens and batch)
    pieces: tuple[float, ...]  # each decoder piece over every latent frame, weighted by DECODE_FLOP_WEIGHT
    driver: float  # rank 0's embedding, scheduler steps and writing
    last_stage: float  # each last-stage rank's output head and guidance combine

    @classmethod
    def of_run(cls, plan, *, tokens_per_frame: int, batch: int, text_tokens: int, dim: int, ffn_dim: int,
               token_split: int, piece_flops: list[int], output_pixels: int) -> SplitCosts:
        """The costs of a block plan: `token_split` ranks share a stage's tokens (patch bands x sequence
        chunks), `batch` is the guidance rows one rank computes, `output_pixels` all frames' pixels."""
        layer = 0
        for fwd in plan.forwards:
            lo, hi = plan.window(fwd)
            cached = 0 if fwd.future_block is None else min(plan.context_frames, plan.blocks[fwd.future_block].frames)
            layer += dit_layer_flops(dim=dim, ffn_dim=ffn_dim, batch=batch,
                                     query_tokens=-(-(hi - lo) * tokens_per_frame // token_split),
                                     key_tokens=(hi - lo + cached) * tokens_per_frame, text_tokens=text_tokens)
        pieces = tuple(DECODE_FLOP_WEIGHT * f * plan.latent_frames for f in piece_flops)
        return cls(layer=float(layer), pieces=pieces,
                   driver=DRIVER_EXTRA * layer + WRITE_FLOPS_PER_PIXEL * output_pixels,
                   last_stage=LAST_STAGE_EXTRA * layer)


@dataclass(frozen=True)
class Split:
    """Layers per stage and the decode placement (None: rank 0 decodes everything), with the predicted
    load of every rank relative to the largest (empty when the layers were balanced alone)."""

    stage_layers: tuple[int, ...]
    decode: DecodePlacement | None = None
    loads: tuple[float, ...] = ()

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """[lo, hi) layers of every stage."""
        return stage_ranges(sum(self.stage_layers), len(self.stage_layers), list(self.stage_layers))


def choose_split(*, num_layers: int, layout, decode: bool, costs: SplitCosts | None = None,
                 stage_layers: list[int] | None = None, decode_ranks: list[int] | None = None,
                 decode_pieces: list[int] | None = None) -> Split:
    """The split of a run: with `decode` (parallel.decode: pipeline) layers and decoder pieces balanced together
    on `costs`; `stage_layers` / `decode_ranks` / `decode_pieces` fix their part, the rest is balanced around it."""
    stages = layout.pipeline
    fixed_layers = tuple(hi - lo for lo, hi in stage_ranges(num_layers, stages, stage_layers))
    if not decode:
        return Split(fixed_layers)
    assert costs is not None, "the decode pipeline's split needs its costs"
    num_pieces = len(costs.pieces)
    ranks = chain_ranks(world_size=layout.world_size, num_pieces=num_pieces, ranks=decode_ranks)
    splits = [placement_of(ranks, decode_pieces, num_pieces)] if decode_pieces is not None else \
        _all_placements(ranks, num_pieces)
    stage_of = [layout.stage_of(r) for r in range(layout.world_size)]
    extra = [(costs.driver if r == 0 else 0.0) + (costs.last_stage if stage_of[r] == stages - 1 else 0.0)
             for r in range(layout.world_size)]
    prefix = [0.0]
    for c in costs.pieces:
        prefix.append(prefix[-1] + c)
    members = [[r for r in range(layout.world_size) if stage_of[r] == s] for s in range(stages)]
    best = None
    for placement in splits:
        fixed = extra[:]
        for i, r in enumerate(placement.ranks):
            fixed[r] += prefix[placement.cuts[i + 1]] - prefix[placement.cuts[i]]
        if best is not None and max(fixed) + costs.layer > best[0][0]:
            continue  # even one layer per stage loads some rank more than the best split so far
        per_stage = [max(fixed[r] for r in ranks_of) for ranks_of in members]
        counts = fixed_layers if stage_layers is not None else _fill_layers(num_layers, per_stage, costs.layer)
        loads = [counts[stage_of[r]] * costs.layer + fixed[r] for r in range(layout.world_size)]
        key = sorted(loads, reverse=True)  # the largest load first, then the next ones (ties: the earlier split)
        if best is None or key < best[0]:
            best = key, counts, placement, loads
    _, counts, placement, loads = best
    top = max(loads) or 1.0
    return Split(tuple(counts), placement, tuple(x / top for x in loads))


def _all_placements(ranks: list[int], num_pieces: int) -> list[DecodePlacement]:
    """Every contiguous split of the pieces over the chain's ranks, each rank at least one piece."""
    from math import comb

    parts = len(ranks)
    if comb(num_pieces - 1, parts - 1) > MAX_SPLITS:
        raise ConfigError(f"parallel.decode: pipeline would try {comb(num_pieces - 1, parts - 1)} decoder splits "
                          f"over {parts} decode ranks; set parallel.decode_ranks to fewer ranks or give "
                          f"parallel.decode_pieces")
    return [DecodePlacement(tuple(ranks), (0, *inner, num_pieces))
            for inner in combinations(range(1, num_pieces), parts - 1)]


def _fill_layers(num_layers: int, fixed: list[float], layer: float) -> tuple[int, ...]:
    """Layers per stage minimising the largest `count x layer + fixed`: one each, then every further layer to
    the stage it leaves least loaded (optimal for loads that grow linearly; ties go to the earlier stage)."""
    counts = [1] * len(fixed)
    heap = [(2 * layer + f, s) for s, f in enumerate(fixed)]
    heapq.heapify(heap)
    for _ in range(num_layers - len(fixed)):
        _, s = heapq.heappop(heap)
        counts[s] += 1
        heapq.heappush(heap, ((counts[s] + 1) * layer + fixed[s], s))
    return tuple(counts)
