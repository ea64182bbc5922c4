"""One worker per rank, the same under every launcher: a lifecycle of set up, build, run, report, tear down.

Each step is one call into the module that owns it: `rank_model` (what the rank loads), `roles` (what it
plays), the stage runner (the loop), `rank_report` (run.json, trace).
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from paravideo.config import RunConfig
from paravideo.errors import ParavideoError, describe_error
from paravideo.launch.stop import Interrupted, raise_on_stop_signals
from paravideo.parallel.layout import DistContext, ParallelLayout
from paravideo.runtime.rank_model import RankModel, load_rank_model
from paravideo.runtime.rank_report import ReportInputs, gather_rank_rows, write_report
from paravideo.runtime.roles import RankRoles, RoleContext, assemble_roles
from paravideo.schedule.plan import Forward
from paravideo.telemetry.recorder import Recorder
from paravideo.telemetry.run_report import RunReport
from paravideo.telemetry.trace import write_trace

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
        if not raw or ":decode:" in raw:  # decode faults: io/decode_pipeline.py DecodeFault
            return None
        rank, forward = raw.split(":")
        return cls(int(rank), int(forward))

    def check(self, rank: int, fwd: Forward) -> None:
        """Raise when `rank` is about to run the chosen forward."""
        if self.rank == rank and self.forward == fwd.seq:
            raise RuntimeError(f"injected failure before forward {fwd.seq} ({FAULT_ENV})")

class Worker:
    """Everything one rank does for a run; `run()` returns the run report on the driver rank."""

    def __init__(self, config: RunConfig, ctx: DistContext):
        self.config, self.ctx = config, ctx
        self.layout = ParallelLayout.from_config(config.parallel)
        self.layout.check_world(ctx.world_size)
        self.recorder = Recorder(ctx.rank, keep_spans=config.output.trace)
        self.fault = FaultSpec.from_env()
        # What run.json is made of, filled in as the run gets there (a failure report uses what exists).
        self.report_inputs = ReportInputs(config=config, ctx=ctx, layout=self.layout, recorder=self.recorder,
                                          start=time.perf_counter())

    def _barrier(self) -> None:
        if self.ctx.distributed:
            import torch.distributed as dist

            dist.barrier()

    def run(self) -> RunReport | None:
        """Set up, build, run the plan, report; the driver writes video.mp4 and run.json."""
        if self.ctx.device.type == "cpu":
            torch.set_num_threads(self.config.launch.threads_per_rank)
        model = self._load()
        with ExitStack() as stack:
            roles = assemble_roles(RoleContext(self.config, self.ctx, self.layout, model, self.recorder), stack,
                                   before_forward=self._before_forward,
                                   on_output=lambda output: setattr(self.report_inputs, "output", output))
            self._denoise(roles)
        return self._report(model)

    def _load(self) -> RankModel:
        inputs = self.report_inputs

        def known(factors, choice):
            inputs.factors, inputs.choice = factors, choice

        model = load_rank_model(self.config, self.ctx, self.layout, self.recorder, self._barrier, on_factors=known)
        inputs.plan, inputs.ranges, inputs.loads = model.plan, model.ranges, model.balance.loads
        return model

    def _before_forward(self, fwd: Forward) -> None:
        if self.fault is not None:
            self.fault.check(self.ctx.rank, fwd)

    def _denoise(self, roles: RankRoles) -> None:
        """Run every forward from the start, then finish the output: the mp4 renamed, latents saved if asked."""
        loop_start = time.perf_counter()
        self.report_inputs.step_cache = roles.step_cache
        roles.runner.run(roles.start_seq)
        if roles.p2p is not None:
            roles.p2p.flush()  # a first-stage band's last finished rows may still be on their way
        if roles.decode_stage is not None:
            roles.decode_stage.finish()  # every frame has gone through this rank's decoder pieces
        output = roles.output
        if output is not None:
            output.flush()
            output.close()
            output.sink.close(complete=True)
            roles.checkpointer.discard()
            if output.kept is not None:
                torch.save(torch.cat(output.kept, dim=2), Path(self.config.output.dir) / "latents.pt")
        self.report_inputs.denoise_s = time.perf_counter() - loop_start

    def _report(self, model: RankModel) -> RunReport | None:
        rows = gather_rank_rows(self.report_inputs, model.experts, self._barrier)
        if not self.ctx.is_driver:
            return None
        report = write_report(self.report_inputs, [row for row, _ in rows], complete=True)
        write_trace(Path(self.config.output.dir), [trace for _, trace in rows])
        return report

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
    cause = describe_failure(err)
    message = cause if isinstance(err, Interrupted) else f"rank {worker.ctx.rank}: {cause}"
    inputs = worker.report_inputs
    inputs.start = worker.recorder.t0
    try:
        write_report(inputs, [], complete=False, error=message)
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
