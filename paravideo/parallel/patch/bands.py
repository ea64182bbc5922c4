"""Bands: contiguous ranges of token rows across every frame of a block, and row slicing of tokens.

Tokens are frame-major (frame, row, col), so a band's tokens are `rows x cols` per frame and every
token-local part of the model (patch embedding, RoPE, norms, MLPs, the head) runs on a band alone.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Band:
    """Token rows [lo, hi) of every frame, owned by band `index`: a whole band, or a piece of one that
    another band attends to (a piece plan is a tuple of them, top to bottom)."""

    index: int
    lo: int
    hi: int

    @property
    def rows(self) -> int:
        return self.hi - self.lo


@dataclass(frozen=True)
class BandSplit:
    """A frame's token rows cut into bands; uneven splits give the first bands one row more."""

    token_rows: int
    token_cols: int
    bands: tuple[Band, ...]

    @classmethod
    def even(cls, token_rows: int, token_cols: int, num_bands: int) -> BandSplit:
        """`num_bands` bands of as equal height as the rows allow (30 rows / 4 = 8, 8, 7, 7)."""
        if not 1 <= num_bands <= token_rows:
            raise ValueError(f"cannot cut {token_rows} token rows into {num_bands} bands")
        base, extra = divmod(token_rows, num_bands)
        bands, lo = [], 0
        for index in range(num_bands):
            hi = lo + base + (1 if index < extra else 0)
            bands.append(Band(index, lo, hi))
            lo = hi
        return cls(token_rows, token_cols, tuple(bands))

    def __len__(self) -> int:
        return len(self.bands)

    def full_pieces(self) -> tuple[Band, ...]:
        """Every band's rows, top to bottom: the whole frame (exact and DistriFusion attention)."""
        return self.bands

    def halo_rows(self, band: int, fraction: float) -> int:
        """Rows of `band` its neighbours see under PCPP: the nearest ceil(p x rows), at least one."""
        rows = self.bands[band].rows
        # The small epsilon keeps p x rows that is an integer in exact arithmetic from rounding up.
        return min(rows, max(1, math.ceil(fraction * rows - 1e-9)))

    def halo_pieces(self, band: int, fraction: float) -> tuple[Band, ...]:
        """Band `band` plus the nearest rows of each adjacent band, top to bottom (PCPP attention)."""
        own = self.bands[band]
        pieces = []
        if band > 0:
            above = self.bands[band - 1]
            pieces.append(Band(above.index, above.hi - self.halo_rows(above.index, fraction), above.hi))
        pieces.append(Band(own.index, own.lo, own.hi))
        if band + 1 < len(self.bands):
            below = self.bands[band + 1]
            pieces.append(Band(below.index, below.lo, below.lo + self.halo_rows(below.index, fraction)))
        return tuple(pieces)

    def tokens_per_frame(self, pieces: tuple[Band, ...]) -> int:
        """Tokens per frame of K/V made of `pieces`."""
        return sum(p.rows for p in pieces) * self.token_cols


def take_rows(x: torch.Tensor, *, dim: int, frames: int, rows: int, cols: int, lo: int, hi: int) -> torch.Tensor:
    """Rows [lo, hi) of every frame of `x`, whose dim `dim` holds frame-major (frame, row, col) tokens."""
    grid = x.unflatten(dim, (frames, rows, cols))
    return grid.narrow(dim + 1, lo, hi - lo).flatten(dim, dim + 2)


def join_rows(parts: list[torch.Tensor], *, dim: int, frames: int, cols: int) -> torch.Tensor:
    """Stack row ranges of the same frames (each frame-major at `dim`) into one frame-major tensor."""
    grids = [part.unflatten(dim, (frames, -1, cols)) for part in parts]
    return torch.cat(grids, dim=dim + 1).flatten(dim, dim + 2)


def band_conditioning(cond, band: Band):
    """The conditioning of a window cut down to one band: RoPE rows sliced (global positions), grid rows."""
    frames, rows, cols = cond.grid
    if band.rows == rows:
        return cond
    rotary = tuple(take_rows(table, dim=1, frames=frames, rows=rows, cols=cols, lo=band.lo, hi=band.hi)
                   for table in cond.rotary)
    return dataclasses.replace(cond, rotary=rotary, grid=(frames, band.rows, cols))
