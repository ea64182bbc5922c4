"""Sequence-parallel self-attention: the wrapper the hook registry runs around the attention kernel.

A rank holds a chunk of the window's tokens. Ulysses first swaps tokens for heads inside its group
(now: all of the group's tokens, 1/U of the heads); the ring then passes the ring members' K/V chunks
round, one at a time. The registry's K/V hooks (the feature cache) see K/V of the whole window for this
rank's heads, as on one rank: at once without a ring, chunk by chunk (each with its window tokens) with
one. So cached K/V are split the same way as the heads (Ulysses) and complete per rank (ring).
"""

from __future__ import annotations

from typing import Callable

import torch

from paravideo.models.hooks import AttentionCall
from paravideo.parallel.seq import ring, ulysses
from paravideo.parallel.seq.groups import Collectives, SeqGroups
from paravideo.parallel.seq.split import chunk_sizes

Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class SeqAttention:
    """Ulysses all-to-all and/or ring K/V around the kernel, for q/k/v `(b, my tokens, heads, d)`."""

    name = "sequence_parallel"

    def __init__(self, groups: SeqGroups, comm: Collectives):
        self.groups, self.comm = groups, comm

    def _sizes(self, call: AttentionCall) -> tuple[list[int], list[int]]:
        """Tokens of each member of this rank's Ulysses group, and of each ring chunk (a Ulysses group's tokens)."""
        info, g = call.info, self.groups
        sizes = chunk_sizes(info.window_frames * info.tokens_per_frame, g.seq.size)
        u = g.ulysses.size
        ring_sizes = [sum(sizes[r * u:(r + 1) * u]) for r in range(g.ring.size)]
        mine = g.ring.index * u
        return sizes[mine:mine + u], ring_sizes

    def __call__(self, call: AttentionCall, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
                 kv_hooks: ring.PieceHooks, kernel: Kernel) -> torch.Tensor:
        g = self.groups
        uly_sizes, ring_sizes = self._sizes(call)
        if g.ulysses.size > 1:
            query, key, value = ulysses.scatter_heads(torch.stack([query, key, value]), uly_sizes, self.comm,
                                                      g.ulysses).unbind(0)
        if g.ring.size > 1:
            out = ring.ring_attention(query, key, value, ring_sizes, self.comm, g.ring, kv_hooks=kv_hooks)
        else:
            key, value = kv_hooks(key, value)
            out = kernel(query, key, value)
        if g.ulysses.size > 1:
            out = ulysses.gather_heads(out, uly_sizes, self.comm, g.ulysses)
        return out


class GatherTokens:
    """Last stage: the sequence group's token chunks joined again, so the head sees the whole window."""

    def __init__(self, comm: Collectives, groups: SeqGroups, window_tokens: Callable[[object], int]):
        self.comm, self.group, self.window_tokens = comm, groups.seq, window_tokens

    def __call__(self, fwd, hidden: torch.Tensor) -> torch.Tensor:
        sizes = chunk_sizes(self.window_tokens(fwd), self.group.size)
        parts = self.comm.all_gather(hidden, sizes, 1, self.group, kind="seq_gather",
                                     what=f"token chunks of forward {fwd.seq}")
        return torch.cat(parts, dim=1)
