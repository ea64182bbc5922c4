"""Ring: K/V of the ring group's token chunks, attention merged chunk by chunk with online softmax.

Like diffusers 0.42's ring attention, the chunks are all-gathered (one collective per layer) and then
attended one after another, each chunk's partial result merged through its log-sum-exp. The merge
reorders the softmax sums, so the result is not bit-identical to one rank: in float32 it stays within
1e-5 of it (tests assert that bound on the clean latents).
"""

from __future__ import annotations

import torch

from paravideo.parallel.seq.groups import Collectives, Group

KIND = "ring_kv"


def gather_kv(key: torch.Tensor, value: torch.Tensor, sizes: list[int], comm: Collectives,
              group: Group) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ring member's K/V chunk `(b, sizes[j], h, d)`, joined in token order."""
    parts = comm.all_gather(torch.stack([key, value]), sizes, 2, group, kind=KIND, what="ring K/V")
    kv = torch.cat(parts, dim=2)
    return kv[0], kv[1]


def chunked_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      bounds: list[tuple[int, int]]) -> torch.Tensor:
    """Softmax attention of `query (b, n, h, d)` over K/V token ranges `bounds`, merged by log-sum-exp (float32)."""
    scale = query.shape[-1] ** -0.5
    q = query.float().transpose(1, 2)
    out = lse = None
    for lo, hi in bounds:
        if hi <= lo:
            continue
        k = key[:, lo:hi].float().transpose(1, 2)
        v = value[:, lo:hi].float().transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)) * scale
        peak = scores.amax(dim=-1, keepdim=True)
        weights = (scores - peak).exp()
        total = weights.sum(dim=-1, keepdim=True)
        part, part_lse = (weights @ v) / total, peak + total.log()
        if out is None:
            out, lse = part, part_lse
        else:
            merged = torch.logaddexp(lse, part_lse)
            out = out * (lse - merged).exp() + part * (part_lse - merged).exp()
            lse = merged
    return out.transpose(1, 2).to(query.dtype)
