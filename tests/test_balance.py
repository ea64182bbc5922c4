"""The joint balance of layers and decode pieces (parallel/balance.py): hand-made costs, runtime = cost model."""

import pytest

from paravideo.parallel.balance import SplitCosts, choose_split
from paravideo.parallel.layout import ParallelLayout

# One unit per layer; the last decoder piece (the full-resolution head) is as heavy as 10 layers.
HEAVY_LAST = SplitCosts(layer=1.0, pieces=(1.0,) * 7 + (10.0,), driver=0.5, last_stage=0.25)


def _split(costs=HEAVY_LAST, *, layers=8, pipeline=2, patch=1, **overrides):
    return choose_split(num_layers=layers, layout=ParallelLayout(pipeline=pipeline, patch=patch), decode=True,
                        costs=costs, **overrides)


def _max_load(costs, split, layout):
    loads = []
    for r in range(layout.world_size):
        load = split.stage_layers[layout.stage_of(r)] * costs.layer
        load += costs.driver if r == 0 else 0.0
        load += costs.last_stage if layout.stage_of(r) == layout.pipeline - 1 else 0.0
        rng = split.decode.range_of(r)
        load += sum(costs.pieces[slice(*rng)]) if rng else 0.0
        loads.append(load)
    return max(loads)


def test_layers_move_off_the_rank_with_the_heavy_decode_pieces():
    split = _split()
    assert split.decode.ranks == (0, 1) and split.decode.range_of(1)[1] == 8  # rank 1 holds the heavy piece
    assert split.stage_layers[1] < split.stage_layers[0] and sum(split.stage_layers) == 8
    # Better than balancing the layers alone and the decode on top of them (the previous default).
    layout = ParallelLayout(pipeline=2)
    alone = _split(stage_layers=[4, 4])
    assert _max_load(HEAVY_LAST, split, layout) < _max_load(HEAVY_LAST, alone, layout)
    assert max(split.loads) == 1.0 and split.loads[0] == pytest.approx(12.5 / 13.25)
    # The heavy piece first: now rank 0 sheds layers.
    first = SplitCosts(layer=1.0, pieces=(10.0,) + (1.0,) * 7, driver=0.5, last_stage=0.25)
    assert _split(first).stage_layers[0] < _split(first).stage_layers[1]


def test_overrides_fix_their_part_and_the_rest_is_balanced_around_them():
    assert _split(stage_layers=[2, 6]).stage_layers == (2, 6)
    assert _split(stage_layers=[2, 6]).decode.cuts == (0, 7, 8)  # rank 1 is loaded already: it keeps one piece
    pinned = _split(decode_pieces=[4, 4])
    assert pinned.decode.cuts == (0, 4, 8) and pinned.stage_layers == (7, 1)
    both = _split(stage_layers=[3, 5], decode_pieces=[6, 2])
    assert (both.stage_layers, both.decode.cuts) == ((3, 5), (0, 6, 8))
    three = choose_split(num_layers=8, layout=ParallelLayout(pipeline=3), decode=True, costs=HEAVY_LAST,
                         decode_ranks=[0, 2])
    assert three.decode.ranks == (0, 2) and three.stage_layers[2] == 1
    # Without the decode pipeline the layers are balanced alone, as before.
    assert choose_split(num_layers=8, layout=ParallelLayout(pipeline=2), decode=False).stage_layers == (4, 4)


def test_every_rank_keeps_a_layer_and_a_piece_and_the_choice_is_deterministic():
    heavy = SplitCosts(layer=0.01, pieces=(5.0, 1.0, 1.0, 50.0), driver=0.0, last_stage=0.0)
    split = choose_split(num_layers=4, layout=ParallelLayout(pipeline=4), decode=True, costs=heavy)
    assert split.stage_layers == (1, 1, 1, 1) and split.decode.cuts == (0, 1, 2, 3, 4)
    # Patch bands of a stage share its layers; each band is a distinct decode rank.
    banded = _split(pipeline=2, patch=2)
    assert len(banded.stage_layers) == 2 and banded.decode.ranks == (0, 1, 2, 3) and min(banded.stage_layers) >= 1
    assert all(_split(pipeline=p) == _split(pipeline=p) for p in (2, 3, 4))


def test_the_model_layer_formula_is_the_cost_models():
    from paravideo.costmodel.flops import Window, layer_flops
    from paravideo.costmodel.shapes import PRESETS
    from paravideo.models.factors import dit_layer_flops

    shape = PRESETS["wan2.1-14b"]
    w = Window(batch=2, query_tokens=3120, key_tokens=3900, text_tokens=512)
    assert sum(layer_flops(shape, w).values()) == dit_layer_flops(
        dim=shape.dim, ffn_dim=shape.ffn_dim, batch=2, query_tokens=3120, key_tokens=3900, text_tokens=512)


@pytest.mark.parametrize("parallel,video", [
    ({"pipeline": 2, "decode": "pipeline"}, {"num_frames": 25}),
    ({"pipeline": 3, "decode": "pipeline", "decode_pieces": [2, 6, 5]}, {}),
    ({"pipeline": 2, "patch": 2, "decode": "pipeline"}, {"height": 64, "width": 64}),
    ({"pipeline": 2, "decode": "rank0", "stage_layers": [1, 3]}, {}),
])
def test_the_runtime_and_the_cost_model_choose_the_same_split(make_config, parallel, video):
    from paravideo.costmodel.scenario import Scenario
    from paravideo.models.builtin import resolve_model_path
    from paravideo.models.family import inspect_model
    from paravideo.runtime.rank_model import build_plan, run_split

    world = parallel["pipeline"] * parallel.get("patch", 1)
    config = make_config(parallel=parallel, video=video, launch={"launcher": "local", "nproc": world})
    _, factors = inspect_model(resolve_model_path(config.model.path))
    split = run_split(config, factors, ParallelLayout.from_config(config.parallel), build_plan(config, factors))
    assert split == Scenario.from_config(config).balance
    assert (split.decode is None) == (parallel["decode"] == "rank0")
