"""The inline launcher: one rank in this process, no process group."""

from __future__ import annotations

from paravideo.config import RunConfig
from paravideo.errors import ConfigError
from paravideo.parallel.layout import DistContext, pick_device
from paravideo.report.run_report import RunReport
from paravideo.worker import run_rank


def launch_inline(config: RunConfig) -> RunReport:
    """Run the whole job in this process."""
    if config.parallel.pipeline != 1:
        raise ConfigError(f"launch.launcher 'inline' runs one rank, but parallel.pipeline = "
                          f"{config.parallel.pipeline}; set launch.launcher: local and launch.nproc: "
                          f"{config.parallel.pipeline}")
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=pick_device(config.model.device, 0),
                      distributed=False)
    return run_rank(config, ctx)
