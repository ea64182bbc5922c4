"""One worker per rank, the same under every launcher: load this rank's share, run its stage, report."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from paravideo.config import RunConfig
from paravideo.driver import BlockDriver
from paravideo.errors import ParavideoError, describe_error
from paravideo.io.checkpoint import Checkpointer
from paravideo.io.sink import PARTIAL_NAME, VideoSink
from paravideo.io.stream import FrameStream
from paravideo.launch.stop import Interrupted, raise_on_stop_signals
from paravideo.models.builtin import resolve_model_path
from paravideo.models.experts import ExpertChoice, ExpertStages
from paravideo.models.factors import ModelFactors
from paravideo.models.family import ModelFamily, inspect_model
from paravideo.models.wan.loading import DTYPES, read_scheduler_config
from paravideo.parallel.comm import P2P
from paravideo.parallel.layout import DistContext, ParallelLayout
from paravideo.parallel.patch.bands import BandSplit
from paravideo.parallel.patch.hook import PatchKVHook, PatchSettings
from paravideo.parallel.patch.latents import BandNoise, GatherBandLatents, SendBandLatents
from paravideo.parallel.partition import stage_ranges
from paravideo.parallel.stage_runner import (DRIVER_RANK, Geometry, HeadSink, LatentSource, PredictionInbox,
                                             RecvSource, SendHiddenSink, StageRunner)
from paravideo.prompts import block_prompts, encode_texts, projected_texts
from paravideo.report.recorder import Recorder
from paravideo.report.run_report import RunReport, write_run_report
from paravideo.report.trace import rank_trace, write_trace
from paravideo.schedule.noise import NoiseSource
from paravideo.schedule.plan import BlockPlan, make_plan
from paravideo.schedule.sampler import SchedulerBank, make_scheduler

FAULT_ENV = "PARAVIDEO_FAULT"  # "RANK:FORWARD": that rank raises before that forward (failure tests)


class Terminated(Interrupted):
    """A stop signal (SIGTERM, SIGHUP, SIGINT) reached this worker: the launcher is tearing the job down,
    or the user or a scheduler stopped it. The driver finalises the video as on any failure."""


@dataclass(frozen=True)
class FaultSpec:
    """An injected failure for tests: `rank` raises before forward `forward`."""

    rank: int
    forward: int

    @classmethod
    def from_env(cls) -> FaultSpec | None:
        raw = os.environ.get(FAULT_ENV)
        if not raw:
            return None
        rank, forward = raw.split(":")
        return cls(int(rank), int(forward))


def build_plan(config: RunConfig, factors: ModelFactors) -> BlockPlan:
    """The block plan the config asks for, in the model's latent frames."""
    b = config.blocks
    return make_plan(factors.latent_frames(config.video.num_frames), b.block_frames, config.sampling.steps,
                     b.context_frames, b.feature_cache)


