"""What a config will do, worked out without starting a worker: ranks, stages, experts, blocks, weight memory."""

from __future__ import annotations

from paravideo.config import RunConfig
from paravideo.models.factors import ModelFactors


def describe_run(config: RunConfig, factors: ModelFactors) -> dict:
    """Plan of a validated config: per-rank stage, layers and weight bytes (per expert); blocks; frames."""
    from paravideo.models.wan.loading import DTYPES
    from paravideo.parallel.layout import ParallelLayout
    from paravideo.costmodel.shapes import DiTShape, expert_param_bytes, stage_param_bytes, total_params
    from paravideo.runtime.rank_model import build_plan, run_split

    layout = ParallelLayout.from_config(config.parallel)
    plan = build_plan(config, factors)
    split = run_split(config, factors, layout, plan)  # the engine's layers and decode placement
    ranges = split.ranges
    # Shapes come from the transformer config alone; every stage also holds the non-layer modules.
    shape = DiTShape.from_factors(factors)
    dtype_bytes = DTYPES[config.model.dtype].itemsize
    ranks = []
    for rank in range(layout.world_size):
        lo, hi = ranges[layout.stage_of(rank)]
        per_expert = expert_param_bytes(shape, hi - lo, dtype_bytes)
        ranks.append({"rank": rank, "stage": layout.stage_of(rank), "band": layout.band_of(rank),
                      "cfg_group": layout.cfg_of(rank), "seq_chunk": layout.seq_of(rank),
                      "layers": [lo, hi], "num_layers": hi - lo, "params": total_params(shape.with_layers(hi - lo)),
                      "weight_bytes": stage_param_bytes(shape, hi - lo, dtype_bytes),
                      "weight_bytes_by_expert": {name: per_expert for name in factors.experts}})
    return {
        "world_size": layout.world_size,
        "model": {**factors.summary(), "layers": factors.num_layers, "params": total_params(shape),
                  "dtype": config.model.dtype},
        "stages": [{"stage": s, "layers": [lo, hi],
                    "ranks": [r for r in range(layout.world_size) if layout.stage_of(r) == s]}
                   for s, (lo, hi) in enumerate(ranges)],
        "decode": split.decode.to_json() if split.decode is not None else "rank0",
        "ranks": ranks,
        "frames": {"output": config.video.num_frames, "latent": plan.latent_frames,
                   "height": config.video.height, "width": config.video.width},
        "blocks": {"count": len(plan.blocks), "frames": [b.frames for b in plan.blocks],
                   "context_frames": plan.context_frames, "steps": plan.steps, "iterations": plan.iterations,
                   "max_queue": plan.max_queue, "forwards": len(plan.forwards)},
    }
