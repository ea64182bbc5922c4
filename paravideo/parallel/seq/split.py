"""Which tokens of a window each rank of a sequence group holds: contiguous chunks in frame-major order."""

from __future__ import annotations

import dataclasses


def chunk_sizes(tokens: int, parts: int) -> list[int]:
    """`tokens` cut into `parts` contiguous chunks; uneven counts give the first chunks one token more."""
    assert 1 <= parts <= tokens, f"cannot split {tokens} tokens over {parts} ranks"
    base, extra = divmod(tokens, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def chunk_range(tokens: int, parts: int, index: int) -> tuple[int, int]:
    """Tokens [lo, hi) of chunk `index`."""
    sizes = chunk_sizes(tokens, parts)
    lo = sum(sizes[:index])
    return lo, lo + sizes[index]


@dataclasses.dataclass(frozen=True)
class SeqShare:
    """This rank's place in its stage's sequence group: `index` of `parts` chunks of every window."""

    index: int
    parts: int

    def tokens(self, window_tokens: int) -> tuple[int, int]:
        """This rank's tokens [lo, hi) of a window of `window_tokens`."""
        return chunk_range(window_tokens, self.parts, self.index)


def seq_conditioning(cond, lo: int, hi: int):
    """The conditioning of a window cut to tokens [lo, hi): RoPE sliced (global positions kept).

    The grid stays the whole window's: only the head reads it, after the tokens are gathered again.
    """
    rotary = tuple(table[:, lo:hi] for table in cond.rotary)
    return dataclasses.replace(cond, rotary=rotary)
