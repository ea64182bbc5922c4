"""The block plan: the single source of truth for which block takes which step in which iteration."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class Block:
    """A run of latent frames [start, stop) that is denoised as one unit."""

    index: int
    start: int
    stop: int

    @property
    def frames(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Forward:
    """One block-forward: block `block` takes denoising step `step` in iteration `iteration`."""

    seq: int  # position in the global forward order
    iteration: int
    block: int
    step: int
    # Global latent frames [start, stop) of the older neighbour prepended as context (empty: none).
    context: tuple[int, int]
    # The newer neighbour whose cached head K/V this forward attends to (feature cache), if any.
    future_block: int | None
    # Leading frames of this block whose K/V the older neighbour will read in this iteration.
    keep_head_frames: int
    # Earlier forwards whose predictions must be applied before this forward's input exists.
    depends_on: tuple[int, ...]
    is_last_step: bool

    @property
    def context_frames(self) -> int:
        return self.context[1] - self.context[0]


@dataclass(frozen=True)
class BlockPlan:
    """Blocks and the ordered list of block-forwards for a video; pure data, the same on every rank."""

    latent_frames: int
    steps: int
    context_frames: int
    feature_cache: bool
    blocks: tuple[Block, ...]
    forwards: tuple[Forward, ...]

    @property
    def iterations(self) -> int:
        return len(self.blocks) + self.steps - 1

    @cached_property
    def max_queue(self) -> int:
        """Most blocks in the queue at once: min(blocks, steps)."""
        return max(sum(1 for f in self.forwards if f.iteration == i) for i in range(self.iterations))

    def window(self, fwd: Forward) -> tuple[int, int]:
        """Global latent frames [start, stop) of the forward's query window (context + block)."""
        block = self.blocks[fwd.block]
        return block.start - fwd.context_frames, block.stop

    def by_iteration(self, iteration: int) -> list[Forward]:
        """Forwards of one iteration, in execution order (newest block first)."""
        return [f for f in self.forwards if f.iteration == iteration]


def split_blocks(latent_frames: int, block_frames: int) -> tuple[Block, ...]:
    """Cut the latent video into blocks of `block_frames`; the last one takes the remainder (0 = one block)."""
    if latent_frames < 1:
        raise ValueError(f"a video needs at least one latent frame, got {latent_frames}")
    size = block_frames or latent_frames
    starts = range(0, latent_frames, size)
    return tuple(Block(i, s, min(s + size, latent_frames)) for i, s in enumerate(starts))


def make_plan(latent_frames: int, block_frames: int, steps: int, context_frames: int = 0,
              feature_cache: bool = True) -> BlockPlan:
    """Block k enters at iteration k and takes step i-k in iteration i; newest block first."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if context_frames < 0 or (context_frames and not block_frames) or context_frames > max(block_frames, 0):
        raise ValueError(f"context_frames = {context_frames} needs 0 <= context_frames <= block_frames "
                         f"= {block_frames} (and block_frames > 0)")
    blocks = split_blocks(latent_frames, block_frames)
    num_blocks = len(blocks)
    last_seq: dict[int, int] = {}  # block -> its latest forward so far (all from earlier iterations here)
    forwards: list[Forward] = []
    for iteration in range(num_blocks + steps - 1):
        newest = min(iteration, num_blocks - 1)
        oldest = max(0, iteration - steps + 1)
        for k in range(newest, oldest - 1, -1):
            step = iteration - k
            prev = blocks[k - 1] if k > 0 else None
            ctx = (prev.stop - min(context_frames, prev.frames), prev.stop) if prev and context_frames else (0, 0)
            # The newer neighbour ran earlier in this iteration only if it is in the queue now.
            has_newer = k + 1 < num_blocks and k + 1 <= iteration
            future = k + 1 if (feature_cache and context_frames and has_newer) else None
            older_reads = feature_cache and context_frames and k > 0 and k - 1 >= oldest
            keep = min(context_frames, blocks[k].frames) if older_reads else 0
            sources = (k, k - 1) if ctx[1] > ctx[0] else (k,)
            deps = sorted(last_seq[j] for j in sources if j in last_seq)
            last_seq[k] = len(forwards)
            forwards.append(Forward(seq=len(forwards), iteration=iteration, block=k, step=step, context=ctx,
                                    future_block=future, keep_head_frames=keep, depends_on=tuple(deps),
                                    is_last_step=step == steps - 1))
    return BlockPlan(latent_frames=latent_frames, steps=steps, context_frames=context_frames,
                     feature_cache=bool(feature_cache and context_frames), blocks=blocks, forwards=tuple(forwards))
