"""The process groups of sequence parallelism and the collectives run on them (bounded, counted, interruptible)."""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist

from paravideo.parallel.comm import wait_failure, wait_works
from paravideo.parallel.layout import ParallelLayout
from paravideo.telemetry.recorder import IDLE, Recorder


@dataclass
class Group:
    """One process group this rank belongs to: its ranks in order and this rank's index among them."""

    handle: object
    ranks: list[int]
    index: int

    @property
    def size(self) -> int:
        return len(self.ranks)


def _member_group(all_ranks: list[list[int]], rank: int) -> Group:
    # Every rank creates every group, in the same order: torch.distributed.new_group requires it. A group of
    # one rank (an axis of degree 1) never runs a collective and gets no process group.
    mine = None
    for ranks in all_ranks:
        handle = dist.new_group(ranks) if len(ranks) > 1 else None
        if rank in ranks:
            mine = Group(handle, ranks, ranks.index(rank))
    assert mine is not None
    return mine


@dataclass
class SeqGroups:
    """This rank's sequence group (all chunks of a stage), Ulysses group and ring group."""

    seq: Group
    ulysses: Group
    ring: Group

    @classmethod
    def build(cls, layout: ParallelLayout, rank: int) -> SeqGroups:
        """Create the groups of every stage on every rank (collective: all ranks call it together)."""
        seq_groups = layout.seq_groups()
        uly = sorted({tuple(layout.ulysses_ranks(r)) for r in range(layout.world_size)})
        ring = sorted({tuple(layout.ring_ranks(r)) for r in range(layout.world_size)})
        return cls(seq=_member_group(seq_groups, rank), ulysses=_member_group([list(g) for g in uly], rank),
                   ring=_member_group([list(g) for g in ring], rank))


class Collectives:
    """Collectives on a sub-group: async, waited interruptibly within launch.timeout_s, bytes recorded."""

    def __init__(self, rank: int, *, device: torch.device, recorder: Recorder, timeout_s: float):
        self.rank, self.device, self.recorder = rank, device, recorder
        self.timeout = datetime.timedelta(seconds=timeout_s)

    def _wait(self, works: list, group: Group, what: str) -> None:
        with self.recorder.span(f"wait {what}", IDLE, peers=group.ranks):
            start = time.monotonic()
            try:
                wait_works(works, self.timeout, self.device)
            except RuntimeError as err:
                raise wait_failure(err, rank=self.rank, waited_s=time.monotonic() - start,
                                   timeout_s=self.timeout.total_seconds(), what=what,
                                   peers=f"ranks {group.ranks}") from None

    def all_to_all(self, pieces: list[torch.Tensor], out_numels: list[int], group: Group, *, kind: str,
                   what: str) -> list[torch.Tensor]:
        """Send `pieces[j]` to member j; returns what each member j sent here (`out_numels[j]` values, flat)."""
        flat_in = torch.cat([p.reshape(-1) for p in pieces])
        flat_out = torch.empty(sum(out_numels), dtype=flat_in.dtype, device=flat_in.device)
        in_splits = [p.numel() for p in pieces]
        work = dist.all_to_all_single(flat_out, flat_in, output_split_sizes=out_numels, input_split_sizes=in_splits,
                                      group=group.handle, async_op=True)
        self.recorder.add_bytes(kind, (flat_in.numel() - in_splits[group.index]) * flat_in.element_size())
        self._wait([work], group, what)
        return list(flat_out.split(out_numels))

    def all_gather(self, tensor: torch.Tensor, sizes: list[int], dim: int, group: Group, *, kind: str,
                   what: str) -> list[torch.Tensor]:
        """Every member's `tensor`, whose `dim` holds `sizes[j]` on member j (padded on the wire to the largest)."""
        longest = max(sizes)
        if tensor.shape[dim] < longest:
            pad = list(tensor.shape)
            pad[dim] = longest - tensor.shape[dim]
            tensor = torch.cat([tensor, tensor.new_zeros(pad)], dim=dim)
        tensor = tensor.contiguous()
        out = [torch.empty_like(tensor) for _ in sizes]
        work = dist.all_gather(out, tensor, group=group.handle, async_op=True)
        self.recorder.add_bytes(kind, tensor.numel() * tensor.element_size() * (group.size - 1))
        self._wait([work], group, what)
        return [part.narrow(dim, 0, size) for part, size in zip(out, sizes)]

    def shift(self, tensor: torch.Tensor, out: torch.Tensor, group: Group, *, kind: str,
              what: str) -> Callable[[], None]:
        """Post one ring step: `tensor` to the next member, the previous member's into `out`; returns its wait.

        The caller computes between posting and waiting, so the transfer overlaps its work. Send and
        receive go out as one batch: on NCCL two ranks that each post a lone send first can deadlock.
        """
        after = group.ranks[(group.index + 1) % group.size]
        before = group.ranks[(group.index - 1) % group.size]
        works = dist.batch_isend_irecv([dist.P2POp(dist.isend, tensor, after, group=group.handle),
                                        dist.P2POp(dist.irecv, out, before, group=group.handle)])
        self.recorder.add_bytes(kind, tensor.numel() * tensor.element_size())
        return lambda: self._wait(works, group, what)
