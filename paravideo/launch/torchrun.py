"""Under torchrun: this process is one rank; rendezvous from RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT."""

from __future__ import annotations

import sys
from typing import Callable

from paravideo.config import RunConfig
from paravideo.launch.stop import Interrupted
from paravideo.parallel.layout import init_distributed, shutdown_distributed
from paravideo.telemetry.run_report import RunReport
from paravideo.runtime.worker import describe_failure, run_rank


def run_torchrun_rank(config: RunConfig, *,
                      on_failure: Callable[[BaseException], None] | None = None) -> RunReport | None:
    """Join the group, run this rank, always leave the group.

    `on_failure(err)` runs when the rank fails, before it leaves the group (which the others notice).
    """
    ctx = init_distributed(config.model.device, config.launch.timeout_s)
    try:
        return run_rank(config, ctx)
    except BaseException as err:
        if on_failure is not None:
            on_failure(err)
        if not isinstance(err, Interrupted):  # a stop is reported once, by whoever was stopped
            print(f"paravideo: rank {ctx.rank} failed: {describe_failure(err)}", file=sys.stderr, flush=True)
        raise
    finally:
        shutdown_distributed(ctx)
