"""The patch-parallel K/V hook: a band's fresh K/V in, the K/V its queries attend to out.

Registered before the feature cache, so the cache stores and appends K/V in the layout this hook
returns (frame-major over the rows the band sees; `tokens_per_frame(step)` tells the runner).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from paravideo.models.hooks import AttentionCall
from paravideo.parallel.comm import P2P
from paravideo.parallel.patch.bands import BandSplit
from paravideo.parallel.patch.exchange import RowExchange
from paravideo.parallel.patch.stale import StaleKV

PatchMode = Literal["exact", "distrifusion", "pcpp"]
# run.json byte counters per kind of K/V traffic.
EXACT_KIND, STALE_KIND, HALO_KIND = "patch_kv_exact", "patch_kv_stale", "patch_kv_halo"


@dataclass(frozen=True)
class PatchSettings:
    """How bands see each other: the mode, PCPP's halo fraction, synchronous warm-up steps per block."""

    mode: PatchMode
    fraction: float
    warmup_steps: int
    steps: int

    def exact_at(self, step: int) -> bool:
        """Whether a block's step `step` gathers fresh K/V synchronously."""
        return self.mode == "exact" or step < self.warmup_steps


class PatchKVHook:
    """Exact steps gather every band's fresh K/V; later steps use fresh local and stale remote rows."""

    name = "patch"

    def __init__(self, p2p: P2P, split: BandSplit, band: int, ranks: list[int], settings: PatchSettings):
        self.settings = settings
        self.exact = RowExchange(p2p, split, band, ranks, lambda b: split.full_pieces(),
                                 kind=EXACT_KIND, what="exact K/V")
        self.stale: StaleKV | None = None
        if settings.mode == "distrifusion":
            self.stale = StaleKV(RowExchange(p2p, split, band, ranks, lambda b: split.full_pieces(),
                                             kind=STALE_KIND, what="stale K/V"))
        elif settings.mode == "pcpp":
            self.stale = StaleKV(RowExchange(p2p, split, band, ranks,
                                             lambda b: split.halo_pieces(b, settings.fraction),
                                             kind=HALO_KIND, what="halo K/V"))

    def tokens_per_frame(self, step: int) -> int:
        """Tokens per frame of the K/V this hook returns at a block's step `step`."""
        exchange = self.exact if self.settings.exact_at(step) else self.stale.exchange
        return exchange.tokens_per_frame

    def __call__(self, call: AttentionCall, key: torch.Tensor, value: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        info, settings = call.info, self.settings
        kv_local = torch.stack([key, value])
        last = info.step == settings.steps - 1
        if settings.exact_at(info.step):
            kv = self.exact.gather(kv_local)
            # The last exact step's gathered K/V are the first stale ones: no extra exchange.
            if self.stale is not None and info.step == settings.warmup_steps - 1 and not last:
                self.stale.seed(info.block, call.layer, kv_local, kv)
        else:
            kv = self.stale.use(info.block, call.layer, kv_local, last=last)
        # The feature cache slices what this hook returns by the runner's tokens_per_frame.
        assert kv.shape[2] == info.window_frames * info.tokens_per_frame, "K/V layout and tokens_per_frame disagree"
        return kv[0], kv[1]
