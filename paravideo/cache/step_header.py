"""How the first stage's step-cache decision reaches every rank: sums over the first stage, a header along the pipeline.

The decision travels as a separate 2-number header `[seq, reuse]` on its own tag, sent just before
the hidden states of the same forward, rather than as an extra row of the hidden tensor: the
hidden buffers, their shapes and the byte counts stay what they are without a step cache, no
stage has to strip a row, and the header carries the forward's seq, so a receiving stage checks
that both streams are aligned. Its cost is 16 bytes per forward per hop.

A computed forward's starting hidden states also go from the first stage straight to the last
(`StartLink`), which keeps the residual over all layers (see step_cache.py for why): one hidden-
sized message per computed forward, none per reused one.

The first stage may be several ranks, each holding a share of the one-rank hidden states: patch
bands (token rows), sequence chunks (Ulysses / ring: token ranges) and CFG groups (one row of the
guidance batch each). They exchange their integer L1 sums (2 numbers each) and add them up
(`StageSum`): the totals are the one-rank statistic over the whole batch of two and every token, bit
for bit, on every first-stage rank, which then runs the same policy on the same state and reaches the
same decision. One exchange among all of them, rather than an all-reduce per axis: p2p needs no
process group spanning the CFG groups, and integers add the same in any order.
"""

from __future__ import annotations

import torch

from paravideo.parallel.comm import P2P, PendingRecv, Tag
from paravideo.schedule.plan import BlockPlan, Forward

# run.json bytes_by_kind
HEADER_KIND, STATS_KIND, START_KIND = "step_cache_header", "step_cache_stats", "step_cache_start"


class HeaderSink:
    """Not the last stage: the forward's decision goes to the next stage ahead of its hidden states."""

    def __init__(self, inner, p2p: P2P, dst: int, cache):
        self.inner, self.p2p, self.dst, self.cache = inner, p2p, dst, cache

    def put(self, fwd: Forward, hidden: torch.Tensor, cond) -> None:
        reuse = self.cache.decisions[fwd.seq].reuse
        header = torch.tensor([fwd.seq, int(reuse)], dtype=torch.int64, device=self.p2p.device)
        self.p2p.send(header, self.dst, kind=HEADER_KIND, tag=Tag.STEP_CACHE)
        self.inner.put(fwd, hidden, cond)

    def finish(self) -> None:
        self.inner.finish()


class HeaderSource:
    """Later stages: the decision of each forward before its hidden states; the next header posted ahead."""

    def __init__(self, inner, p2p: P2P, src: int, plan: BlockPlan, cache):
        self.inner, self.p2p, self.src, self.plan, self.cache = inner, p2p, src, plan, cache
        self._pending: PendingRecv | None = None

    def _post(self, seq: int) -> None:
        self._pending = None
        if seq < len(self.plan.forwards):
            self._pending = self.p2p.post_recv((2,), torch.int64, self.src, what=f"step-cache header of forward {seq}",
                                               tag=Tag.STEP_CACHE)

    def hidden(self, fwd: Forward, frames: int) -> torch.Tensor:
        if self._pending is None:  # the first forward (0, or where a resumed run starts)
            self._post(fwd.seq)
        header = self.p2p.wait(self._pending)
        seq, reuse = (int(v) for v in header.tolist())
        self.p2p.pool.give(header)
        assert seq == fwd.seq, f"step-cache header of forward {seq} arrived for forward {fwd.seq}"
        self._post(fwd.seq + 1)
        self.cache.receive(seq, bool(reuse))
        return self.inner.hidden(fwd, frames)

    def release(self, hidden: torch.Tensor) -> None:
        self.inner.release(hidden)

    def finish(self) -> None:
        self.inner.finish()


class StageSum:
    """Sums a small int64 tensor over the first stage's ranks (each sends its own to every other)."""

    def __init__(self, p2p: P2P, ranks: list[int], rank: int):
        self.p2p = p2p
        self.peers = [r for r in ranks if r != rank]

    def __call__(self, stats: torch.Tensor) -> torch.Tensor:
        local = stats.to(self.p2p.device)
        buffers = [self.p2p.pool.take(tuple(local.shape), local.dtype) for _ in self.peers]
        exchange = self.p2p.exchange([(local, r) for r in self.peers], list(zip(buffers, self.peers)),
                                     kind=STATS_KIND, tag=Tag.STEP_CACHE, what="step-cache statistics")
        total = local.clone()
        for buf in self.p2p.complete(exchange):
            total += buf  # integers: the sum is the same in any order
            self.p2p.pool.give(buf)
        return total.cpu()


class StartLink:
    """First stage -> last stage of one share (band, CFG group, sequence chunk): a computed forward's starting
    hidden states, on their own tag."""

    def __init__(self, p2p: P2P, peer: int):
        self.p2p, self.peer = p2p, peer

    def send(self, start: torch.Tensor) -> None:
        """First stage: start sending (the tensor is not modified afterwards)."""
        self.p2p.send(start, self.peer, kind=START_KIND, tag=Tag.STEP_CACHE_START)

    def post(self, like: torch.Tensor) -> PendingRecv:
        """Last stage: post the receive, shaped like this stage's input."""
        return self.p2p.post_recv(tuple(like.shape), like.dtype, self.peer, what="step-cache start",
                                  tag=Tag.STEP_CACHE_START)

    def wait(self, pending: PendingRecv) -> torch.Tensor:
        return self.p2p.wait(pending)

    def give(self, buffer: torch.Tensor) -> None:
        self.p2p.pool.give(buffer)
