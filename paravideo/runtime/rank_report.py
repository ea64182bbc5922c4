"""A run's report: each rank's statistics gathered on the driver rank, and run.json (also for a failed run)."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path

from paravideo.cache.step_wiring import StepCacheParts
from paravideo.cache.step_wiring import rank_row as step_cache_row
from paravideo.cache.step_wiring import run_section as step_cache_section
from paravideo.config import RunConfig
from paravideo.io.stream import FrameStream
from paravideo.launch.rendezvous import job_address
from paravideo.models.experts import ExpertChoice
from paravideo.models.factors import ModelFactors
from paravideo.parallel.layout import DistContext, ParallelLayout
from paravideo.schedule.plan import BlockPlan
from paravideo.telemetry.recorder import Recorder
from paravideo.telemetry.run_report import RunReport, write_run_report
from paravideo.telemetry.trace import rank_trace


@dataclass
class ReportInputs:
    """What run.json is made of; fields stay None when a failed run never got that far."""

    config: RunConfig
    ctx: DistContext
    layout: ParallelLayout
    recorder: Recorder
    start: float  # perf_counter at the worker's start
    factors: ModelFactors | None = None
    choice: ExpertChoice | None = None
    plan: BlockPlan | None = None
    ranges: list[tuple[int, int]] | None = None
    loads: tuple[float, ...] = ()  # the joint balance's predicted load per rank, relative to the largest
    output: FrameStream | None = None
    denoise_s: float | None = None
    step_cache: StepCacheParts | None = None


def gather_rank_rows(inputs: ReportInputs, experts, barrier) -> list[tuple[dict, list]]:
    """Every rank's (statistics row, trace events), gathered on every rank."""
    ctx, lo_hi = inputs.ctx, (experts.lo, experts.hi)
    stats = inputs.recorder.stats(layers=list(lo_hi), param_bytes=experts.param_bytes(), device=ctx.device)
    row = {**stats.to_json(),
           "param_bytes_by_expert": dict(zip(inputs.factors.experts, experts.param_bytes_by_expert())),
           "node": socket.gethostname(), "node_ip": job_address(), **step_cache_row(inputs.step_cache)}
    mine = (row, rank_trace(inputs.recorder, layers=lo_hi, barrier=barrier))
    if not ctx.distributed:
        return [mine]
    import torch.distributed as dist

    rows = [None] * ctx.world_size
    dist.all_gather_object(rows, mine)
    return rows


def write_report(inputs: ReportInputs, rows: list[dict], *, complete: bool, error: str | None = None) -> RunReport:
    """Build run.json from what the run got to and write it into output.dir."""
    cfg, plan, output = inputs.config, inputs.plan, inputs.output
    report = RunReport(
        complete=complete, frames=output.sink.frames_written if output else 0,
        latent_frames=plan.latent_frames if plan else 0, steps=cfg.sampling.steps,
        blocks=len(plan.blocks) if plan else 0, wall_s=time.perf_counter() - inputs.start,
        denoise_s=inputs.denoise_s, time_to_first_frame_s=inputs.recorder.marks.get("first_frame"),
        world_size=inputs.ctx.world_size, video=str(output.sink.path) if output and output.sink.path else None,
        config=cfg.resolved(), parallel=_parallel_report(inputs), model=_model_report(inputs),
        plan=_plan_report(plan), ranks=sorted(rows, key=lambda r: r["rank"]),
        block_digests=list(output.digests) if output else [], error=error,
        step_cache=step_cache_section(inputs.step_cache, plan, inputs.factors))
    write_run_report(Path(cfg.output.dir), report)
    return report


def _parallel_report(inputs: ReportInputs) -> dict:
    layout, par = inputs.layout, inputs.config.parallel
    placement = getattr(inputs.output, "placement", None)  # parallel.decode: pipeline
    out = {"pipeline": layout.pipeline, "patch": layout.patch, "cfg": layout.cfg, "ulysses": layout.ulysses,
           "ring": layout.ring, "stage_layers": [list(r) for r in inputs.ranges] if inputs.ranges else [],
           "decode": placement.to_json() if placement is not None else "rank0"}
    if inputs.loads:
        out.update(relative_load=[round(x, 3) for x in inputs.loads])
    if layout.seq > 1:
        from paravideo.parallel.seq.backend import resolve_backend

        out.update(sp_backend=resolve_backend(par.sp_backend, inputs.ctx.device))
    if layout.patch > 1:
        out.update(patch_mode=par.patch_mode, pcpp_fraction=par.pcpp_fraction, warmup_steps=par.warmup_steps)
    return out


def _plan_report(plan: BlockPlan | None) -> dict:
    if plan is None:
        return {}
    return {"blocks": len(plan.blocks), "iterations": plan.iterations, "max_queue": plan.max_queue,
            "forwards": len(plan.forwards), "block_frames": [b.frames for b in plan.blocks],
            "context_frames": plan.context_frames, "feature_cache": plan.feature_cache}


def _model_report(inputs: ReportInputs) -> dict | None:
    factors = inputs.factors  # None when the run failed before the folder was read
    if factors is None:
        return None
    return {**factors.summary(), "expert_of_step": list(inputs.choice.expert_of_step) if inputs.choice else None}
