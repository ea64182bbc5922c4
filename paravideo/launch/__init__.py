"""Launchers, chosen by `launch.launcher` and imported lazily; each runs the same worker per rank."""

from __future__ import annotations

import os

from paravideo.config import RunConfig
from paravideo.telemetry.run_report import RunReport

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def under_torchrun() -> bool:
    """True when this process was started by torchrun (or another launcher setting its env vars)."""
    return all(name in os.environ for name in TORCHRUN_ENV)


def launch(config: RunConfig) -> RunReport | None:
    """Run the job with the configured launcher; returns rank 0's report where this process sees it."""
    if under_torchrun():
        from paravideo.launch.torchrun import run_torchrun_rank

        return run_torchrun_rank(config)
    kind = config.launch.launcher
    if kind == "inline":
        from paravideo.launch.inline import launch_inline

        return launch_inline(config)
    if kind == "local":
        from paravideo.launch.local import launch_local

        return launch_local(config)
    if kind == "torchrun":
        from paravideo.errors import ConfigError

        raise ConfigError("launch.launcher is 'torchrun' but this process was not started by torchrun; run "
                          "`torchrun --nproc-per-node N -m paravideo generate -c CONFIG`, or use launcher local")
    if kind == "ray":
        from paravideo.launch.ray_launcher import launch_ray

        return launch_ray(config)
    raise AssertionError(f"unhandled launcher {kind!r}")
