"""Read a diffusers-format Wan folder's configs into ModelFactors; refuse anything paravideo would not run exactly.

Supported: `WanPipeline` folders in the Wan2.1 layout (one transformer), the Wan2.2-T2V-A14B layout
(`transformer` + `transformer_2` switched at `boundary_ratio`) and the Wan2.2-TI2V-5B layout (48-channel
residual VAE with 16x spatial compression, `expand_timesteps`). Everything else in a folder (an image
encoder, an unknown component or config option) is named in a ModelLoadError before any worker starts.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

from paravideo.errors import ModelLoadError
from paravideo.models.factors import ModelFactors

PIPELINE_CLASS = "WanPipeline"
REQUIRED_PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
EXPERT_PARTS = ("transformer", "transformer_2")
# model_index.json entries that are not components (diffusers' bookkeeping and WanPipeline's options).
INDEX_OPTIONS = {"boundary_ratio", "expand_timesteps"}
# Component classes paravideo runs, per component.
COMPONENT_CLASSES = {
    "transformer": {"WanTransformer3DModel"}, "transformer_2": {"WanTransformer3DModel"},
    "vae": {"AutoencoderKLWan"}, "text_encoder": {"UMT5EncoderModel", "T5EncoderModel"},
    "tokenizer": {"T5TokenizerFast", "T5Tokenizer", "AutoTokenizer", "ByT5Tokenizer"},
    "scheduler": {"UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler", "DPMSolverMultistepScheduler"},
}
# Transformer options for image conditioning (I2V / FLF2V): paravideo generates from text only.
IMAGE_OPTIONS = ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len")
WEIGHTS = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX = "diffusion_pytorch_model.safetensors.index.json"
HINT = ("model.path must be a diffusers-format Wan text-to-video folder (WanPipeline: Wan2.1-T2V, Wan2.2-T2V-A14B "
        "or Wan2.2-TI2V-5B) with model_index.json, or a built-in model such as builtin:tiny")


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"model.path: cannot read {path} ({what}): {err}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"model.path: {path} ({what}) is not a JSON object")
    return data


def _init_defaults(cls) -> dict:
    """The constructor's arguments and defaults (what a config.json may set, and what a missing key means)."""
    params = inspect.signature(cls.__init__).parameters
    return {name: p.default for name, p in params.items() if name not in ("self", "args", "kwargs")}


def _with_defaults(path: Path, config: dict, cls) -> dict:
    """The config with the class's defaults filled in; a key the class does not implement is refused."""
    defaults = _init_defaults(cls)
    unknown = sorted(k for k in config if not k.startswith("_") and k not in defaults)
    if unknown:
        raise ModelLoadError(f"model.path: {path} sets {', '.join(unknown)}, which {cls.__name__} in this diffusers "
                             "does not implement; paravideo refuses to run a model with options it would ignore")
    return {**defaults, **config}


def _components(root: Path, index: dict) -> dict[str, str]:
    """Present components and their class names; unknown or unsupported entries are refused."""
    present: dict[str, str] = {}
    for key, value in index.items():
        if key.startswith("_") or key in INDEX_OPTIONS:
            continue
        if key not in COMPONENT_CLASSES:
            what = "an image encoder (image-to-video)" if key.startswith("image_") else "a component"
            raise ModelLoadError(f"model.path: model_index.json names {what} {key!r} that paravideo does not run; "
                                 f"supported components: {', '.join(COMPONENT_CLASSES)}")
        if not (isinstance(value, list) and len(value) == 2):
            raise ModelLoadError(f"model.path: model_index.json entry {key!r} is {value!r}, expected [library, class]")
        if value[1] is None:
            continue  # an optional component left out (Wan2.1's transformer_2)
        if value[1] not in COMPONENT_CLASSES[key]:
            raise ModelLoadError(f"model.path: component {key!r} is a {value[1]}; paravideo runs "
                                 f"{' or '.join(sorted(COMPONENT_CLASSES[key]))} there")
        present[key] = value[1]
    return present


def _check_parts(root: Path, present: dict[str, str]) -> None:
    missing = [p for p in REQUIRED_PARTS if p not in present or not (root / p).is_dir()]
    missing += [p for p in present if p not in missing and not (root / p).is_dir()]
    if missing:
        raise ModelLoadError(f"model.path {str(root)!r} lacks the sub-folder(s) {', '.join(missing)}; {HINT}")


