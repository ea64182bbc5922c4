"""Stale K/V buffers: other bands' rows from the previous step, per (block, layer), double-buffered."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from paravideo.parallel.comm import Exchange
from paravideo.parallel.patch.exchange import RowExchange


@dataclass
class _Slot:
    """Two buffer sets of one (block, layer): one read by this step, one filled for the next."""

    ready: list[torch.Tensor]
    spare: list[torch.Tensor]
    inflight: Exchange | None = None


class StaleKV:
    """Keeps the remote pieces of a piece plan one step old, refreshed asynchronously.

    Step t of a block reads the rows its peers computed at step t-1 (same block, same layer) and
    starts the exchange of its own fresh rows for step t+1; that exchange runs while the rest of
    the iteration computes (other layers, other blocks) and is completed at step t+1's use.
    Buffers live from a block's first stale step to its last step, then go back to the pool.
    """

    def __init__(self, exchange: RowExchange):
        self.exchange = exchange
        self.p2p = exchange.p2p
        self._slots: dict[tuple[int, int], _Slot] = {}

    def _take(self, like: torch.Tensor) -> list[torch.Tensor]:
        return [self.p2p.pool.take(shape, like.dtype) for shape in self.exchange.remote_shapes(like)]

    def seed(self, block: int, layer: int, kv_local: torch.Tensor, kv_full: torch.Tensor) -> None:
        """Start a block's stale rows from an exact step's gathered K/V (no extra messages)."""
        assert (block, layer) not in self._slots, f"stale K/V of block {block} layer {layer} seeded twice"
        slot = _Slot(ready=self._take(kv_local), spare=self._take(kv_local))
        for buf, piece in zip(slot.ready, self.exchange.cut(kv_full)):
            buf.copy_(piece)
        self._slots[(block, layer)] = slot

    def use(self, block: int, layer: int, kv_local: torch.Tensor, *, last: bool) -> torch.Tensor:
        """The K/V to attend to: fresh local rows, one-step-stale remote pieces; refresh for the next step."""
        slot = self._slots[(block, layer)]
        if slot.inflight is not None:
            self.p2p.complete(slot.inflight)
            slot.ready, slot.spare = slot.spare, slot.ready
            slot.inflight = None
        if not last:
            # Started before attention runs, so the transfer overlaps this step's compute.
            slot.inflight = self.exchange.start(kv_local, slot.spare)
        kv = self.exchange.assemble(kv_local, slot.ready)
        if last:
            self._drop(block, layer)
        return kv

    def _drop(self, block: int, layer: int) -> None:
        slot = self._slots.pop((block, layer))
        assert slot.inflight is None, "a block left the queue with a K/V exchange in flight"
        for buf in slot.ready + slot.spare:
            self.p2p.pool.give(buf)

    @property
    def live_slots(self) -> int:
        """(block, layer) pairs holding buffers now."""
        return len(self._slots)
