"""Built-in models: deterministic, saved once, loaded through from_pretrained bit-identically."""

import torch

from paravideo.models.builtin import BUILTIN_SPECS, build_pipeline, ensure_builtin


def test_builtin_round_trip_is_bit_identical(tiny_root):
    from diffusers import WanPipeline

    built = build_pipeline(BUILTIN_SPECS["tiny"])
    loaded = WanPipeline.from_pretrained(tiny_root)
    for part in ("transformer", "vae", "text_encoder"):
        a, b = getattr(built, part).state_dict(), getattr(loaded, part).state_dict()
        assert a.keys() == b.keys(), part
        for key in a:
            assert torch.equal(a[key], b[key]), f"{part}.{key}"
    assert type(loaded.scheduler).__name__ == "UniPCMultistepScheduler"


def test_builtin_is_saved_once(tiny_root):
    stamp = (tiny_root / "model_index.json").stat().st_mtime_ns
    assert ensure_builtin("tiny") == tiny_root
    assert (tiny_root / "model_index.json").stat().st_mtime_ns == stamp


def test_builtin_transformer_is_sharded_like_a_real_checkpoint(tiny_root):
    tdir = tiny_root / "transformer"
    assert (tdir / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert not (tdir / "diffusion_pytorch_model.safetensors").exists()
    assert len(list(tdir.glob("diffusion_pytorch_model-*.safetensors"))) > 1


def test_small_spec_is_benchmark_sized():
    spec = BUILTIN_SPECS["small"]
    assert spec.num_layers >= 8 and spec.num_heads * spec.head_dim >= 256
