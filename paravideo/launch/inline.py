"""The inline launcher: one rank in this process, no process group."""

from __future__ import annotations

from paravideo.config import RunConfig
from paravideo.parallel.layout import DistContext, pick_device
from paravideo.telemetry.run_report import RunReport
from paravideo.runtime.worker import run_rank


def launch_inline(config: RunConfig) -> RunReport:
    """Run the whole job in this process (`generate`'s preflight has checked that the layout is one rank)."""
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=pick_device(config.model.device, 0),
                      distributed=False)
    return run_rank(config, ctx)