def _transformer_config(root: Path, part: str) -> dict:
    from diffusers import WanTransformer3DModel

    tdir = root / part
    config = _read_json(tdir / "config.json", part)
    if config.get("_class_name") != "WanTransformer3DModel":
        raise ModelLoadError(f"model.path: {tdir} holds a {config.get('_class_name')!r}, "
                             "paravideo needs a WanTransformer3DModel (text-to-video)")
    config = _with_defaults(tdir / "config.json", config, WanTransformer3DModel)
    image = [k for k in IMAGE_OPTIONS if config.get(k) is not None]
    if image:
        raise ModelLoadError(f"model.path: {tdir / 'config.json'} sets {', '.join(image)} (image conditioning, "
                             "an image-to-video model); paravideo runs text-to-video Wan models only")
    if not ((tdir / WEIGHTS).is_file() or (tdir / WEIGHTS_INDEX).is_file()):
        raise ModelLoadError(f"model.path: {tdir} has neither {WEIGHTS} nor {WEIGHTS_INDEX} (safetensors weights)")
    return config


def _experts(root: Path, index: dict, present: dict[str, str]) -> tuple[tuple[str, ...], float | None, dict]:
    config = _transformer_config(root, "transformer")
    boundary = index.get("boundary_ratio")
    if "transformer_2" not in present:
        if boundary is not None:
            raise ModelLoadError(f"model.path: model_index.json sets boundary_ratio {boundary} but has no "
                                 "transformer_2 (the low-noise expert); the folder is incomplete")
        return ("transformer",), None, config
    if boundary is None:
        raise ModelLoadError("model.path: the folder has transformer_2 but model_index.json sets no boundary_ratio, "
                             "so WanPipeline would never run it; set boundary_ratio (Wan2.2-T2V-A14B: 0.875) or "
                             "remove transformer_2")
    if not (isinstance(boundary, (int, float)) and 0.0 < boundary < 1.0):
        raise ModelLoadError(f"model.path: model_index.json boundary_ratio {boundary!r} must be a number in (0, 1)")
    second = _transformer_config(root, "transformer_2")
    differ = sorted(k for k in set(config) | set(second) if not k.startswith("_") and config.get(k) != second.get(k))
    if differ:
        # Both experts are cut at the same layer boundaries and share one set of buffers.
        raise ModelLoadError(f"model.path: transformer and transformer_2 differ in {', '.join(differ)}; paravideo "
                             "runs two-expert models whose experts share one architecture (Wan2.2-T2V-A14B)")
    return EXPERT_PARTS, float(boundary), config


def _vae_config(root: Path, latent_channels: int) -> dict:
    from diffusers import AutoencoderKLWan

    path = root / "vae" / "config.json"
    vae = _read_json(path, "vae")
    vae = _with_defaults(path, vae, AutoencoderKLWan)
    z_dim = vae["z_dim"]
    if z_dim != latent_channels:
        raise ModelLoadError(f"model.path: the VAE's z_dim {z_dim} differs from the transformer's in_channels "
                             f"{latent_channels}; the folder mixes components of different models")
    return vae


def inspect_wan_folder(root: Path) -> ModelFactors:
    """The factors of a Wan folder, or a ModelLoadError naming what paravideo cannot run exactly."""
    if not root.is_dir():
        raise ModelLoadError(f"model.path {str(root)!r} is not a folder; {HINT}")
    if not (root / "model_index.json").is_file():
        raise ModelLoadError(f"model.path {str(root)!r} has no model_index.json; {HINT}")
    index = _read_json(root / "model_index.json", "model_index.json")
    if index.get("_class_name") != PIPELINE_CLASS:
        raise ModelLoadError(f"model.path: model_index.json names the pipeline {index.get('_class_name')!r}; paravideo "
                             f"runs {PIPELINE_CLASS} folders (text-to-video), not image-to-video or other pipelines")
    present = _components(root, index)
    _check_parts(root, present)
    experts, boundary, config = _experts(root, index, present)
    expand = index.get("expand_timesteps", False)
    if not isinstance(expand, bool):
        raise ModelLoadError(f"model.path: model_index.json expand_timesteps {expand!r} must be true or false")
    vae = _vae_config(root, config["in_channels"])
    scheduler = _read_json(root / "scheduler" / "scheduler_config.json", "scheduler")
    if config["out_channels"] not in (None, config["in_channels"]):
        raise ModelLoadError(f"model.path: the transformer predicts {config['out_channels']} channels for "
                             f"{config['in_channels']} latent channels; paravideo runs models that denoise their input")
    return ModelFactors(
        family="wan", pipeline_class=PIPELINE_CLASS, latent_channels=config["in_channels"],
        time_stride=vae["scale_factor_temporal"], spatial_stride=vae["scale_factor_spatial"],
        patch_size=tuple(config["patch_size"]), num_layers=config["num_layers"], text_dim=config["text_dim"],
        dim=config["num_attention_heads"] * config["attention_head_dim"], num_heads=config["num_attention_heads"],
        experts=experts, boundary_ratio=boundary, num_train_timesteps=scheduler.get("num_train_timesteps", 1000),
        timestep_form="per_token" if expand else "per_video", transformer_config=config, vae_config=vae)