class Worker:
    """Everything one rank does for a run; `run()` returns the run report on the driver rank."""

    def __init__(self, config: RunConfig, ctx: DistContext):
        self.config, self.ctx = config, ctx
        self.layout = ParallelLayout(pipeline=config.parallel.pipeline, patch=config.parallel.patch)
        self.layout.check_world(ctx.world_size)
        self.recorder = Recorder(ctx.rank, keep_spans=config.output.trace)
        self.fault = FaultSpec.from_env()

    def _barrier(self) -> None:
        if self.ctx.distributed:
            import torch.distributed as dist

            dist.barrier()

    def _model_root(self) -> Path:
        # Rank 0 builds a built-in model once; the others wait, then read the same folder.
        if self.ctx.is_driver:
            root = resolve_model_path(self.config.model.path)
            self._barrier()
        else:
            self._barrier()
            root = resolve_model_path(self.config.model.path)
        return root

    def run(self) -> RunReport | None:
        """Load, run the plan, gather statistics; the driver writes video.mp4 and run.json."""
        cfg, ctx = self.config, self.ctx
        start = time.perf_counter()
        if ctx.device.type == "cpu":
            torch.set_num_threads(cfg.launch.threads_per_rank)
        root = self._model_root()
        family, factors = inspect_model(root)
        self.factors = factors
        ranges = stage_ranges(factors.num_layers, self.layout.pipeline, cfg.parallel.stage_layers)
        stage_index = self.layout.stage_of(ctx.rank)
        lo, hi = ranges[stage_index]
        plan = build_plan(cfg, factors)
        bank = SchedulerBank(make_scheduler(cfg.sampling.scheduler, read_scheduler_config(root),
                                            flow_shift=cfg.sampling.flow_shift), cfg.sampling.steps)
        choice = ExpertChoice.for_run(factors, bank.timesteps, cfg.sampling.guidance_scale,
                                      cfg.sampling.guidance_scale_2)
        self.choice = choice
        stage = ExpertStages(family.load_stages(root, factors, lo, hi, dtype=DTYPES[cfg.model.dtype],
                                                device=ctx.device), choice)
        prompts, per_block = block_prompts(cfg, plan, factors.time_stride)
        use_cfg = cfg.sampling.guidance_scale > 1.0
        embeds = encode_texts(cfg, family, root, ctx, prompts, factors.text_dim, self.recorder)
        texts = [projected_texts(expert, embeds, len(prompts), use_cfg) for expert in stage.stages]
        latent_h, latent_w = factors.latent_size(cfg.video.height, cfg.video.width)
        patch_hw = factors.patch_size[1:]
        split = BandSplit.even(latent_h // patch_hw[0], latent_w // patch_hw[1], self.layout.patch)
        geo = Geometry(channels=factors.latent_channels, height=latent_h, width=latent_w,
                       batch=2 if use_cfg else 1, dim=factors.dim, patch_hw=patch_hw,
                       band=split.bands[self.layout.band_of(ctx.rank)])
        p2p = P2P(ctx.rank, device=ctx.device, recorder=self.recorder,
                  timeout_s=cfg.launch.timeout_s) if ctx.distributed else None
        # The patch exchange runs first, so the feature cache keeps and appends K/V of the rows a band sees.
        patch_hook = self._patch_hook(p2p, split, stage_index) if self.layout.patch > 1 else None
        if patch_hook is not None:
            stage.hooks.add(patch_hook.name, patch_hook)
        if plan.feature_cache:
            from paravideo.cache.feature_cache import FeatureCache

            stage.hooks.add(FeatureCache.name, FeatureCache())
        with ExitStack() as stack:
            driver, output, start_seq = None, None, 0
            if ctx.is_driver:
                driver, output = self._driver_side(family, root, plan, bank, geo, stack, p2p, split)
                start_seq = self._checkpointer.restore() if cfg.output.resume else 0
                self._progress.update(start_seq)
            elif stage_index == 0:
                driver = BlockDriver(plan, noise=self._noise(plan, geo), bank=bank, recorder=self.recorder,
                                     on_block_done=SendBandLatents(p2p, DRIVER_RANK))
            start_seq = self._share_start(start_seq)
            runner = self._runner(stage, plan, texts, per_block, bank, geo, p2p, driver, stage_index, ranges)
            loop_start = time.perf_counter()
            runner.run(start_seq)
            if p2p is not None:
                p2p.flush()  # a first-stage band's last finished rows may still be on their way
            if output is not None:
                output.flush()
                output.close()
                output.sink.close(complete=True)
                self._checkpointer.discard()
                if output.kept is not None:
                    torch.save(torch.cat(output.kept, dim=2), Path(cfg.output.dir) / "latents.pt")
            self._denoise_s = time.perf_counter() - loop_start
        stats = self.recorder.stats(layers=[lo, hi], param_bytes=stage.param_bytes(), device=ctx.device)
        row = {**stats.to_json(), "param_bytes_by_expert": dict(zip(factors.experts, stage.param_bytes_by_expert()))}
        mine = (row, rank_trace(self.recorder, layers=(lo, hi), barrier=self._barrier))
        rows = [mine]
        if ctx.distributed:
            import torch.distributed as dist

            rows = [None] * ctx.world_size
            dist.all_gather_object(rows, mine)
        if not ctx.is_driver:
            return None
        report = self._report(plan, output, start, [row for row, _ in rows], ranges, complete=True)
        write_trace(Path(cfg.output.dir), [trace for _, trace in rows])
        return report

    def _patch_hook(self, p2p: P2P, split: BandSplit, stage_index: int) -> PatchKVHook:
        par = self.config.parallel
        settings = PatchSettings(mode=par.patch_mode, fraction=par.pcpp_fraction, warmup_steps=par.warmup_steps,
                                 steps=self.config.sampling.steps)
        return PatchKVHook(p2p, split, self.layout.band_of(self.ctx.rank), self.layout.band_ranks(stage_index),
                           settings)

    def _noise(self, plan: BlockPlan, geo: Geometry):
        """Initial noise from the seed; a band keeps only its own latent rows."""
        noise = NoiseSource(plan, mode=self.config.blocks.noise, seed=self.config.sampling.seed,
                            shape_chw=(geo.channels, geo.height, geo.width))
        return BandNoise(noise, geo.latent_rows) if self.layout.patch > 1 else noise

    def _driver_side(self, family: ModelFamily, root: Path, plan: BlockPlan, bank: SchedulerBank, geo: Geometry,
                     stack: ExitStack, p2p: P2P | None, split: BandSplit):
        cfg = self.config
        vae = family.load_vae(root, device=self.ctx.device)
        sink = VideoSink(Path(cfg.output.dir), width=cfg.video.width, height=cfg.video.height,
                         fps=cfg.video.fps, frames_png=cfg.output.frames_png)
        output = FrameStream(family.streaming_decoder(vae), sink, self.recorder, keep_latents=cfg.output.save_latents,
                             background=cfg.output.background_decode)
        self._output = output
        # The mp4 is finalised on every path; a run that did not finish names it video.incomplete.mp4.
        keep = cfg.output.checkpoint_every > 0  # a later --resume needs the segments
        stack.callback(lambda: sink.close(complete=False, keep_segments=keep) if sink.path and
                       sink.path.name == PARTIAL_NAME else None)
        stack.callback(output.close)  # runs first (last in, first out): the decode thread ends before the sink
        progress = self._progress = _progress(cfg, len(plan.forwards))
        stack.callback(progress.close)
        noise = self._noise(plan, geo)
        # With bands, the driver's queue holds band 0's rows; whole frames exist only to be decoded.
        emit = output.emit if self.layout.patch == 1 else GatherBandLatents(
            p2p, self.layout.band_ranks(0), [b.rows * geo.patch_hw[0] for b in split.bands], output.emit)
        driver = BlockDriver(plan, noise=noise, bank=bank, on_block_done=emit,
                             on_apply=lambda fwd: (progress.update(1), checkpointer.after_apply(fwd)),
                             recorder=self.recorder)
        checkpointer = Checkpointer(Path(cfg.output.dir), every=cfg.output.checkpoint_every, plan=plan,
                                    driver=driver, output=output, config_json=json.dumps(cfg.resolved()))
        self._checkpointer = checkpointer
        return driver, output

    def _share_start(self, start_seq: int) -> int:
        """Every rank starts at the driver's first forward (0, or after a resume checkpoint)."""
        if not self.ctx.distributed:
            return start_seq
        import torch.distributed as dist

        value = torch.tensor([start_seq], dtype=torch.int64, device=self.ctx.device)
        dist.broadcast(value, src=DRIVER_RANK)
        return int(value.item())

    def _runner(self, stage, plan, texts, per_block, bank, geo, p2p, driver, stage_index, ranges) -> StageRunner:
        rank, last = self.ctx.rank, len(ranges) - 1
        band = self.layout.band_of(rank)  # hidden states and predictions stay within one band
        prev_rank = self.layout.rank_of(stage_index - 1, band) if stage_index > 0 else None
        next_rank = self.layout.rank_of(stage_index + 1, band) if stage_index < last else None
        if stage_index == 0:
            inbox = PredictionInbox(p2p, self.layout.rank_of(last, band), driver, geo) if last > 0 else None
            source = LatentSource(stage, driver, geo, self.recorder, inbox)
        else:
            source = RecvSource(p2p, prev_rank, plan, geo, stage.dtype)
        if stage_index < last:
            sink = SendHiddenSink(p2p, next_rank)
        elif stage_index == 0:
            sink = HeadSink(stage, self.recorder, deliver=driver.apply)
        else:
            first = self.layout.rank_of(0, band)
            sink = HeadSink(stage, self.recorder, deliver=lambda fwd, pred: p2p.send(pred, first, kind="prediction"),
                            finish=p2p.flush)
        fault = self.fault

        def before_forward(fwd):
            if fault is not None and fault.rank == rank and fault.forward == fwd.seq:
                raise RuntimeError(f"injected failure before forward {fwd.seq} ({FAULT_ENV})")

        patch_hook = stage.hooks.get(PatchKVHook.name)
        return StageRunner(stage, plan, texts=texts, block_prompt=per_block, timesteps=bank.timesteps,
                           geometry=geo, recorder=self.recorder, source=source, sink=sink,
                           before_forward=before_forward,
                           kv_tokens_per_frame=patch_hook.tokens_per_frame if patch_hook else None)

    def _report(self, plan, output, start, rows, ranges, *, complete: bool, error: str | None = None) -> RunReport:
        cfg = self.config
        first = self.recorder.marks.get("first_frame")
        report = RunReport(
            complete=complete, frames=output.sink.frames_written if output else 0,
            latent_frames=plan.latent_frames if plan else 0, steps=cfg.sampling.steps,
            blocks=len(plan.blocks) if plan else 0,
            wall_s=time.perf_counter() - start, denoise_s=getattr(self, "_denoise_s", None),
            time_to_first_frame_s=first, world_size=self.ctx.world_size,
            video=str(output.sink.path) if output and output.sink.path else None, config=cfg.resolved(),
            parallel={"pipeline": self.layout.pipeline, "patch": self.layout.patch,
                      "stage_layers": [list(r) for r in ranges], **self._patch_report()},
            model=self._model_report(),
            plan={"blocks": len(plan.blocks), "iterations": plan.iterations, "max_queue": plan.max_queue,
                  "forwards": len(plan.forwards), "block_frames": [b.frames for b in plan.blocks],
                  "context_frames": plan.context_frames, "feature_cache": plan.feature_cache} if plan else {},
            ranks=sorted(rows, key=lambda r: r["rank"]), block_digests=list(output.digests) if output else [],
            error=error)
        write_run_report(Path(cfg.output.dir), report)
        return report

    def _model_report(self) -> dict | None:
        factors = getattr(self, "factors", None)  # None when the run failed before the folder was read
        if factors is None:
            return None
        return {"family": factors.family, "experts": list(factors.experts), "boundary_ratio": factors.boundary_ratio,
                "latent_channels": factors.latent_channels, "time_stride": factors.time_stride,
                "spatial_stride": factors.spatial_stride, "patch_size": list(factors.patch_size),
                "timestep_form": factors.timestep_form,
                "expert_of_step": list(self.choice.expert_of_step) if hasattr(self, "choice") else None}

    def _patch_report(self) -> dict:
        par = self.config.parallel
        if self.layout.patch == 1:
            return {}
        return {"patch_mode": par.patch_mode, "pcpp_fraction": par.pcpp_fraction, "warmup_steps": par.warmup_steps}


def _progress(config: RunConfig, total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="denoise", unit="fwd", disable=not config.output.progress, dynamic_ncols=True)


def run_rank(config: RunConfig, ctx: DistContext) -> RunReport | None:
    """Run this rank; on failure the driver still finalises the mp4 and writes run.json (complete: false).

    A stop signal raises Terminated wherever this rank is, so the same cleanup runs as for an error.
    """
    with raise_on_stop_signals(Terminated):
        worker = Worker(config, ctx)
        try:
            return worker.run()
        except BaseException as err:
            if ctx.is_driver:
                _write_failure(worker, err)
            raise


def _write_failure(worker: Worker, err: BaseException) -> None:
    cfg = worker.config
    cause = describe_failure(err)
    message = cause if isinstance(err, Interrupted) else f"rank {worker.ctx.rank}: {cause}"
    output = getattr(worker, "_output", None)
    try:
        factors = getattr(worker, "factors", None)  # None when the model folder was never read
        plan = build_plan(cfg, factors) if factors is not None else None
        worker._report(plan, output, worker.recorder.t0, [], [], complete=False, error=message)
    except ParavideoError as report_err:  # e.g. a full disk: one line, the run's own error follows
        print(f"paravideo: could not record the failure in run.json: {report_err}", file=sys.stderr, flush=True)
    except Exception:  # noqa: BLE001 - never mask the original failure
        traceback.print_exc()


def describe_failure(err: BaseException) -> str:
    """A one-line cause for an error raised in a rank, naming the innermost error it was raised from
    (a loader's "Unable to load weights from <file>" says which file; the innermost error says why)."""
    text = str(err) if isinstance(err, Interrupted) else describe_error(err)
    root, seen = err, {id(err)}
    while True:
        inner = root.__cause__ or (None if root.__suppress_context__ else root.__context__)
        if inner is None or id(inner) in seen:
            break
        root = inner
        seen.add(id(inner))
    detail = str(root).strip().splitlines()[0][:300] if root is not err and str(root).strip() else ""
    if detail and detail not in text:
        text += f" (caused by {type(root).__name__}: {detail})"
    return text
