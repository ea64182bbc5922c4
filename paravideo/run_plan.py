"""What a config will do, worked out without starting a worker: ranks, stages, blocks, weight memory."""

from __future__ import annotations

from paravideo.config import RunConfig


def describe_run(config: RunConfig, tconfig: dict) -> dict:
    """Plan of a validated config: per-rank stage, layers and weight bytes; blocks; latent and output frames."""
    from paravideo.parallel.layout import ParallelLayout
    from paravideo.parallel.partition import stage_ranges
    from paravideo.report.shapes import DiTShape, stage_param_bytes, total_params
    from paravideo.models.wan.loading import DTYPES
    from paravideo.worker import build_plan

    layout = ParallelLayout(pipeline=config.parallel.pipeline, patch=config.parallel.patch)
    ranges = stage_ranges(tconfig["num_layers"], layout.pipeline, config.parallel.stage_layers)
    # Shapes come from the transformer config alone; every stage also holds the non-layer modules.
    shape = DiTShape.from_transformer_config(tconfig)
    dtype_bytes = DTYPES[config.model.dtype].itemsize
    ranks = []
    for rank in range(layout.world_size):
        lo, hi = ranges[layout.stage_of(rank)]
        ranks.append({"rank": rank, "stage": layout.stage_of(rank), "band": layout.band_of(rank),
                      "layers": [lo, hi], "num_layers": hi - lo, "params": total_params(shape.with_layers(hi - lo)),
                      "weight_bytes": stage_param_bytes(shape, hi - lo, dtype_bytes)})
    plan = build_plan(config)
    return {
        "world_size": layout.world_size,
        "model": {"layers": tconfig["num_layers"], "params": total_params(shape), "dtype": config.model.dtype},
        "stages": [{"stage": s, "layers": [lo, hi], "ranks": [layout.rank_of(s, b) for b in range(layout.patch)]}
                   for s, (lo, hi) in enumerate(ranges)],
        "ranks": ranks,
        "frames": {"output": config.video.num_frames, "latent": plan.latent_frames,
                   "height": config.video.height, "width": config.video.width},
        "blocks": {"count": len(plan.blocks), "frames": [b.frames for b in plan.blocks],
                   "context_frames": plan.context_frames, "steps": plan.steps, "iterations": plan.iterations,
                   "max_queue": plan.max_queue, "forwards": len(plan.forwards)},
    }
