"""The parallel layout: degrees per mesh axis, rank coordinates, and the process group setup."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

from paravideo.errors import ConfigError


@dataclass(frozen=True)
class ParallelLayout:
    """Degrees of each axis; rank = stage * patch + band (bands of one stage are neighbours)."""

    pipeline: int = 1
    patch: int = 1

    def __post_init__(self) -> None:
        for axis in ("pipeline", "patch"):
            if getattr(self, axis) < 1:
                raise ConfigError(f"parallel.{axis} must be >= 1, got {getattr(self, axis)}")

    @property
    def world_size(self) -> int:
        return self.pipeline * self.patch

    def check_world(self, world_size: int) -> None:
        """Raise a ConfigError unless the degrees multiply to `world_size`."""
        if world_size != self.world_size:
            raise ConfigError(f"parallel.pipeline x parallel.patch = {self.pipeline} x {self.patch} = "
                              f"{self.world_size}, but the launcher starts {world_size} ranks; set launch.nproc "
                              f"(or torchrun --nproc-per-node) to {self.world_size}, or change the degrees")

    def stage_of(self, rank: int) -> int:
        """Pipeline stage of `rank`."""
        return rank // self.patch

    def band_of(self, rank: int) -> int:
        """Patch band of `rank` within its stage."""
        return rank % self.patch

    def rank_of(self, stage: int, band: int = 0) -> int:
        """Rank holding (stage, band)."""
        return stage * self.patch + band

    def band_ranks(self, stage: int) -> list[int]:
        """Ranks of every band of `stage`, in band order: the peers of its patch exchanges."""
        return [self.rank_of(stage, band) for band in range(self.patch)]


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: rank, world size, device, and whether a process group runs."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool

    @property
    def is_driver(self) -> bool:
        """Rank 0 owns block schedulers, noise, text encoding and the streaming decode."""
        return self.rank == 0


def pick_device(preference: str, local_rank: int) -> torch.device:
    """cuda:<local_rank> when asked for (or auto and available), else cpu."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("model.device is 'cuda' but torch sees no CUDA device; use 'auto' or 'cpu'")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(device_pref: str, timeout_s: float) -> DistContext:
    """Join the process group described by torchrun-style env vars (RANK, WORLD_SIZE, MASTER_*)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    device = pick_device(device_pref, local_rank)
    if world == 1 and "MASTER_ADDR" not in os.environ:
        return DistContext(rank=0, world_size=1, local_rank=0, device=device, distributed=False)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    from paravideo.launch.rendezvous import bind_gloo_to_job_interface, make_store

    # Listen only where the job talks (loopback for a local run), not on every interface.
    timeout = datetime.timedelta(seconds=timeout_s)
    bind_gloo_to_job_interface()
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout,
                            store=make_store(rank, world, timeout))
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device, distributed=True)


def shutdown_distributed(ctx: DistContext) -> None:
    """Destroy the process group if this process made one."""
    import torch.distributed as dist

    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
