"""Where band latents live: each stage-0 band owns its rows; full frames exist only for decoding."""

from __future__ import annotations

from typing import Callable

import torch

from paravideo.parallel.comm import P2P, Tag

LATENT_KIND = "latent_gather"
ROW_DIM = 3  # latents are (batch, channels, frames, rows, cols)


class BandNoise:
    """A band's rows of every block's initial noise, cut from the noise each rank derives from the seed."""

    def __init__(self, noise, rows: tuple[int, int]):
        self.noise, self.rows = noise, rows

    def block_noise(self, block: int) -> torch.Tensor:
        """`(1, c, frames, band rows, w)` float32 noise for `block`."""
        lo, hi = self.rows
        return self.noise.block_noise(block)[:, :, :, lo:hi].contiguous()


class SendBandLatents:
    """A stage-0 band other than the driver's: each finished block's rows go to the driver rank."""

    def __init__(self, p2p: P2P, dst: int):
        self.p2p, self.dst = p2p, dst

    def __call__(self, block: int, latents_bcthw: torch.Tensor) -> None:
        # The clean latents left the band's queue, so nothing writes them while the send is in flight.
        self.p2p.send(latents_bcthw, self.dst, kind=LATENT_KIND, tag=Tag.LATENTS)


class GatherBandLatents:
    """The driver rank: a finished block's rows from every band, joined top to bottom, then `emit`.

    Every stage-0 band finishes block k at the same point of the plan, so the others have posted
    their sends by the time the driver waits here; the decode then runs on whole frames.
    """

    def __init__(self, p2p: P2P, ranks: list[int], latent_rows: list[int],
                 emit: Callable[[int, torch.Tensor], None]):
        self.p2p, self.ranks, self.latent_rows, self.emit = p2p, ranks, latent_rows, emit

    def __call__(self, block: int, latents_bcthw: torch.Tensor) -> None:
        shape = list(latents_bcthw.shape)
        pending = []
        for band in range(1, len(self.ranks)):
            shape[ROW_DIM] = self.latent_rows[band]
            pending.append(self.p2p.post_recv(tuple(shape), latents_bcthw.dtype, self.ranks[band], tag=Tag.LATENTS,
                                              what=f"latent rows of block {block}, band {band}"))
        parts = [latents_bcthw] + [self.p2p.wait(p) for p in pending]
        full = torch.cat(parts, dim=ROW_DIM)
        for buf in parts[1:]:
            self.p2p.pool.give(buf)
        self.emit(block, full)
