"""Bytes each rank sends, by kind, exactly as the engine counts them (run.json `bytes_by_kind`).

Each kind is one term: a function from the layout to (rank, kind, bytes) messages. A new
mechanism (patch K/V: exact, stale, halo) adds a term to TERMS and nothing else changes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable

from paravideo.report.shapes import DiTShape
from paravideo.schedule.plan import BlockPlan

FP32_BYTES = 4


@dataclass(frozen=True)
class TrafficLayout:
    """What decides the messages: the plan, the stage ranks, and the sizes of what is sent."""

    plan: BlockPlan
    shape: DiTShape
    stage_ranks: tuple[int, ...]  # rank of each pipeline stage, in order
    world_size: int
    batch: int  # 2 with CFG
    tokens_per_frame: int
    latent_hw: tuple[int, int]
    dtype_bytes: int  # hidden states travel in the DiT's compute dtype
    texts: int  # text embeddings broadcast: prompts (+1 negative under CFG)
    text_tokens: int

    @property
    def driver_rank(self) -> int:
        return 0

    def hidden_bytes(self, seq: int) -> int:
        """One hidden-state message of forward `seq`: `(batch, window tokens, dim)`."""
        lo, hi = self.plan.window(self.plan.forwards[seq])
        return self.batch * (hi - lo) * self.tokens_per_frame * self.shape.dim * self.dtype_bytes

    def prediction_bytes(self, seq: int) -> int:
        """One float32 guided prediction of forward `seq` (block frames only, context dropped)."""
        h, w = self.latent_hw
        frames = self.plan.blocks[self.plan.forwards[seq].block].frames
        return self.shape.out_channels * frames * h * w * FP32_BYTES


Message = tuple[int, str, int]  # (sending rank, kind, bytes)
Term = Callable[[TrafficLayout], Iterable[Message]]


def text_messages(t: TrafficLayout) -> Iterable[Message]:
    """Rank 0 broadcasts the float32 prompt embeddings; counted once per receiving rank."""
    if t.world_size > 1:
        yield t.driver_rank, "text", t.texts * t.text_tokens * t.shape.text_dim * FP32_BYTES * (t.world_size - 1)


def hidden_messages(t: TrafficLayout) -> Iterable[Message]:
    """Every forward's hidden states `(batch, window tokens, dim)` cross every stage boundary."""
    for fwd in t.plan.forwards:
        for rank in t.stage_ranks[:-1]:
            yield rank, "hidden", t.hidden_bytes(fwd.seq)


def prediction_messages(t: TrafficLayout) -> Iterable[Message]:
    """The last stage returns each guided float32 prediction (block frames only) to rank 0."""
    last = t.stage_ranks[-1]
    if last == t.driver_rank:
        return
    for fwd in t.plan.forwards:
        yield last, "prediction", t.prediction_bytes(fwd.seq)


TERMS: tuple[Term, ...] = (text_messages, hidden_messages, prediction_messages)


def traffic_by_rank(layout: TrafficLayout, terms: tuple[Term, ...] = TERMS) -> dict[int, dict[str, int]]:
    """Bytes sent per rank and kind (zero entries left out)."""
    out: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for term in terms:
        for rank, kind, nbytes in term(layout):
            if nbytes:
                out[rank][kind] += nbytes
    return {rank: dict(kinds) for rank, kinds in sorted(out.items())}

