"""`generate`: validate everything that can be checked cheaply, prepare the output folder, launch."""

from __future__ import annotations

from pathlib import Path

from paravideo.config import RunConfig
from paravideo.errors import ConfigError, ModelLoadError
from paravideo.launch import launch, under_torchrun
from paravideo.io.checkpoint import check_resumable
from paravideo.models.builtin import resolve_model_path
from paravideo.models.factors import ModelFactors
from paravideo.io.output_dir import ensure_writable_dir, prepare_output_dir
from paravideo.io.output_lock import OutputLock
from paravideo.telemetry.run_report import RunReport


def preflight(config: RunConfig, *, world_size: int | None = None) -> ModelFactors:
    """Checks that need no worker: model folder, sizes against the model's factors, degrees against world
    size and layers; returns the factors (a built-in model is built here once, so workers find it ready)."""
    from paravideo.models.checks import check_against_model
    from paravideo.models.family import inspect_model
    from paravideo.parallel.layout import ParallelLayout
    from paravideo.parallel.partition import stage_ranges

    layout = ParallelLayout.from_config(config.parallel)
    if world_size is None:
        world_size = {"inline": 1, "local": config.launch.nproc, "ray": config.launch.nproc}.get(
            config.launch.launcher, layout.world_size)
    _check_launch_target(config, layout.world_size)
    layout.check_world(world_size)
    try:
        _, factors = inspect_model(resolve_model_path(config.model.path))
    except ModelLoadError as err:
        raise ConfigError(str(err)) from None
    check_against_model(config, factors)
    stage_ranges(factors.num_layers, layout.pipeline, config.parallel.stage_layers)
    return factors


def _check_launch_target(config: RunConfig, ranks: int) -> None:
    """What the launcher will reach for exists: one rank for inline, the Ray cluster, a CUDA device."""
    launch = config.launch
    if launch.launcher == "inline" and ranks != 1:
        raise ConfigError(f"launch.launcher 'inline' runs one rank, but the parallel degrees need {ranks}; set "
                          f"launch.launcher: local (or ray) and launch.nproc: {ranks}")
    if launch.launcher == "ray":
        from paravideo.launch.ray_address import check_ray_address

        check_ray_address(launch.ray_address, timeout_s=launch.ray_connect_timeout_s)
    # Only inline and local ranks run here; torchrun and Ray ranks check their own machines' devices.
    elif config.parallel.sp_backend == "xfuser" and launch.launcher in ("inline", "local"):
        from paravideo.parallel.seq.backend import check_backend_here

        check_backend_here(config)
    if config.model.device == "cuda" and launch.launcher in ("inline", "local"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("model.device is 'cuda' but torch sees no CUDA device on this machine; use "
                              "model.device: auto or cpu, or launch.launcher: torchrun / ray on GPU machines")


def generate(config: RunConfig) -> RunReport | None:
    """Run one generation job; returns rank 0's report (None on other torchrun ranks)."""
    if under_torchrun():
        import os

        preflight(config, world_size=int(os.environ["WORLD_SIZE"]))
        if os.environ.get("RANK") != "0":
            return launch(config)
    else:
        preflight(config)
    # This process (the CLI for inline and local, rank 0 under torchrun, the driver with Ray) holds
    # the folder's lock until the run has ended, however it ends.
    with claim_output_dir(config):
        return launch(config)


def claim_output_dir(config: RunConfig) -> OutputLock:
    """Make output.dir writable and this run's own (lock), check a resume, clear an earlier run's files.

    Returns the held lock; everything here happens before any model loads.
    """
    out = config.output
    ensure_writable_dir(out.dir)
    lock = OutputLock.acquire(out.dir)
    try:
        prepare_output_dir(out.dir, overwrite=out.overwrite, resume=out.resume)  # a resume deletes nothing
        if out.resume:
            check_resumable(Path(out.dir), config.resolved())
    except BaseException:
        lock.release()
        raise
    return lock
