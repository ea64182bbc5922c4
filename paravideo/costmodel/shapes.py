"""Model shapes for the cost model, read from config files (no weights loaded) or named presets."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path


@dataclass(frozen=True)
class DiTShape:
    """The sizes of a Wan text-to-video transformer (each expert's, when there are two) and the model's
    strides: what decides FLOPs, parameters, messages and latent sizes."""

    num_layers: int
    num_heads: int
    head_dim: int
    ffn_dim: int
    text_dim: int
    in_channels: int  # latent channels
    out_channels: int
    patch: tuple[int, int, int]
    time_stride: int  # VAE: output frames per latent frame after the first
    spatial_stride: int  # VAE: pixels per latent pixel
    experts: int = 1  # transformers of identical shape switched by timestep (Wan2.2-T2V-A14B: 2)
    freq_dim: int = 256
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
    def from_factors(cls, factors, **extra) -> DiTShape:
        """From a model folder's declared factors (`paravideo.models.factors.ModelFactors`)."""
        config = factors.transformer_config
        return cls(num_layers=factors.num_layers, num_heads=factors.num_heads,
                   head_dim=config["attention_head_dim"], ffn_dim=config["ffn_dim"], text_dim=factors.text_dim,
                   in_channels=factors.latent_channels, out_channels=config["out_channels"] or factors.latent_channels,
                   patch=factors.patch_size, time_stride=factors.time_stride, spatial_stride=factors.spatial_stride,
                   experts=len(factors.experts), freq_dim=config["freq_dim"], qk_norm=bool(config["qk_norm"]),
                   cross_attn_norm=bool(config["cross_attn_norm"]), **extra)

    @classmethod
    def from_folder(cls, root: Path) -> DiTShape:
        """From a model folder: the family's factors, plus the VAE and text-encoder configs (no weights)."""
        from paravideo.models.family import inspect_model

        root = Path(root)
        _, factors = inspect_model(root)
        text_path = root / "text_encoder" / "config.json"
        text = umt5_params(json.loads(text_path.read_text())) if text_path.is_file() else None
        return cls.from_factors(factors, vae_config=factors.vae_config, text_encoder_params=text)


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
# Wan2.2-TI2V-5B's VAE: 48 channels, residual blocks, 2x2 patches, 16x spatial (latent statistics omitted).
WAN22_VAE = {"base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
             "attn_scales": [], "temperal_downsample": [False, True, True], "dropout": 0.0, "is_residual": True,
             "in_channels": 12, "out_channels": 12, "patch_size": 2, "scale_factor_spatial": 16}
WAN21 = dict(in_channels=16, out_channels=16, patch=(1, 2, 2), time_stride=4, spatial_stride=8, vae_config=WAN_VAE,
             text_encoder_params=umt5_params(UMT5_XXL))
PRESETS: dict[str, DiTShape] = {
    "wan2.1-1.3b": DiTShape(num_layers=30, num_heads=12, head_dim=128, ffn_dim=8960, text_dim=4096, **WAN21),
    "wan2.1-14b": DiTShape(num_layers=40, num_heads=40, head_dim=128, ffn_dim=13824, text_dim=4096, **WAN21),
    "wan2.2-a14b": DiTShape(num_layers=40, num_heads=40, head_dim=128, ffn_dim=13824, text_dim=4096, experts=2,
                            **WAN21),
    "wan2.2-ti2v-5b": DiTShape(num_layers=30, num_heads=24, head_dim=128, ffn_dim=14336, text_dim=4096,
                               in_channels=48, out_channels=48, patch=(1, 2, 2), time_stride=4, spatial_stride=16,
                               vae_config=WAN22_VAE, text_encoder_params=umt5_params(UMT5_XXL)),
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


def expert_param_bytes(shape: DiTShape, layers: int, dtype_bytes: int) -> int:
    """Parameter bytes of one expert's `layers` layers plus its shared modules (as the loader keeps them)."""
    groups = param_groups(shape)
    per = lambda g: groups[g][0] * dtype_bytes + groups[g][1] * 4  # noqa: E731
    return layers * per("layer") + per("shared")


def stage_param_bytes(shape: DiTShape, layers: int, dtype_bytes: int) -> int:
    """Parameter bytes of a stage holding `layers` layers of every expert (all stay resident)."""
    return shape.experts * expert_param_bytes(shape, layers, dtype_bytes)


def total_params(shape: DiTShape) -> int:
    """Parameters of the whole model (every expert)."""
    groups = param_groups(shape)
    return shape.experts * (shape.num_layers * sum(groups["layer"]) + sum(groups["shared"]))
