"""Initial noise per block: one seeded pool reshuffled per block (coordinated), or fresh per block."""

from __future__ import annotations

import torch

from paravideo.schedule.plan import BlockPlan


def pool_frames(plan: BlockPlan) -> int:
    """Pool size: enough distinct frames for one attention window (past context, block, future head)."""
    widest = max(b.frames for b in plan.blocks)
    return min(plan.latent_frames, widest + 2 * plan.context_frames) if len(plan.blocks) > 1 else widest


def coordinated_indices(plan: BlockPlan, seed: int) -> list[list[int]]:
    """Pool frame indices for each block, distinct across every attention window of the plan.

    Block 0 takes the pool in order, so one block with no context draws exactly `randn(shape)`.
    Block k+1's head (the frames block k attends to) avoids block k and block k-1's tail; its other
    frames avoid block k's tail, which is its own context.
    """
    size = pool_frames(plan)
    gen = torch.Generator().manual_seed(seed + 1)  # a stream apart from the pool's own draw
    ctx = plan.context_frames
    chosen: list[list[int]] = [list(range(plan.blocks[0].frames))]
    for block in plan.blocks[1:]:
        prev = chosen[-1]
        prev_tail = prev[len(prev) - min(ctx, len(prev)):] if ctx else []
        older_tail = chosen[-2][len(chosen[-2]) - min(ctx, len(chosen[-2])):] if ctx and len(chosen) > 1 else []
        head_len = min(ctx, block.frames)
        order = torch.randperm(size, generator=gen).tolist()
        head_ban = set(prev) | set(older_tail)
        head = [i for i in order if i not in head_ban][:head_len]
        rest_ban = set(prev_tail) | set(head)
        rest = [i for i in order if i not in rest_ban][:block.frames - head_len]
        picks = head + rest
        assert len(picks) == block.frames, "pool too small for the window (an internal sizing error)"
        chosen.append(picks)
    return chosen


class NoiseSource:
    """Initial latents of each block, derived from the seed alone (identical on every rank)."""

    def __init__(self, plan: BlockPlan, *, mode: str, seed: int, shape_chw: tuple[int, int, int]):
        self.plan, self.mode, self.seed = plan, mode, seed
        self.channels, self.height, self.width = shape_chw
        if mode == "coordinated":
            gen = torch.Generator().manual_seed(seed)
            self.pool = torch.randn((1, self.channels, pool_frames(plan), self.height, self.width), generator=gen)
            self.indices = coordinated_indices(plan, seed)
        elif mode != "independent":
            raise ValueError(f"blocks.noise must be 'coordinated' or 'independent', got {mode!r}")

    def block_noise(self, block: int) -> torch.Tensor:
        """`(1, c, frames, h, w)` float32 noise for `block`."""
        if self.mode == "coordinated":
            return self.pool[:, :, self.indices[block]].clone()
        frames = self.plan.blocks[block].frames
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + block)
        return torch.randn((1, self.channels, frames, self.height, self.width), generator=gen)
