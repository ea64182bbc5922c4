"""The parallel layout: degrees per mesh axis, rank coordinates, and the process group setup."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

from paravideo.errors import ConfigError


AXES = ("cfg", "pipeline", "patch", "ring", "ulysses")  # outermost first: the order ranks are numbered in


@dataclass(frozen=True)
class ParallelLayout:
    """Degrees of each mesh axis and rank coordinates.

    rank = (((cfg * pipeline + stage) * patch + band) * ring + ring_index) * ulysses + ulysses_index, so
    the ranks of one stage's band are neighbours (its sequence group), a Ulysses group is contiguous
    inside it, and without the new axes rank = stage * patch + band as before. CFG group 0 computes
    the conditional branch and holds the driver rank; group 1 the unconditional one.
    """

    pipeline: int = 1
    patch: int = 1
    cfg: int = 1
    ulysses: int = 1
    ring: int = 1

    @classmethod
    def from_config(cls, parallel) -> ParallelLayout:
        """The layout a `ParallelConfig` asks for."""
        return cls(pipeline=parallel.pipeline, patch=parallel.patch, cfg=parallel.cfg, ulysses=parallel.ulysses,
                   ring=parallel.ring)

    def __post_init__(self) -> None:
        for axis in AXES:
            if getattr(self, axis) < 1:
                raise ConfigError(f"parallel.{axis} must be >= 1, got {getattr(self, axis)}")
        if self.cfg > 2:
            raise ConfigError(f"parallel.cfg = {self.cfg}: classifier-free guidance has two branches "
                              "(conditional, unconditional); use 1 or 2")

    @property
    def seq(self) -> int:
        """Ranks that split one stage's tokens (Ulysses x ring)."""
        return self.ulysses * self.ring

    @property
    def world_size(self) -> int:
        return self.cfg * self.pipeline * self.patch * self.seq

    def describe(self) -> str:
        """`parallel.cfg x parallel.pipeline x ... = a x b x ...` over the axes in use (pipeline always)."""
        used = [a for a in AXES if a == "pipeline" or getattr(self, a) > 1]
        return (" x ".join(f"parallel.{a}" for a in used) + " = " + " x ".join(str(getattr(self, a)) for a in used))

    def check_world(self, world_size: int) -> None:
        """Raise a ConfigError unless the degrees multiply to `world_size`."""
        if world_size != self.world_size:
            product = self.describe() + (f" = {self.world_size}" if self.seq * self.cfg * self.patch > 1 else "")
            raise ConfigError(f"{product}, but the launcher starts {world_size} ranks; "
                              f"set launch.nproc (or torchrun --nproc-per-node) to {self.world_size}, or change the "
                              "degrees")

    def _coords(self, rank: int) -> tuple[int, int, int, int]:
        """(cfg group, stage, band, sequence index) of `rank`."""
        rank, seq = divmod(rank, self.seq)
        rank, band = divmod(rank, self.patch)
        cfg, stage = divmod(rank, self.pipeline)
        return cfg, stage, band, seq

    def stage_of(self, rank: int) -> int:
        """Pipeline stage of `rank`."""
        return self._coords(rank)[1]

    def band_of(self, rank: int) -> int:
        """Patch band of `rank` within its stage."""
        return self._coords(rank)[2]

    def cfg_of(self, rank: int) -> int:
        """CFG group of `rank`: 0 = conditional branch (and the driver), 1 = unconditional."""
        return self._coords(rank)[0]

    def seq_of(self, rank: int) -> int:
        """Index of `rank` in its stage's sequence group (ring_index x ulysses + ulysses_index)."""
        return self._coords(rank)[3]

    def rank_of(self, stage: int, band: int = 0, *, cfg: int = 0, seq: int = 0) -> int:
        """Rank holding (cfg group, stage, band, sequence index)."""
        return ((cfg * self.pipeline + stage) * self.patch + band) * self.seq + seq

    def band_ranks(self, stage: int, *, cfg: int = 0, seq: int = 0) -> list[int]:
        """Ranks of every band of `stage`, in band order: the peers of its patch exchanges."""
        return [self.rank_of(stage, band, cfg=cfg, seq=seq) for band in range(self.patch)]

    def seq_ranks(self, rank: int) -> list[int]:
        """Ranks splitting `rank`'s tokens (its sequence group), in sequence order."""
        first = rank - self.seq_of(rank)
        return list(range(first, first + self.seq))

    def ulysses_ranks(self, rank: int) -> list[int]:
        """`rank`'s Ulysses group: consecutive sequence indices, one token chunk each."""
        first = rank - self.seq_of(rank) % self.ulysses
        return list(range(first, first + self.ulysses))

    def ring_ranks(self, rank: int) -> list[int]:
        """`rank`'s ring group: same Ulysses index (same heads), one ring chunk of tokens each."""
        first = rank - self.seq_of(rank)
        return [first + r * self.ulysses + self.seq_of(rank) % self.ulysses for r in range(self.ring)]

    def seq_groups(self) -> list[list[int]]:
        """Every sequence group of the job (each rank builds the same list: process groups need it)."""
        return [list(range(first, first + self.seq)) for first in range(0, self.world_size, self.seq)]


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
