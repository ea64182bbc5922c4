"""Bytes each rank sends, by kind, exactly as the engine counts them (run.json `bytes_by_kind`).

Each kind is one term: a function from the layout to (rank, kind, bytes) messages. A new
mechanism adds a term to TERMS and nothing else changes. Ranks are numbered as the engine's
ParallelLayout numbers them (`stage x patch + band` without the CFG and sequence axes).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable

from paravideo.parallel.patch.bands import Band, BandSplit
from paravideo.costmodel.shapes import DiTShape
from paravideo.schedule.plan import BlockPlan

FP32_BYTES = 4
EXACT_KIND, STALE_KIND, HALO_KIND, LATENT_KIND = "patch_kv_exact", "patch_kv_stale", "patch_kv_halo", "latent_gather"


@dataclass(frozen=True)
class TrafficLayout:
    """What decides the messages: the plan, the mesh (stages x bands), and the sizes of what is sent."""

    plan: BlockPlan
    shape: DiTShape
    stage_layers: tuple[int, ...]  # layers per pipeline stage
    split: BandSplit  # token rows of a frame cut into the patch bands
    batch: int  # 2 with CFG
    dtype_bytes: int  # hidden states and K/V travel in the DiT's compute dtype
    texts: int  # text embeddings broadcast: prompts (+1 negative under CFG)
    text_tokens: int
    patch_mode: str = "exact"
    pcpp_fraction: float = 0.3
    warmup_steps: int = 1
    cfg: int = 1  # CFG groups
    ulysses: int = 1
    ring: int = 1

    @property
    def patch(self) -> int:
        return len(self.split)

    @property
    def seq(self) -> int:
        return self.ulysses * self.ring

    @property
    def world_size(self) -> int:
        return len(self.stage_layers) * self.patch * self.cfg * self.seq

    @property
    def rank_batch(self) -> int:
        """Rows of the guidance batch one rank computes (one per CFG group under CFG parallelism)."""
        return self.batch // self.cfg

    def rank(self, stage: int, band: int = 0, cfg: int = 0, chunk: int = 0) -> int:
        return ((cfg * len(self.stage_layers) + stage) * self.patch + band) * self.seq + chunk

    def replicas(self) -> Iterable[tuple[int, int]]:
        """(CFG group, sequence chunk) of every rank that runs a (stage, band)'s schedule."""
        return [(c, q) for c in range(self.cfg) for q in range(self.seq)]

    def chunk_sizes(self, seq: int) -> list[int]:
        """Tokens of each sequence chunk of forward `seq`'s window."""
        from paravideo.parallel.seq.split import chunk_sizes

        return chunk_sizes(self.frames(seq) * self.split.token_rows * self.split.token_cols, self.seq)

    def frames(self, seq: int) -> int:
        lo, hi = self.plan.window(self.plan.forwards[seq])
        return hi - lo

    def hidden_bytes(self, seq: int, band: int = 0, chunk: int = 0) -> int:
        """One rank's hidden states of forward `seq`: `(rank batch, band tokens (its chunk of them), dim)`."""
        tokens = self.frames(seq) * self.split.bands[band].rows * self.split.token_cols
        if self.seq > 1:
            tokens = self.chunk_sizes(seq)[chunk]
        return self.rank_batch * tokens * self.shape.dim * self.dtype_bytes

    def latent_bytes(self, frames: int, band: int = 0) -> int:
        """float32 latents of `frames` frames over one band's latent rows (a prediction or finished rows)."""
        rows = self.split.bands[band].rows * self.shape.patch[1]
        cols = self.split.token_cols * self.shape.patch[2]
        return self.shape.out_channels * frames * rows * cols * FP32_BYTES

    def prediction_bytes(self, seq: int, band: int = 0) -> int:
        """One band's guided prediction of forward `seq` (block frames only, context dropped)."""
        return self.latent_bytes(self.plan.blocks[self.plan.forwards[seq].block].frames, band)

    def kv_bytes(self, seq: int, piece: Band) -> int:
        """Stacked K and V of `piece`'s rows over forward `seq`'s window."""
        tokens = self.frames(seq) * piece.rows * self.split.token_cols
        return 2 * self.batch * tokens * self.shape.dim * self.dtype_bytes

    def exact_at(self, step: int) -> bool:
        """Whether a block's step gathers fresh K/V of every band synchronously."""
        return self.patch_mode == "exact" or step < self.warmup_steps

    def pieces_of(self, band: int, step: int) -> tuple[Band, ...]:
        """The rows band `band` attends to at `step`: all bands, or (PCPP, after warm-up) itself and halos."""
        if self.patch_mode == "pcpp" and not self.exact_at(step):
            return self.split.halo_pieces(band, self.pcpp_fraction)
        return self.split.full_pieces()


Message = tuple[int, str, int]  # (sending rank, kind, bytes)
Term = Callable[[TrafficLayout], Iterable[Message]]


