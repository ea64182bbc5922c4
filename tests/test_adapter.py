"""The Wan adapter: pre -> layers -> post equals diffusers' forward, split or whole; stage loads."""

import pytest
import torch
from diffusers import WanTransformer3DModel

from paravideo.models.wan.adapter import WanStage
from paravideo.models.wan.loading import load_transformer_stage

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def reference(tiny_root):
    return WanTransformer3DModel.from_pretrained(tiny_root / "transformer").eval()


def _inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 16, 3, 4, 6, generator=gen)
    timestep = torch.tensor([937, 937])
    text = torch.randn(2, 512, 32, generator=gen)
    return latents, timestep, text


def _stage(root, lo, hi):
    return WanStage(load_transformer_stage(root, lo, hi, dtype=torch.float32, device=CPU), lo=lo, hi=hi,
                    num_layers=4)


@torch.no_grad()
def test_full_forward_equals_diffusers(tiny_root, reference):
    latents, timestep, text = _inputs()
    expected = reference(latents, timestep, text, return_dict=False)[0]
    assert torch.equal(_stage(tiny_root, 0, 4).forward(latents, timestep, text), expected)


@pytest.mark.parametrize("bounds", [[0, 2, 4], [0, 1, 3, 4]])
@torch.no_grad()
def test_split_forward_equals_full(tiny_root, reference, bounds):
    latents, timestep, text = _inputs(1)
    expected = reference(latents, timestep, text, return_dict=False)[0]
    stages = [_stage(tiny_root, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
    grid = stages[0].grid(latents.shape)
    hidden = stages[0].embed(latents)
    for stage in stages:
        cond = stage.condition(timestep, stage.project_text(text), grid)
        hidden = stage.run_layers(hidden, cond)
    assert torch.equal(stages[-1].head(hidden, cond), expected)


@torch.no_grad()
def test_stage_load_holds_only_its_layers(tiny_root, reference):
    stage = _stage(tiny_root, 1, 3)
    names = {n for n, _ in stage.model.named_parameters()}
    assert {n.split(".")[1] for n in names if n.startswith("blocks.")} == {"0", "1"}
    ref_state = reference.state_dict()
    for name, param in stage.model.named_parameters():
        ref_name = name
        if name.startswith("blocks."):
            idx = int(name.split(".")[1])
            ref_name = f"blocks.{idx + 1}." + name.split(".", 2)[2]
        assert torch.equal(param, ref_state[ref_name]), name
    layer_bytes = sum(p.numel() * p.element_size() for n, p in reference.named_parameters()
                      if n.startswith(("blocks.1.", "blocks.2.")))
    shared_bytes = sum(p.numel() * p.element_size() for n, p in reference.named_parameters()
                       if not n.startswith("blocks."))
    assert stage.param_bytes() == layer_bytes + shared_bytes


@torch.no_grad()
def test_stage_layers_equal_reference_layers(tiny_root, reference):
    latents, timestep, text = _inputs(2)
    full = _stage(tiny_root, 0, 4)
    part = _stage(tiny_root, 2, 4)
    grid = full.grid(latents.shape)
    cond = full.condition(timestep, full.project_text(text), grid)
    hidden = full.embed(latents)
    for block in reference.blocks[:2]:
        hidden = block(hidden, cond.text, cond.timestep_proj, cond.rotary)
    expected = hidden
    for block in reference.blocks[2:]:
        expected = block(expected, cond.text, cond.timestep_proj, cond.rotary)
    assert torch.equal(part.run_layers(hidden, part.condition(timestep, part.project_text(text), grid)), expected)


@torch.no_grad()
def test_rotary_offset_is_a_shift_of_global_positions(tiny_root):
    stage = _stage(tiny_root, 0, 4)
    cos_full, sin_full = stage.rotary((6, 2, 3), 0)
    cos_part, sin_part = stage.rotary((2, 2, 3), 3)
    per_frame = 2 * 3
    assert torch.equal(cos_part, cos_full[:, 3 * per_frame:5 * per_frame])
    assert torch.equal(sin_part, sin_full[:, 3 * per_frame:5 * per_frame])
    # Beyond the checkpoint's RoPE table the table is rebuilt larger with identical values below it.
    cos_far, _ = stage.rotary((2, 2, 3), 1030)
    assert cos_far.shape == cos_part.shape
    assert torch.equal(stage.rotary((2, 2, 3), 3)[0], cos_part)
