"""Load Wan components from a diffusers-format folder; a stage reads only its layers' weights."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from paravideo.errors import ModelLoadError

_WEIGHTS = "diffusion_pytorch_model.safetensors"
_INDEX = "diffusion_pytorch_model.safetensors.index.json"
# Config dtype names (model.dtype) to torch dtypes.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_LAYER_KEY = re.compile(r"^blocks\.(\d+)\.(.*)$")


def _weight_files(tdir: Path) -> dict[str, Path]:
    """Map each transformer weight key to the safetensors file that holds it."""
    if (tdir / _INDEX).is_file():
        weight_map = json.loads((tdir / _INDEX).read_text())["weight_map"]
        return {key: tdir / name for key, name in weight_map.items()}
    from safetensors import safe_open

    with safe_open(tdir / _WEIGHTS, framework="pt") as handle:
        return {key: tdir / _WEIGHTS for key in handle.keys()}


def stage_state_dict(tdir: Path, lo: int, hi: int) -> dict[str, torch.Tensor]:
    """Read layers [lo, hi) (renumbered from 0) plus every non-layer weight, opening only needed files."""
    from safetensors import safe_open

    wanted: dict[Path, list[tuple[str, str]]] = {}
    for key, path in _weight_files(tdir).items():
        match = _LAYER_KEY.match(key)
        if match is None:
            wanted.setdefault(path, []).append((key, key))
        elif lo <= int(match.group(1)) < hi:
            wanted.setdefault(path, []).append((key, f"blocks.{int(match.group(1)) - lo}.{match.group(2)}"))
    state: dict[str, torch.Tensor] = {}
    for path, keys in wanted.items():
        with safe_open(path, framework="pt") as handle:
            for key, local in keys:
                state[local] = handle.get_tensor(key)
    return state


def load_transformer_stage(root: Path, lo: int, hi: int, *, dtype: torch.dtype, device: torch.device,
                           component: str = "transformer"):
    """Build the WanTransformer3DModel of `component` holding only layers [lo, hi) (as blocks 0..hi-lo-1)."""
    from diffusers import WanTransformer3DModel
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    config = json.loads((root / component / "config.json").read_text())
    num_layers = config["num_layers"]
    if not 0 <= lo < hi <= num_layers:
        raise ModelLoadError(f"layer range [{lo}, {hi}) is outside the model's {num_layers} layers")
    init_args = {k: v for k, v in config.items() if not k.startswith("_")}
    init_args["num_layers"] = hi - lo
    with torch.device("meta"):
        model = WanTransformer3DModel(**init_args)
    state = stage_state_dict(root / component, lo, hi)
    state = {k: v.to(_param_dtype(k, dtype, model)) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    # RoPE tables are non-persistent buffers, so the meta build left them empty: rebuild for real.
    cfg = model.config
    model.rope = WanRotaryPosEmbed(cfg.attention_head_dim, cfg.patch_size, cfg.rope_max_seq_len)
    return model.to(device).eval().requires_grad_(False)


def _param_dtype(key: str, dtype: torch.dtype, model) -> torch.dtype:
    # Keep the modules diffusers keeps in fp32 (time embedding, modulation tables, norms) in fp32.
    parts = set(key.split("."))
    return torch.float32 if parts & set(model._keep_in_fp32_modules) else dtype


def load_text_encoder(root: Path, *, dtype: torch.dtype, device: torch.device):
    """Tokenizer and UMT5 encoder from the folder."""
    from transformers import AutoTokenizer, UMT5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    encoder = UMT5EncoderModel.from_pretrained(root / "text_encoder", dtype=dtype)
    return tokenizer, encoder.to(device).eval().requires_grad_(False)


def load_vae(root: Path, *, device: torch.device):
    """The Wan VAE in float32 (decode quality; it is a small share of the work)."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan.from_pretrained(root / "vae", torch_dtype=torch.float32).to(device).eval()


def read_scheduler_config(root: Path) -> dict:
    """The checkpoint's scheduler config (class name and arguments)."""
    return json.loads((root / "scheduler" / "scheduler_config.json").read_text())
