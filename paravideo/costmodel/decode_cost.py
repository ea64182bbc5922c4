"""Seconds of a VAE decoder piece from its ops: a fixed cost per op, FLOPs at one rate, and memory traffic at a
bandwidth that depends on whether the op's working set fits the last-level cache.

Why not FLOPs alone: on a CPU the decoder's convolutions unfold their input into a matrix (in_channels x
kernel volume x output positions, float32) that is written and read once per call; with few channels
that traffic, not the arithmetic, sets the time. Once an op's unfolded input outgrows the last-level
cache the same bytes come from DRAM, which is why a piece costs disproportionately more at 128x128 than
at 96x96 (measured: 6.3 against 3.3 us per output pixel for the same resnet), and why the 3-channel
output conv (almost no FLOPs, the full unfold) is far slower per FLOP than the rest. Low-resolution
pieces are a few dozen tiny ops each: the per-op cost dominates them.
"""

from __future__ import annotations

import itertools
import math

from paravideo.costmodel.flops import PieceTraffic
from paravideo.costmodel.profiles import HardwareProfile

TERMS = ("ops", "flops", "cached_bytes", "dram_bytes")  # the fitted terms, in `piece_terms` order


def piece_terms(piece: PieceTraffic, llc_bytes: int) -> tuple[float, float, float, float]:
    """(op count, FLOPs, bytes of ops whose working set fits `llc_bytes`, bytes of ops that spill to DRAM)."""
    cached = sum(o.bytes for o in piece.ops if o.working_set <= llc_bytes)
    dram = sum(o.bytes for o in piece.ops if o.working_set > llc_bytes)
    return float(len(piece.ops)), float(piece.flops), float(cached), float(dram)


def piece_seconds(piece: PieceTraffic, profile: HardwareProfile) -> float:
    """Seconds one later latent frame spends in `piece` on `profile` (FLOPs alone when the profile has no
    bandwidth terms, as the datasheet GPU profiles do)."""
    if profile.vae_cache_gbps is None or profile.vae_dram_gbps is None or profile.llc_bytes is None:
        return piece.flops / profile.vae_flops_per_s
    ops, flops, cached, dram = piece_terms(piece, profile.llc_bytes)
    return (ops * profile.vae_op_overhead_s + flops / profile.vae_flops_per_s
            + cached / (profile.vae_cache_gbps * 1e9) + dram / (profile.vae_dram_gbps * 1e9))


def fit_nonnegative(rows: list[tuple[float, ...]], ys: list[float],
                    scales: list[float] | None = None) -> tuple[float, ...]:
    """Coefficients c >= 0 of y = sum(c_i x_i) minimising the summed squared error relative to `scales`
    (default: to each y, so small and large points count alike); exhaustive over which coefficients are
    zero (few terms)."""
    import numpy as np

    w = 1.0 / np.array(scales if scales is not None else ys, dtype=float)
    a = np.array(rows, dtype=float) * w[:, None]
    b = np.array(ys, dtype=float) * w
    scale = np.abs(a).max(axis=0)
    scale[scale == 0] = 1.0
    a = a / scale  # terms differ by ten orders of magnitude (ops against bytes)
    n = a.shape[1]
    best, best_err = np.zeros(n), math.inf
    for k in range(1, n + 1):
        for keep in itertools.combinations(range(n), k):
            cols = list(keep)
            sol, *_ = np.linalg.lstsq(a[:, cols], b, rcond=None)
            if (sol < 0).any():
                continue
            coef = np.zeros(n)
            coef[cols] = sol
            err = float(((a @ coef - b) ** 2).sum())
            if err < best_err:
                best, best_err = coef, err
    return tuple(float(c) for c in best / scale)
