"""Config loading: strict YAML, dotted overrides, errors that name the field and what is allowed."""

import pytest

from paravideo.config import load_config, parse_config
from paravideo.errors import ConfigError

from conftest import BASE_CONFIG, deep_update, write_wan_folder

SET_KEYS = {
    "model.path": "builtin:small", "model.dtype": "bfloat16", "video.prompt": "a boat",
    "video.negative_prompt": "fog", "video.num_frames": 33, "video.height": 48, "video.width": 80,
    "video.fps": 24, "sampling.steps": 7, "sampling.guidance_scale": 3.5, "sampling.scheduler": "flow_euler",
    "sampling.seed": 11, "output.dir": "/tmp/somewhere",
}


def _yaml(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_every_documented_key_can_be_set(tmp_path):
    path = _yaml(tmp_path, "video:\n  prompt: x\n")
    config = load_config(path, [f"{k}={v}" for k, v in SET_KEYS.items()])
    for key, value in SET_KEYS.items():
        section, field = key.split(".")
        assert getattr(getattr(config, section), field) == value, key


def _error(data) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return str(info.value)


@pytest.mark.parametrize("update, field, hint", [
    ({"video": {"fps": "fast"}}, "video.fps", "integer"),
    ({"sampling": {"steps": 2.5}}, "sampling.steps", "integer"),
    ({"sampling": {"scheduler": "ddim"}}, "sampling.scheduler", "unipc"),
    ({"sampling": {"stepz": 3}}, "sampling.stepz", "unknown key"),
    ({"colour": {"x": 1}}, "colour", "unknown key"),
    ({"model": {"path": "builtin:huge"}}, "model.path", "builtin:tiny"),
    ({"model": {"dtype": "fp8"}}, "model.dtype", "bfloat16"),
])
def test_bad_values_name_the_field(update, field, hint):
    message = _error(deep_update(BASE_CONFIG, update))
    assert field in message and hint in message, message


def test_prompt_and_prompts_are_exclusive():
    data = deep_update(BASE_CONFIG, {"video": {"prompts": [{"from_frame": 0, "text": "a"}]}})
    assert "exactly one of video.prompt or video.prompts" in _error(data)


def test_unreadable_and_malformed_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_yaml(tmp_path, "video: [unclosed\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(_yaml(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(_yaml(tmp_path, "video:\n  prompt: x\n"), ["sampling.steps"])


def test_model_folder_is_checked_before_loading(make_config, tmp_path):
    from paravideo.generate import preflight

    with pytest.raises(ConfigError, match="is not a folder"):
        preflight(make_config(model={"path": str(tmp_path / "nowhere")}))
    write_wan_folder(tmp_path / "bad", {}, parts=("transformer",))
    with pytest.raises(ConfigError, match="lacks the sub-folder"):
        preflight(make_config(model={"path": str(tmp_path / "bad")}))
