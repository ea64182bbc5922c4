"""Invalid configs are rejected by `paravideo generate` before any worker starts, with a message that names
the field and says what would be valid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import BASE_CONFIG, deep_update, write_wan_folder

DROP = object()  # a value that removes the key from the base config
FOLDER = "<model folder>"  # model.path placeholder: a broken model folder made by the case's `folder`
RAY = {"launcher": "ray", "nproc": 2}


def _wan_folder(root: Path, *, parts=("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
                config: str | None = None, weights: bool = True) -> Path:
    transformer = config if config is not None else {"_class_name": "WanTransformer3DModel", "num_layers": 2}
    return write_wan_folder(root, transformer, parts=parts, weights=weights)


FOLDERS = {
    "incomplete": lambda root: _wan_folder(root, parts=("transformer", "vae")),
    "bad_json": lambda root: _wan_folder(root, config="{not json"),
    "not_wan": lambda root: _wan_folder(root, config=json.dumps({"_class_name": "FluxTransformer2DModel"})),
    "no_weights": lambda root: _wan_folder(root, weights=False),
}

# (id, config changes (dict) or raw YAML text (str), --set overrides, expected fragments of the error)
CASES = [
    ("steps_not_int", {"sampling": {"steps": "ten"}}, [], ["sampling.steps", "valid integer"]),
    ("overwrite_not_bool", {"output": {"overwrite": "yes"}}, [], ["output.overwrite", "valid boolean"]),
    ("unknown_key", {"video": {"framez": 17}}, [], ["video.framez", "unknown key", "did you mean 'num_frames'"]),
    ("unknown_section", {"schedule": {"steps": 4}}, [], ["schedule", "unknown key", "valid keys here: model"]),
    ("missing_video", {"video": DROP}, [], ["video", "required field is missing"]),
    ("timeout_zero", {"launch": {"timeout_s": 0}}, [], ["launch.timeout_s", "greater than 0"]),
    ("bad_dtype", {"model": {"dtype": "fp32"}}, [], ["model.dtype", "'float32'"]),
    ("bad_launcher", {"launch": {"launcher": "slurm"}}, [], ["launch.launcher", "'ray'"]),
    ("pipeline_zero", {"parallel": {"pipeline": 0}}, [], ["parallel.pipeline", "greater than or equal to 1"]),
    ("world_size_mismatch", {"parallel": {"pipeline": 2}, "launch": {"launcher": "local", "nproc": 3}}, [],
     ["parallel.pipeline", "launch.nproc", "to 2"]),
    ("inline_with_two_stages", {"parallel": {"pipeline": 2}}, [], ["launch.launcher", "launch.nproc: 2"]),
    ("pipeline_over_layers", {"parallel": {"pipeline": 5}, "launch": {"launcher": "local", "nproc": 5}}, [],
     ["parallel.pipeline", "use at most 4"]),
    ("patch_over_token_rows", {"parallel": {"patch": 3}, "launch": {"launcher": "local", "nproc": 3}}, [],
     ["parallel.patch", "at most 2"]),
    ("stage_layers_sum", {"parallel": {"pipeline": 2, "stage_layers": [1, 2]}, "launch": {"launcher": "local",
                                                                                          "nproc": 2}}, [],
     ["parallel.stage_layers", "summing to the model's 4 layers"]),
    ("missing_model_folder", {"model": {"path": "/nonexistent/Wan2.1-T2V-1.3B-Diffusers"}}, [],
     ["model.path", "not a folder", "diffusers-format"]),
    ("model_folder_incomplete", {"model": {"path": FOLDER}, "folder": "incomplete"}, [],
     ["model.path", "lacks the sub-folder", "text_encoder"]),
    ("model_config_unreadable", {"model": {"path": FOLDER}, "folder": "bad_json"}, [],
     ["model.path", "cannot read", "config.json"]),
    ("model_not_wan", {"model": {"path": FOLDER}, "folder": "not_wan"}, [], ["model.path", "WanTransformer3DModel"]),
    ("model_without_weights", {"model": {"path": FOLDER}, "folder": "no_weights"}, [], ["model.path", "safetensors"]),
    ("unknown_builtin", {"model": {"path": "builtin:huge"}}, [], ["model.path", "builtin:tiny"]),
    ("block_larger_than_video", {"blocks": {"block_frames": 9}}, [], ["blocks.block_frames", "use at most 5"]),
    ("context_over_block", {"blocks": {"block_frames": 2, "context_frames": 3}}, [],
     ["blocks.context_frames", "must not exceed blocks.block_frames = 2"]),
    ("context_without_blocks", {"blocks": {"context_frames": 1}}, [], ["blocks.context_frames", "block_frames > 0"]),
    ("prompts_not_from_zero", {"video": {"prompt": DROP, "prompts": [{"from_frame": 4, "text": "a"}]}}, [],
     ["video.prompts", "from_frame: 0"]),
    ("prompts_not_increasing", {"video": {"prompt": DROP, "prompts": [
        {"from_frame": 0, "text": "a"}, {"from_frame": 8, "text": "b"}, {"from_frame": 8, "text": "c"}]}}, [],
     ["video.prompts", "increase strictly"]),
    ("prompts_past_end", {"video": {"prompt": DROP, "prompts": [
        {"from_frame": 0, "text": "a"}, {"from_frame": 40, "text": "b"}]}}, [],
     ["video.prompts", "past the last frame", "video.num_frames = 17"]),
    ("prompt_and_prompts", {"video": {"prompts": [{"from_frame": 0, "text": "a"}]}}, [],
     ["video.prompt", "exactly one"]),
    ("frames_not_4k1", {"video": {"num_frames": 18}}, [], ["video.num_frames", "17 or 21"]),
    ("height_not_16", {"video": {"height": 40}}, [], ["video.height", "32 or 48"]),
    ("ray_unreachable", {"parallel": {"pipeline": 2}, "launch": {**RAY, "ray_address": "127.0.0.1:1",
                                                                 "ray_connect_timeout_s": 2}}, [],
     ["launch.ray_address", "unreachable", "ray start --head"]),
    ("ray_address_malformed", {"launch": {"ray_address": "head node"}}, [], ["launch.ray_address", "HOST:PORT"]),
    ("ray_placement_unknown", {"launch": {"placement_strategy": "PACKED"}}, [],
     ["launch.placement_strategy", "'STRICT_PACK'"]),
    ("ray_resources_gpu", {"launch": {"resources": {"GPU": 1}}}, [], ["launch.resources", "model.device"]),
    pytest.param("cuda_without_gpu", {"model": {"device": "cuda"}}, [], ["model.device", "no CUDA device"],
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
    ("unreadable_yaml", "video: [unclosed\n  prompt: x\n", [], ["config.yaml", "not valid YAML", "line"]),
    ("top_level_list", "- video\n- model\n", [], ["top level must be a mapping"]),
    ("malformed_override", {}, ["sampling.steps"], ["--set", "KEY=VALUE"]),
    ("override_into_value", {}, ["sampling.steps.max=3"], ["--set", "'steps' is not a section"]),
    # Hostile or absurd input (issue 11, item 7): refused by the loader or the schema, before anything loads.
    ("yaml_aliases", "video:\n  prompt: &a [x, x]\n  negative_prompt: [*a, *a]\n", [],
     ["config.yaml, line 3", "YAML aliases (*a) are not supported"]),
    ("duplicate_key_top", "video:\n  prompt: a\nsampling:\n  steps: 2\nvideo:\n  prompt: b\n", [],
     ["config.yaml, line 5", "duplicate key video", "first set on line 1"]),
    ("duplicate_key_nested", "video:\n  prompt: a\nsampling:\n  steps: 2\n  seed: 1\n  steps: 3\n", [],
     ["config.yaml, line 6", "duplicate key sampling.steps", "first set on line 4"]),
    ("not_utf8", b"video:\n  prompt: caf\xe9\n", [], ["config.yaml is not UTF-8", "byte 0xe9 at offset 20", "line 2"]),
    ("over_1_mib", "video:\n  prompt: x\n" + "#" * (1 << 20) + "\n", [], ["config.yaml is larger than 1 MiB"]),
    ("nesting_bomb", "video:\n  prompt: " + "[" * 200 + "]" * 200 + "\n", [],
     ["config.yaml, line 2", "nesting deeper"]),
    ("int_beyond_python", "video:\n  prompt: x\nsampling:\n  seed: " + "9" * 5000 + "\n", [],
     ["config.yaml", "unreadable value", "4300 digits"]),
    ("guidance_inf", {"sampling": {"guidance_scale": float("inf")}}, [],
     ["sampling.guidance_scale", "finite number", "got inf"]),
    ("guidance_inf_override", {}, ["sampling.guidance_scale=.inf"], ["sampling.guidance_scale", "finite number"]),
    ("guidance_nan_override", {}, ["sampling.guidance_scale=.nan"], ["sampling.guidance_scale", "finite number"]),
    ("alias_in_override", {}, ["video.prompt=[&a [x, x], *a, *a]"], ["--set", "YAML aliases (*a)"]),
    ("seed_2_64", {"sampling": {"seed": 2**64}}, [], ["sampling.seed", "less than or equal to 4294967295",
                                                       "64-bit generator seed"]),
    ("seed_2_64_override", {}, ["sampling.seed=18446744073709551616"], ["sampling.seed", "4294967295"]),
    ("seed_negative", {"sampling": {"seed": -1}}, [], ["sampling.seed", "greater than or equal to 0"]),
    ("prompt_empty", {"video": {"prompt": ""}}, [], ["video.prompt", "must not be empty"]),
    ("prompt_whitespace", {"video": {"prompt": " \t\n "}}, [], ["video.prompt", "must not be empty"]),
    ("prompt_empty_override", {}, ["video.prompt=\"\""], ["video.prompt", "must not be empty"]),
    ("prompt_null", {"video": {"prompt": None}}, [], ["video.prompt is missing or empty"]),
    ("prompts_text_blank", {"video": {"prompt": DROP, "prompts": [{"from_frame": 0, "text": "a"},
                                                                 {"from_frame": 8, "text": "   "}]}}, [],
     ["video.prompts.1.text", "must not be empty"]),
    ("frames_8192_square", {"video": {"height": 8192, "width": 8192}}, [],
     ["video.height", "video.width", "less than or equal to 4096", "square of the pixel count"]),
    ("frames_huge_count", {"video": {"num_frames": 4 * 10**6 + 1}}, [], ["video.num_frames", "16385"]),
    ("text_max_length_huge", {"model": {"text_max_length": 10**9}}, [],
     ["model.text_max_length", "less than or equal to 1024", "cross-attention"]),
    ("timeout_overflow", {"launch": {"timeout_s": 1e300}}, [], ["launch.timeout_s", "86400"]),
    ("nproc_huge", {"launch": {"launcher": "local", "nproc": 10**6}}, [], ["launch.nproc", "1024"]),
    ("output_dir_nul", {}, ["output.dir=\"/tmp/a\\0b\""], ["output.dir", "NUL"]),
]


def _without_drops(data):
    if isinstance(data, dict):
        return {k: _without_drops(v) for k, v in data.items() if v is not DROP}
    return data


def _write_config(tmp_path: Path, changes) -> Path:
    path = tmp_path / "config.yaml"
    if isinstance(changes, (str, bytes)):
        path.write_bytes(changes.encode() if isinstance(changes, str) else changes)
        return path
    changes = dict(changes)
    folder = changes.pop("folder", None)
    data = _without_drops(deep_update(BASE_CONFIG, changes))
    if folder is not None:
        data["model"]["path"] = str(FOLDERS[folder](tmp_path / "model"))
    data.setdefault("output", {})["dir"] = str(tmp_path / "out")
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("case, changes, overrides, expected", CASES, ids=[
    c.values[0] if hasattr(c, "values") else c[0] for c in CASES])
def test_bad_config_rejected_before_workers(case, changes, overrides, expected, tmp_path, tiny_root, monkeypatch,
                                            capsys):
    from paravideo import generate as generate_module
    from paravideo.cli import main

    def no_workers(config):
        raise AssertionError(f"{case}: workers were launched for an invalid config")

    monkeypatch.setattr(generate_module, "launch", no_workers)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    path = _write_config(tmp_path, changes)
    args = ["generate", "-c", str(path)] + [item for o in overrides for item in ("--set", o)]
    assert main(args) == 2
    message = capsys.readouterr().err
    for fragment in expected:
        assert fragment in message, f"{case}: {fragment!r} missing from:\n{message}"
    assert not (tmp_path / "out").exists(), "the output folder was prepared for an invalid config"


def test_table_is_large_enough():
    assert len(CASES) >= 20
