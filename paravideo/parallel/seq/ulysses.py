"""Ulysses: an all-to-all swaps a chunk of tokens with all heads for all tokens of the group with 1/U of the heads.

Each head's attention then runs whole on one rank, so the result equals one rank's (bit-identical on
CPU); the second all-to-all swaps back. Chunks may be uneven: the all-to-all carries split sizes.
"""

from __future__ import annotations

import torch

from paravideo.parallel.seq.groups import Collectives, Group

KIND = "ulysses_a2a"


def scatter_heads(x: torch.Tensor, sizes: list[int], comm: Collectives, group: Group) -> torch.Tensor:
    """`x (..., b, my tokens, heads, d)` -> `(..., b, group tokens, heads / U, d)`; `sizes` = each member's tokens."""
    lead, (heads, dim) = x.shape[:-3], x.shape[-2:]
    u = group.size
    split = x.unflatten(-2, (u, heads // u))  # (..., b, n, u, h/u, d)
    pieces = [split.select(-3, j) for j in range(u)]
    per_token = pieces[0][..., :1, :, :].numel()
    received = comm.all_to_all(pieces, [per_token * n for n in sizes], group, kind=KIND, what="Ulysses all-to-all")
    parts = [flat.view(*lead, n, heads // u, dim) for flat, n in zip(received, sizes)]
    return torch.cat(parts, dim=-3)


def gather_heads(out: torch.Tensor, sizes: list[int], comm: Collectives, group: Group) -> torch.Tensor:
    """The inverse: `(b, group tokens, heads / U, d)` -> `(b, my tokens, heads, d)`."""
    pieces = list(out.split(sizes, dim=1))
    mine = sizes[group.index]
    per_token = out[:, :1].numel()
    received = comm.all_to_all(pieces, [per_token * mine] * group.size, group, kind=KIND,
                               what="Ulysses all-to-all back")
    batch, _, heads, dim = out.shape
    return torch.stack([flat.view(batch, mine, heads, dim) for flat in received], dim=2).flatten(2, 3)
