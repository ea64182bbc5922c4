"""Ring attention: K/V chunks travel round the ring group while each rank attends to the one it holds.

Every ring rank starts with its own K/V chunk. In R - 1 steps it sends the chunk it holds to the next
member and receives the previous member's, attending to the held chunk while the next one is in
flight; after R - 1 steps every chunk has passed every rank once. Each chunk's partial result is merged
through its log-sum-exp (online softmax, float32). A rank holds at most two chunks at once (the one it
attends to and the one arriving), never the whole window. The merge reorders the softmax sums, so the
result is not bit-identical to one rank: in float32 it stays within 1e-5 of it (tests assert that bound).

Every rank knows every chunk's size (the window's split is a pure function of its token count), so
uneven chunks travel at their exact sizes: nothing is padded and no size travels.
"""

from __future__ import annotations

from typing import Callable

import torch

from paravideo.parallel.seq.groups import Collectives, Group

KIND = "ring_kv"

# The registry's K/V hooks: `(key, value, tokens=None)` on the whole window, or with `tokens=(lo, hi)` on
# window tokens [lo, hi) -> the K/V to attend to.
PieceHooks = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def partial_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention `(b, h, n, d)` of one K/V piece and its log-sum-exp `(b, h, n, 1)`, float32."""
    if q.device.type == "cpu":
        # torch's CPU flash kernel returns the log-sum-exp the merge needs and never holds the n x m scores:
        # ~3.6x faster than the explicit form at 1,056 x 1,056 tokens, and within 1e-6 of it.
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, scale=scale)
        return out, lse.unsqueeze(-1)
    scores = (q @ k.transpose(-1, -2)) * scale
    peak = scores.amax(dim=-1, keepdim=True)
    weights = (scores - peak).exp()
    total = weights.sum(dim=-1, keepdim=True)
    return (weights @ v) / total, peak + total.log()


class OnlineSoftmax:
    """Softmax attention of fixed queries `(b, n, h, d)` over K/V pieces added one at a time (float32)."""

    def __init__(self, query: torch.Tensor):
        self.dtype, self.scale = query.dtype, query.shape[-1] ** -0.5
        self.q = query.float().transpose(1, 2)
        self.out: torch.Tensor | None = None
        self.lse: torch.Tensor | None = None

    def add(self, key: torch.Tensor, value: torch.Tensor) -> None:
        """Merge attention over `key`/`value (b, m, h, d)` into the running result through its log-sum-exp."""
        if key.shape[1] == 0:
            return
        part, part_lse = partial_attention(self.q, key.float().transpose(1, 2), value.float().transpose(1, 2),
                                           self.scale)
        if self.out is None:
            self.out, self.lse = part, part_lse
            return
        merged = torch.logaddexp(self.lse, part_lse)
        self.out = self.out * (self.lse - merged).exp() + part * (part_lse - merged).exp()
        self.lse = merged

    def result(self) -> torch.Tensor:
        """The attention output `(b, n, h, d)` in the queries' dtype."""
        assert self.out is not None, "attention over no keys"
        return self.out.transpose(1, 2).to(self.dtype)


def ring_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, sizes: list[int],
                   comm: Collectives, group: Group, *, kv_hooks: PieceHooks) -> torch.Tensor:
    """Attention of this rank's queries over the K/V of every ring member; `sizes[j]` = member j's tokens.

    `kv_hooks` sees each chunk once, with its window tokens, before it is attended to (the feature cache
    keeps the head K/V it needs from the chunks passing by and appends its cached K/V to the chunk that
    ends the window).
    """
    starts = [sum(sizes[:j]) for j in range(len(sizes))]
    held = torch.stack([key, value]).contiguous()  # one message per step
    acc = OnlineSoftmax(query)
    for step in range(group.size):
        owner = (group.index - step) % group.size
        wait = None
        if step < group.size - 1:
            arriving = (owner - 1) % group.size
            incoming = held.new_empty((2, held.shape[1], sizes[arriving], *held.shape[3:]))
            wait = comm.shift(held, incoming, group, kind=KIND,
                              what=f"ring K/V step {step + 1} of {group.size - 1} (chunk {arriving})")
        k, v = kv_hooks(held[0], held[1], tokens=(starts[owner], starts[owner] + sizes[owner]))
        acc.add(k, v)
        del k, v  # a hook may have made a copy (the cache appended): gone before the next buffer is taken
        if wait is not None:
            wait()
            held = incoming
    return acc.result()
