"""Coordinated noise: reproducible from the seed, no frame twice inside one attention window."""

import pytest
import torch

from paravideo.schedule.noise import NoiseSource, coordinated_indices
from paravideo.schedule.plan import make_plan


@pytest.mark.parametrize("latent, block, ctx", [(20, 3, 1), (21, 4, 2), (9, 2, 2), (30, 5, 3), (11, 3, 0)])
def test_no_noise_frame_repeats_inside_a_window(latent, block, ctx):
    plan = make_plan(latent, block, 4, ctx)
    picks = coordinated_indices(plan, seed=5)
    for k, b in enumerate(plan.blocks):
        window = list(picks[k])
        if k > 0 and ctx:
            window = picks[k - 1][-min(ctx, len(picks[k - 1])):] + window
        if k + 1 < len(plan.blocks) and ctx:
            window += picks[k + 1][:min(ctx, plan.blocks[k + 1].frames)]
        assert len(window) == len(set(window)), f"block {k}: {window}"


def test_same_seed_same_noise_other_seed_other_noise():
    plan = make_plan(12, 3, 4, 1)
    a = NoiseSource(plan, mode="coordinated", seed=1, shape_chw=(16, 4, 6))
    b = NoiseSource(plan, mode="coordinated", seed=1, shape_chw=(16, 4, 6))
    c = NoiseSource(plan, mode="coordinated", seed=2, shape_chw=(16, 4, 6))
    for k in range(len(plan.blocks)):
        assert torch.equal(a.block_noise(k), b.block_noise(k))
        assert not torch.equal(a.block_noise(k), c.block_noise(k))
    # Blocks are reshuffles of one pool: every block frame is a pool frame.
    pool = {tuple(a.pool[0, :, i].flatten().tolist()[:4]) for i in range(a.pool.shape[2])}
    assert all(tuple(a.block_noise(2)[0, :, j].flatten().tolist()[:4]) in pool for j in range(3))


def test_one_block_draws_plain_randn():
    plan = make_plan(5, 0, 4, 0)
    noise = NoiseSource(plan, mode="coordinated", seed=9, shape_chw=(16, 4, 6)).block_noise(0)
    assert torch.equal(noise, torch.randn((1, 16, 5, 4, 6), generator=torch.Generator().manual_seed(9)))


def test_independent_noise_differs_per_block_and_repeats_per_seed():
    plan = make_plan(12, 3, 4, 1)
    a = NoiseSource(plan, mode="independent", seed=1, shape_chw=(16, 4, 6))
    b = NoiseSource(plan, mode="independent", seed=1, shape_chw=(16, 4, 6))
    assert torch.equal(a.block_noise(1), b.block_noise(1))
    assert not torch.equal(a.block_noise(1), a.block_noise(2))
