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
    extra: dict = field(default_factory=dict)


BUILTIN_SPECS: dict[str, BuiltinSpec] = {
    "tiny": BuiltinSpec(num_layers=4, num_heads=2, head_dim=16, ffn_dim=64, text_dim=32, text_layers=2,
                        text_heads=4, vae_base_dim=8, max_shard_size="60KB"),
    "small": BuiltinSpec(num_layers=8, num_heads=4, head_dim=64, ffn_dim=1024, text_dim=64, text_layers=2,
                         text_heads=4, vae_base_dim=8, max_shard_size="2MB"),
}


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
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import ByT5Tokenizer, UMT5Config, UMT5EncoderModel

    torch.manual_seed(spec.seed)
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=384, d_model=spec.text_dim, d_kv=spec.text_dim // spec.text_heads, d_ff=spec.text_dim * 2,
        num_layers=spec.text_layers, num_heads=spec.text_heads, relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu", dropout_rate=0.0,
    )).eval()
    torch.manual_seed(spec.seed + 1)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=spec.num_heads, attention_head_dim=spec.head_dim,
        in_channels=16, out_channels=16, text_dim=spec.text_dim, freq_dim=64, ffn_dim=spec.ffn_dim,
        num_layers=spec.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=1024,
    ).eval()
    torch.manual_seed(spec.seed + 2)
    vae = AutoencoderKLWan(base_dim=spec.vae_base_dim, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval()
    # Wan2.1's own scheduler: UniPC on flow-matching sigmas.
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=3.0)
    return WanPipeline(tokenizer=ByT5Tokenizer(), text_encoder=text_encoder, vae=vae,
                       transformer=transformer, scheduler=scheduler)


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
        shutil.rmtree(staging / "transformer")
        pipe.transformer.save_pretrained(staging / "transformer", safe_serialization=True,
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
