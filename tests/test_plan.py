"""The block plan: every block takes every step once and in order; queue, context and cache sources."""

import pytest

from paravideo.schedule.plan import make_plan, split_blocks

CASES = [(9, 0, 4, 0), (9, 3, 4, 1), (10, 3, 5, 2), (7, 2, 3, 1), (21, 4, 10, 2), (5, 1, 8, 1), (8, 8, 3, 0)]


@pytest.mark.parametrize("latent, block, steps, ctx", CASES)
def test_each_block_takes_every_step_once_in_order(latent, block, steps, ctx):
    plan = make_plan(latent, block, steps, ctx)
    for b in plan.blocks:
        fwds = [f for f in plan.forwards if f.block == b.index]
        assert [f.step for f in fwds] == list(range(steps))
        assert [f.iteration for f in fwds] == [b.index + s for s in range(steps)]
        assert [f.is_last_step for f in fwds] == [False] * (steps - 1) + [True]
    assert len(plan.forwards) == len(plan.blocks) * steps
    assert [f.seq for f in plan.forwards] == list(range(len(plan.forwards)))


@pytest.mark.parametrize("latent, block, steps, ctx", CASES)
def test_queue_order_and_length(latent, block, steps, ctx):
    plan = make_plan(latent, block, steps, ctx)
    assert plan.iterations == len(plan.blocks) + steps - 1
    assert plan.max_queue == min(len(plan.blocks), steps)
    for i in range(plan.iterations):
        order = [f.block for f in plan.by_iteration(i)]
        assert order == sorted(order, reverse=True), "newest block first"
        assert order == list(range(order[0], order[0] - len(order), -1)), "neighbours are one step apart"


@pytest.mark.parametrize("latent, block, steps, ctx", CASES)
def test_context_and_feature_cache_sources(latent, block, steps, ctx):
    plan = make_plan(latent, block, steps, ctx, feature_cache=True)
    kept = set()
    for f in plan.forwards:
        b = plan.blocks[f.block]
        if f.block == 0 or not ctx:
            assert f.context == (0, 0)
        else:
            prev = plan.blocks[f.block - 1]
            assert f.context == (prev.stop - min(ctx, prev.frames), prev.stop)
        assert plan.window(f) == (b.start - f.context_frames, b.stop)
        if f.keep_head_frames:
            kept.add((f.iteration, f.block))
        if f.future_block is not None:
            assert f.future_block == f.block + 1
            assert (f.iteration, f.future_block) in kept, "the newer block ran earlier in this iteration"
    # Every kept head is read by the older neighbour in the same iteration.
    reads = {(f.iteration, f.future_block) for f in plan.forwards if f.future_block is not None}
    assert kept == reads


def test_dependencies_point_backwards_to_the_latest_updates():
    plan = make_plan(12, 3, 4, 1)
    for f in plan.forwards:
        for dep in f.depends_on:
            d = plan.forwards[dep]
            assert d.seq < f.seq and d.iteration < f.iteration and d.block in (f.block, f.block - 1)


def test_uneven_length_gives_a_shorter_last_block():
    assert [b.frames for b in split_blocks(10, 4)] == [4, 4, 2]
    assert [b.frames for b in split_blocks(9, 0)] == [9]


@pytest.mark.parametrize("args", [(9, 0, 4, 1), (9, 2, 4, 3), (9, 2, 0, 0), (0, 2, 4, 0)])
def test_invalid_plans_raise(args):
    with pytest.raises(ValueError):
        make_plan(*args)
