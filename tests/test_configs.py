"""The shipped example configs parse and pass the pre-flight checks at the world size they are meant for;
`paravideo validate` prints the plan without starting a worker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_wan_folder

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# transformer/config.json of Wan-AI/Wan2.1-T2V-1.3B-Diffusers.
WAN13B_TRANSFORMER = {
    "_class_name": "WanTransformer3DModel", "_diffusers_version": "0.33.0.dev0", "added_kv_proj_dim": None,
    "attention_head_dim": 128, "cross_attn_norm": True, "eps": 1e-06, "ffn_dim": 8960, "freq_dim": 256,
    "image_dim": None, "in_channels": 16, "num_attention_heads": 12, "num_layers": 30, "out_channels": 16,
    "patch_size": [1, 2, 2], "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024, "text_dim": 4096,
}
WAN13B_PARAMS = 1_418_996_800


@pytest.fixture
def fake_wan13b(tmp_path) -> Path:
    """A diffusers-format folder with Wan2.1-T2V-1.3B's configs and no weights (shape checks only)."""
    return write_wan_folder(tmp_path / "Wan2.1-T2V-1.3B-Diffusers", WAN13B_TRANSFORMER)


@pytest.fixture(autouse=True)
def _no_ray_address(monkeypatch):
    # ray_address: auto would dial a cluster named in the environment; these checks must not.
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.mark.parametrize("name, world", [("demo.yaml", 2), ("torchrun.yaml", 2), ("ray_local.yaml", 2),
                                                ("two_nodes.yaml", 2)])
def test_example_config_passes_preflight(name, world, tiny_root):
    from paravideo.config import load_config
    from paravideo.generate import preflight

    config = load_config(CONFIGS / name)
    factors = preflight(config, world_size=world)
    assert factors.num_layers == 4 and factors.experts == ("transformer",)


def test_cluster_config_validates_against_wan13b_shapes(fake_wan13b, capsys):
    from paravideo.cli import main

    path = CONFIGS / "ray_cluster_wan13b_1025f.yaml"
    assert main(["validate", "-c", str(path), "--world-size", "8", "--set", f"model.path={fake_wan13b}"]) == 0
    shown = json.loads(capsys.readouterr().out)
    plan = shown["plan"]
    assert shown["config"]["video"]["num_frames"] == 1025 and shown["config"]["launch"]["launcher"] == "ray"
    assert plan["world_size"] == 8 and plan["model"]["params"] == WAN13B_PARAMS
    assert plan["frames"] == {"output": 1025, "latent": 257, "height": 480, "width": 832}
    layers = [r["layers"] for r in plan["ranks"]]
    assert layers[0][0] == 0 and layers[-1][1] == 30
    assert all(a[1] == b[0] for a, b in zip(layers, layers[1:]))
    assert sum(plan["blocks"]["frames"]) == 257 and plan["blocks"]["count"] > 1
    # bf16 weights, ~1/8 of 2.8 GB per rank plus the non-layer modules each stage keeps.
    assert all(2.0e8 < r["weight_bytes"] < 5.0e8 for r in plan["ranks"])


def test_highres_pcpp_config_validates(fake_wan13b, capsys):
    from paravideo.cli import main

    path = CONFIGS / "highres_pcpp.yaml"
    assert main(["validate", "-c", str(path), "--world-size", "8", "--set", f"model.path={fake_wan13b}"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["config"]["parallel"]["patch_mode"] == "pcpp"
    plan = shown["plan"]
    assert plan["world_size"] == 8 and len(plan["stages"]) == 2
    assert [s["ranks"] for s in plan["stages"]] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert {r["band"] for r in plan["ranks"]} == {0, 1, 2, 3}


def test_validate_names_world_size_mismatch(tiny_root, capsys):
    from paravideo.cli import main

    assert main(["validate", "-c", str(CONFIGS / "ray_local.yaml"), "--world-size", "3"]) == 2
    err = capsys.readouterr().err
    assert "parallel.pipeline" in err and "launch.nproc" in err


# transformer/config.json of Wan-AI/Wan2.2-T2V-A14B-Diffusers (both experts) and Wan2.2-TI2V-5B-Diffusers.
WAN14B_TRANSFORMER = {**WAN13B_TRANSFORMER, "attention_head_dim": 128, "ffn_dim": 13824, "num_attention_heads": 40,
                      "num_layers": 40, "pos_embed_seq_len": None}
TI2V_TRANSFORMER = {**WAN13B_TRANSFORMER, "ffn_dim": 14336, "num_attention_heads": 24, "in_channels": 48,
                    "out_channels": 48, "pos_embed_seq_len": None}
TI2V_VAE = {"base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "is_residual": True, "in_channels": 12,
            "out_channels": 12, "patch_size": 2, "scale_factor_spatial": 16, "scale_factor_temporal": 4,
            "latents_mean": [0.0] * 48, "latents_std": [1.0] * 48}


def _validate(path: Path, folder: Path, capsys) -> dict:
    from paravideo.cli import main

    assert main(["validate", "-c", str(path), "--world-size", "8", "--set", f"model.path={folder}"]) == 0
    return json.loads(capsys.readouterr().out)["plan"]


def test_wan22_a14b_config_validates_with_both_experts_on_every_rank(tmp_path, capsys):
    from conftest import WAN_INDEX

    index = {**WAN_INDEX, "transformer_2": ["diffusers", "WanTransformer3DModel"], "boundary_ratio": 0.875}
    folder = write_wan_folder(tmp_path / "Wan2.2-T2V-A14B-Diffusers", WAN14B_TRANSFORMER, index=index,
                              experts=("transformer", "transformer_2"))
    plan = _validate(CONFIGS / "wan22_a14b_1025f.yaml", folder, capsys)
    assert plan["model"]["experts"] == ["transformer", "transformer_2"] and plan["model"]["boundary_ratio"] == 0.875
    assert plan["frames"]["latent"] == 257 and plan["world_size"] == 8
    # Two 14B experts in bf16 (~57 GB together): each of 8 ranks holds 5 layers of each (plus each expert's
    # shared modules, the modulation tables in fp32), about 4 GB per expert.
    assert 5.5e10 < plan["model"]["params"] * 2 < 6.0e10
    for rank in plan["ranks"]:
        per_expert = rank["weight_bytes_by_expert"]
        assert set(per_expert) == {"transformer", "transformer_2"}
        assert sum(per_expert.values()) == rank["weight_bytes"] and 3.5e9 < per_expert["transformer"] < 4.5e9


def test_wan22_ti2v_config_validates_with_its_factors(tmp_path, capsys):
    from conftest import WAN_INDEX

    folder = write_wan_folder(tmp_path / "Wan2.2-TI2V-5B-Diffusers", TI2V_TRANSFORMER, vae=TI2V_VAE,
                              index={**WAN_INDEX, "expand_timesteps": True})
    plan = _validate(CONFIGS / "wan22_ti2v_720p.yaml", folder, capsys)
    model = plan["model"]
    assert (model["latent_channels"], model["spatial_stride"], model["timestep_form"]) == (48, 16, "per_token")
    assert plan["frames"]["latent"] == 121 and [s["ranks"] for s in plan["stages"]][0] == [0, 1]
    assert 4.5e9 < model["params"] < 5.5e9  # the 5B DiT

