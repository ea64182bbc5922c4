"""The K/V row exchange between the bands of one stage, driven by a piece plan (exact gather, halos).

A piece plan says, for every band, which rows of which band its attention reads. Each band
receives the pieces other bands own and sends each peer exactly the rows that peer's plan names:
the whole band for exact and DistriFusion attention, only the halo rows for PCPP (never a whole
band sliced after).
"""

from __future__ import annotations

from typing import Callable

import torch

from paravideo.parallel.comm import P2P, Exchange, Tag
from paravideo.parallel.patch.bands import Band, BandSplit, join_rows, take_rows

# K/V travel stacked as one tensor (2, batch, tokens, heads, head_dim): one message per peer, not two.
TOKEN_DIM = 2


class RowExchange:
    """Moves K/V rows between the bands of a stage according to `pieces_of(band)`."""

    def __init__(self, p2p: P2P, split: BandSplit, band: int, ranks: list[int],
                 pieces_of: Callable[[int], tuple[Band, ...]], *, kind: str, what: str):
        assert len(ranks) == len(split), "one rank per band"
        self.p2p, self.split, self.band, self.ranks = p2p, split, split.bands[band], ranks
        self.kind, self.what = kind, what
        self.pieces = pieces_of(band)
        self.remote = [p for p in self.pieces if p.index != band]
        # What each peer's plan reads from this band: the only rows that leave this rank.
        self.outgoing = [(peer, p) for peer in range(len(split)) if peer != band
                         for p in pieces_of(peer) if p.index == band]
        self.tokens_per_frame = split.tokens_per_frame(self.pieces)

    def frames(self, kv_local: torch.Tensor) -> int:
        """Frames of a stacked local K/V `(2, b, frames x band tokens, heads, head_dim)`."""
        return kv_local.shape[TOKEN_DIM] // (self.band.rows * self.split.token_cols)

    def remote_shapes(self, kv_local: torch.Tensor) -> list[tuple[int, ...]]:
        """Shapes of the pieces this band receives, for K/V shaped like `kv_local`."""
        frames, cols = self.frames(kv_local), self.split.token_cols
        two, batch, _, heads, head_dim = kv_local.shape
        return [(two, batch, frames * p.rows * cols, heads, head_dim) for p in self.remote]

    def _local_rows(self, kv_local: torch.Tensor, frames: int, lo: int, hi: int) -> torch.Tensor:
        band = self.band
        return take_rows(kv_local, dim=TOKEN_DIM, frames=frames, rows=band.rows, cols=self.split.token_cols,
                         lo=lo - band.lo, hi=hi - band.lo)

    def start(self, kv_local: torch.Tensor, buffers: list[torch.Tensor]) -> Exchange:
        """Receive the remote pieces into `buffers`; send this band's rows to the peers that read them."""
        frames = self.frames(kv_local)
        sends = [(self._local_rows(kv_local, frames, p.lo, p.hi), self.ranks[peer]) for peer, p in self.outgoing]
        recvs = [(buf, self.ranks[p.index]) for buf, p in zip(buffers, self.remote)]
        return self.p2p.exchange(sends, recvs, kind=self.kind, tag=Tag.PATCH_KV, what=self.what)

    def assemble(self, kv_local: torch.Tensor, received: list[torch.Tensor]) -> torch.Tensor:
        """All pieces in global row order, frame-major: the K/V this band attends to."""
        frames = self.frames(kv_local)
        remote = iter(received)
        parts = [kv_local if p.index == self.band.index else next(remote) for p in self.pieces]
        if len(parts) == 1:
            return kv_local
        return join_rows(parts, dim=TOKEN_DIM, frames=frames, cols=self.split.token_cols)

    def gather(self, kv_local: torch.Tensor) -> torch.Tensor:
        """Synchronous exchange of fresh K/V, assembled (receive buffers come from and go back to the pool)."""
        pool = self.p2p.pool
        buffers = [pool.take(shape, kv_local.dtype) for shape in self.remote_shapes(kv_local)]
        received = self.p2p.complete(self.start(kv_local, buffers))
        out = self.assemble(kv_local, received)
        for buf in buffers:
            pool.give(buf)
        return out

    def cut(self, kv_full: torch.Tensor) -> list[torch.Tensor]:
        """The remote pieces, cut from K/V of the whole frame (frame-major at the token dim)."""
        split = self.split
        frames = kv_full.shape[TOKEN_DIM] // (split.token_rows * split.token_cols)
        return [take_rows(kv_full, dim=TOKEN_DIM, frames=frames, rows=split.token_rows, cols=split.token_cols,
                          lo=p.lo, hi=p.hi) for p in self.remote]
