"""Under torchrun: this process is one rank; rendezvous from RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT."""

from __future__ import annotations

import sys

from paravideo.config import RunConfig
from paravideo.parallel.layout import init_distributed, shutdown_distributed
from paravideo.report.run_report import RunReport
from paravideo.worker import describe_failure, run_rank


def run_torchrun_rank(config: RunConfig) -> RunReport | None:
    """Join the group, run this rank, always leave the group."""
    ctx = init_distributed(config.model.device, config.launch.timeout_s)
    try:
        return run_rank(config, ctx)
    except BaseException as err:
        print(f"paravideo: rank {ctx.rank} failed: {describe_failure(err)}", file=sys.stderr, flush=True)
        raise
    finally:
        shutdown_distributed(ctx)
