"""Built-in random-weight Wan pipelines, built offline and saved like a real checkpoint."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class BuiltinSpec:
    """Shapes of a built-in Wan-architecture pipeline (random weights, fixed seed)."""

    num_layers: int
    num_heads: int
    head_dim: int
    ffn_dim: int
    text_dim: int
    text_layers: int
    text_heads: int
    vae_base_dim: int
    seed: int = 1234
    # Shard the DiT's safetensors so that stage loads exercise the index file like a real checkpoint.
    max_shard_size: str = "10GB"
    # Wan2.2-T2V-A14B layout: a low-noise expert (transformer_2) takes over below this ratio of the timesteps.
    boundary_ratio: float | None = None
    # Wan2.2-TI2V-5B layout: 48-channel residual VAE with 16x spatial compression, per-token timesteps.
    ti2v: bool = False
    extra: dict = field(default_factory=dict)


BUILTIN_SPECS: dict[str, BuiltinSpec] = {
    "tiny": BuiltinSpec(num_layers=4, num_heads=2, head_dim=16, ffn_dim=64, text_dim=32, text_layers=2,
                        text_heads=4, vae_base_dim=8, max_shard_size="60KB"),
    "small": BuiltinSpec(num_layers=8, num_heads=4, head_dim=64, ffn_dim=1024, text_dim=64, text_layers=2,
                         text_heads=4, vae_base_dim=8, max_shard_size="2MB"),
    "tiny-a14b": BuiltinSpec(num_layers=4, num_heads=2, head_dim=16, ffn_dim=64, text_dim=32, text_layers=2,
                             text_heads=4, vae_base_dim=8, max_shard_size="60KB", boundary_ratio=0.875),
    "tiny-ti2v": BuiltinSpec(num_layers=4, num_heads=2, head_dim=16, ffn_dim=64, text_dim=32, text_layers=2,
                             text_heads=4, vae_base_dim=8, max_shard_size="60KB", ti2v=True),
}
TI2V_Z_DIM = 48


def cache_root() -> Path:
    """Where built-in models are saved (PARAVIDEO_CACHE, else ~/.cache/paravideo)."""
    env = os.environ.get("PARAVIDEO_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "paravideo"


def _spec_digest(spec: BuiltinSpec) -> str:
    import diffusers

    blob = json.dumps({"spec": asdict(spec), "diffusers": diffusers.__version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def build_pipeline(spec: BuiltinSpec):
    """Build the random-weight WanPipeline in memory, deterministically from the spec's seed."""
    from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import ByT5Tokenizer, UMT5Config, UMT5EncoderModel

    torch.manual_seed(spec.seed)
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=384, d_model=spec.text_dim, d_kv=spec.text_dim // spec.text_heads, d_ff=spec.text_dim * 2,
        num_layers=spec.text_layers, num_heads=spec.text_heads, relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu", dropout_rate=0.0,
    )).eval()
    channels = TI2V_Z_DIM if spec.ti2v else 16
    transformers = []
    for expert in range(2 if spec.boundary_ratio is not None else 1):
        torch.manual_seed(spec.seed + 1 + 10 * expert)
        transformers.append(WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=spec.num_heads, attention_head_dim=spec.head_dim,
            in_channels=channels, out_channels=channels, text_dim=spec.text_dim, freq_dim=64, ffn_dim=spec.ffn_dim,
            num_layers=spec.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
            rope_max_seq_len=1024).eval())
    torch.manual_seed(spec.seed + 2)
    vae = _build_vae(spec)
    # Wan's own scheduler: UniPC on flow-matching sigmas.
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=3.0)
    return WanPipeline(tokenizer=ByT5Tokenizer(), text_encoder=text_encoder, vae=vae, transformer=transformers[0],
                       scheduler=scheduler, transformer_2=transformers[1] if len(transformers) > 1 else None,
                       boundary_ratio=spec.boundary_ratio, expand_timesteps=spec.ti2v)


def _build_vae(spec: BuiltinSpec):
    """Wan2.1's VAE layout, or with `ti2v` Wan2.2's: 48 channels, residual blocks, 2x2 patches, 16x spatial."""
    from diffusers import AutoencoderKLWan

    common = dict(base_dim=spec.vae_base_dim, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                  temperal_downsample=[False, True, True])
    if not spec.ti2v:
        return AutoencoderKLWan(z_dim=16, **common).eval()
    gen = torch.Generator().manual_seed(spec.seed + 3)
    mean = (torch.rand(TI2V_Z_DIM, generator=gen) - 0.5).tolist()
    std = (torch.rand(TI2V_Z_DIM, generator=gen) + 0.5).tolist()
    return AutoencoderKLWan(z_dim=TI2V_Z_DIM, is_residual=True, in_channels=12, out_channels=12, patch_size=2,
                            scale_factor_spatial=16, latents_mean=mean, latents_std=std, **common).eval()


def ensure_builtin(name: str) -> Path:
    """Return the folder of built-in model `name`, building and saving it once if absent."""
    spec = BUILTIN_SPECS[name]
    target = cache_root() / f"{name}-{_spec_digest(spec)}"
    if (target / "model_index.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build into a temp folder and rename, so concurrent ranks never see a half-written model.
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        pipe = build_pipeline(spec)
        pipe.save_pretrained(staging, safe_serialization=True)
        for part in ("transformer", "transformer_2"):
            if getattr(pipe, part, None) is not None:
                shutil.rmtree(staging / part)
                getattr(pipe, part).save_pretrained(staging / part, safe_serialization=True,
                                                    max_shard_size=spec.max_shard_size)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model_path(path: str) -> Path:
    """Map a config's model.path (a folder or builtin:NAME) to a local folder."""
    if path.startswith(BUILTIN_PREFIX):
        return ensure_builtin(path.removeprefix(BUILTIN_PREFIX))
    return Path(path).expanduser()