def text_messages(t: TrafficLayout) -> Iterable[Message]:
    """Rank 0 broadcasts the float32 prompt embeddings; counted once per receiving rank."""
    if t.world_size > 1:
        yield 0, "text", t.texts * t.text_tokens * t.shape.text_dim * FP32_BYTES * (t.world_size - 1)


def hidden_messages(t: TrafficLayout) -> Iterable[Message]:
    """Every forward's hidden states cross every stage boundary, band to same band (chunk to same chunk)."""
    for fwd in t.plan.forwards:
        for stage in range(len(t.stage_layers) - 1):
            for band in range(t.patch):
                for cfg, chunk in t.replicas():
                    yield t.rank(stage, band, cfg, chunk), "hidden", t.hidden_bytes(fwd.seq, band, chunk)


def prediction_messages(t: TrafficLayout) -> Iterable[Message]:
    """Each conditional last-stage rank sends its guided prediction to its first stage (when another rank) and
    to the unconditional group's; each unconditional last-stage rank sends its prediction to its peer."""
    last = len(t.stage_layers) - 1
    for fwd in t.plan.forwards:
        for band in range(t.patch):
            nbytes = t.prediction_bytes(fwd.seq, band)
            for chunk in range(t.seq):
                copies = (last > 0) + (t.cfg > 1)
                if copies:
                    yield t.rank(last, band, 0, chunk), "prediction", copies * nbytes
                if t.cfg > 1:
                    yield t.rank(last, band, 1, chunk), "cfg_uncond", nbytes


def latent_messages(t: TrafficLayout) -> Iterable[Message]:
    """First-stage bands other than rank 0 send each finished block's rows to rank 0 for decoding."""
    for block in t.plan.blocks:
        for band in range(1, t.patch):
            yield t.rank(0, band), LATENT_KIND, t.latent_bytes(block.frames, band)


def patch_kv_messages(t: TrafficLayout) -> Iterable[Message]:
    """Per layer of every forward, each band sends every peer the rows of its band that peer attends to.

    Exact steps gather fresh K/V; later steps (distrifusion, pcpp) refresh the stale copy for the
    block's next step, so the last step sends nothing and the last exact step's gather seeds it.
    """
    if t.patch == 1:
        return
    last_step = t.plan.steps - 1
    for fwd in t.plan.forwards:
        exact = t.exact_at(fwd.step)
        if not exact and fwd.step == last_step:
            continue
        kind = EXACT_KIND if exact else (HALO_KIND if t.patch_mode == "pcpp" else STALE_KIND)
        for peer in range(t.patch):
            for piece in t.pieces_of(peer, fwd.step):
                if piece.index == peer:
                    continue
                for stage, layers in enumerate(t.stage_layers):
                    yield t.rank(stage, piece.index), kind, layers * t.kv_bytes(fwd.seq, piece)


def sequence_messages(t: TrafficLayout) -> Iterable[Message]:
    """Per layer, Ulysses all-to-alls (q/k/v out, attention back) and the ring's K/V steps; per forward,
    the last stage's gather of the token chunks before the head. Sizes as the engine's collectives count them."""
    if t.seq == 1:
        return
    u, r, b, d = t.ulysses, t.ring, t.rank_batch, t.shape.dim
    for fwd in t.plan.forwards:
        sizes = t.chunk_sizes(fwd.seq)
        rings = [sum(sizes[i * u:(i + 1) * u]) for i in range(r)]
        for stage, layers in enumerate(t.stage_layers):
            for cfg, chunk in t.replicas():
                rank, group = t.rank(stage, 0, cfg, chunk), sizes[chunk - chunk % u:chunk - chunk % u + u]
                mine = sizes[chunk]
                if u > 1:
                    out = 3 * b * mine * (d // u) * (u - 1) + b * (sum(group) - mine) * (d // u)
                    yield rank, "ulysses_a2a", layers * out * t.dtype_bytes
                if r > 1:  # R - 1 ring steps pass on every chunk but the next member's (it arrives last)
                    passed = sum(rings) - rings[(chunk // u + 1) % r]
                    yield rank, "ring_kv", layers * 2 * b * passed * (d // u) * t.dtype_bytes
                if stage == len(t.stage_layers) - 1:
                    yield rank, "seq_gather", b * max(sizes) * d * (t.seq - 1) * t.dtype_bytes


TERMS: tuple[Term, ...] = (text_messages, hidden_messages, prediction_messages, latent_messages, patch_kv_messages,
                           sequence_messages)


def traffic_by_rank(layout: TrafficLayout, terms: tuple[Term, ...] = TERMS) -> dict[int, dict[str, int]]:
    """Bytes sent per rank and kind (zero entries left out)."""
    out: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for term in terms:
        for rank, kind, nbytes in term(layout):
            if nbytes:
                out[rank][kind] += nbytes
    return {rank: dict(kinds) for rank, kinds in sorted(out.items())}
