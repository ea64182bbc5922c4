"""Shared fixtures: a private model cache per test session, the tiny model, config builders."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

# Built-in models are saved once per session into a private folder (never the user's cache).
_SESSION_CACHE = Path(os.environ.get("PARAVIDEO_TEST_CACHE", "")) if os.environ.get("PARAVIDEO_TEST_CACHE") \
    else None


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory):
    cache = _SESSION_CACHE or tmp_path_factory.mktemp("paravideo-cache")
    old = os.environ.get("PARAVIDEO_CACHE")
    os.environ["PARAVIDEO_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("PARAVIDEO_CACHE", None)
    else:
        os.environ["PARAVIDEO_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_root(_model_cache) -> Path:
    """Folder of the built-in tiny model (built once per session)."""
    from paravideo.models.builtin import ensure_builtin

    return ensure_builtin("tiny")


BASE_CONFIG = {
    "model": {"path": "builtin:tiny"},
    "video": {"prompt": "a red fox running through snow", "negative_prompt": "blurry",
              "num_frames": 17, "height": 32, "width": 48, "fps": 8},
    "sampling": {"steps": 4, "guidance_scale": 4.0, "scheduler": "unipc", "seed": 7},
    "output": {"progress": False},
}


def deep_update(base: dict, update: dict) -> dict:
    """Nested dict merge (update wins)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture
def make_config(tmp_path):
    """Build a validated RunConfig from BASE_CONFIG plus nested overrides; output goes under tmp_path."""
    from paravideo.config import parse_config

    counter = iter(range(1000))

    def build(**sections):
        data = deep_update(BASE_CONFIG, sections)
        data.setdefault("output", {}).setdefault("dir", str(tmp_path / f"run{next(counter)}"))
        return parse_config(data)

    return build


# model_index.json of a Wan2.1 text-to-video folder (the Wan-AI/*-Diffusers repositories).
WAN_INDEX = {"_class_name": "WanPipeline", "_diffusers_version": "0.33.0.dev0",
             "scheduler": ["diffusers", "UniPCMultistepScheduler"], "text_encoder": ["transformers", "UMT5EncoderModel"],
             "tokenizer": ["transformers", "T5TokenizerFast"], "transformer": ["diffusers", "WanTransformer3DModel"],
             "vae": ["diffusers", "AutoencoderKLWan"]}
WAN_SCHEDULER = {"_class_name": "UniPCMultistepScheduler", "num_train_timesteps": 1000, "flow_shift": 3.0,
                 "prediction_type": "flow_prediction", "use_flow_sigmas": True}


def write_wan_folder(root: Path, transformer: dict, *, index: dict | None = None, vae: dict | None = None,
                     parts: tuple[str, ...] = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
                     experts: tuple[str, ...] = ("transformer",), weights: bool = True) -> Path:
    """A diffusers-format Wan folder holding configs and an empty weight index (shape and refusal checks)."""
    import json

    for part in parts:
        (root / part).mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(json.dumps(WAN_INDEX if index is None else index))
    if "vae" in parts:
        (root / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan", **(vae or {})}))
    if "scheduler" in parts:
        (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(WAN_SCHEDULER))
    for expert in experts:
        if expert not in parts and expert != "transformer_2":
            continue
        (root / expert).mkdir(parents=True, exist_ok=True)
        (root / expert / "config.json").write_text(json.dumps(transformer) if isinstance(transformer, dict)
                                                   else transformer)
        if weights:
            (root / expert / "diffusion_pytorch_model.safetensors.index.json").write_text(
                json.dumps({"metadata": {}, "weight_map": {}}))
    return root
