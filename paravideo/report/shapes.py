"""Model shapes for the cost model, read from config files (no weights loaded) or named presets."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path


@dataclass(frozen=True)
class DiTShape:
    """The sizes of a Wan text-to-video transformer that decide FLOPs, parameters and messages."""

    num_layers: int
    num_heads: int
    head_dim: int
    ffn_dim: int
    text_dim: int
    freq_dim: int = 256
    in_channels: int = 16
    out_channels: int = 16
    patch: tuple[int, int, int] = (1, 2, 2)
    qk_norm: bool = True
    cross_attn_norm: bool = True
    # Shapes of the other parts, used only for memory and decode time (None: unknown, not counted).
    vae_config: dict | None = field(default=None, compare=False)
    text_encoder_params: int | None = None

    @property
    def dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def patch_volume(self) -> int:
        return self.patch[0] * self.patch[1] * self.patch[2]

    def with_layers(self, num_layers: int) -> DiTShape:
        """The same model with another depth (for scaling questions)."""
        return replace(self, num_layers=num_layers)

    @classmethod
    def from_transformer_config(cls, config: dict, **extra) -> DiTShape:
        """From a diffusers `transformer/config.json` (WanTransformer3DModel)."""
        return cls(num_layers=config["num_layers"], num_heads=config["num_attention_heads"],
                   head_dim=config["attention_head_dim"], ffn_dim=config["ffn_dim"], text_dim=config["text_dim"],
                   freq_dim=config.get("freq_dim", 256), in_channels=config.get("in_channels", 16),
                   out_channels=config.get("out_channels", 16), patch=tuple(config.get("patch_size", (1, 2, 2))),
                   qk_norm=bool(config.get("qk_norm")), cross_attn_norm=bool(config.get("cross_attn_norm", True)),
                   **extra)

    @classmethod
    def from_folder(cls, root: Path) -> DiTShape:
        """From a diffusers-format Wan folder: transformer, VAE and text-encoder configs only."""
        root = Path(root)
        config = json.loads((root / "transformer" / "config.json").read_text())
        vae_path, text_path = root / "vae" / "config.json", root / "text_encoder" / "config.json"
        vae = json.loads(vae_path.read_text()) if vae_path.is_file() else None
        text = umt5_params(json.loads(text_path.read_text())) if text_path.is_file() else None
        return cls.from_transformer_config(config, vae_config=vae, text_encoder_params=text)


def umt5_params(config: dict) -> int:
    """Parameters of a (U)MT5 encoder from its config.json (embeddings, attention, gated FFN, norms)."""
    d, inner, ff, layers = config["d_model"], config["d_kv"] * config["num_heads"], config["d_ff"], config["num_layers"]
    gated = str(config.get("feed_forward_proj", "")).startswith("gated")
    attention = 4 * d * inner + config.get("relative_attention_num_buckets", 32) * config["num_heads"]
    ffn = (3 if gated else 2) * d * ff
    return config["vocab_size"] * d + layers * (attention + ffn + 2 * d) + d


# Published Wan2.1 shapes (the checkpoints' transformer config.json); the VAE is diffusers' default.
WAN_VAE = {"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
           "attn_scales": [], "temperal_downsample": [False, True, True], "dropout": 0.0}
UMT5_XXL = {"d_model": 4096, "d_kv": 64, "num_heads": 64, "d_ff": 10240, "num_layers": 24,
            "vocab_size": 256384, "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32}
PRESETS: dict[str, DiTShape] = {
    "wan2.1-1.3b": DiTShape(num_layers=30, num_heads=12, head_dim=128, ffn_dim=8960, text_dim=4096,
                            vae_config=WAN_VAE, text_encoder_params=umt5_params(UMT5_XXL)),
    "wan2.1-14b": DiTShape(num_layers=40, num_heads=40, head_dim=128, ffn_dim=13824, text_dim=4096,
                           vae_config=WAN_VAE, text_encoder_params=umt5_params(UMT5_XXL)),
}


def shape_for_model_path(path: str) -> DiTShape:
    """The shape of a config's `model.path`: a preset name, a builtin (built if absent), or a folder."""
    if path in PRESETS:
        return PRESETS[path]
    from paravideo.models.builtin import resolve_model_path

    return DiTShape.from_folder(resolve_model_path(path))


def param_groups(shape: DiTShape) -> dict[str, tuple[int, int]]:
    """(params kept in the compute dtype, params kept in fp32) per group: 'layer' (one layer) and 'shared'."""
    d, f, p = shape.dim, shape.ffn_dim, shape.patch_volume
    linear = lambda n_in, n_out: n_in * n_out + n_out  # noqa: E731 - weight + bias
    attention = 4 * linear(d, d) + (2 * d if shape.qk_norm else 0)
    layer_low = 2 * attention + linear(d, f) + linear(f, d)
    layer_fp32 = 6 * d + (2 * d if shape.cross_attn_norm else 0)  # modulation table, cross-attn norm
    shared_low = (linear(shape.in_channels * p, d) + linear(d, 6 * d) + linear(shape.text_dim, d) + linear(d, d)
                  + linear(d, shape.out_channels * p))
    shared_fp32 = 2 * d + linear(shape.freq_dim, d) + linear(d, d)  # output modulation, time embedder
    return {"layer": (layer_low, layer_fp32), "shared": (shared_low, shared_fp32)}


def stage_param_bytes(shape: DiTShape, layers: int, dtype_bytes: int) -> int:
    """Parameter bytes of a stage holding `layers` layers plus the shared modules (as the loader keeps them)."""
    groups = param_groups(shape)
    per = lambda g: groups[g][0] * dtype_bytes + groups[g][1] * 4  # noqa: E731
    return layers * per("layer") + per("shared")


def total_params(shape: DiTShape) -> int:
    """Parameters of the whole transformer."""
    groups = param_groups(shape)
    return shape.num_layers * sum(groups["layer"]) + sum(groups["shared"])
