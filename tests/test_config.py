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


# --- Hostile or absurd input (issue 11, item 7) -------------------------------------------------------------

def _float_fields() -> list[str]:
    """Every float-valued field of the schema as a dotted key (a float dict's entry as KEY.pool), so a new float
    field is covered without editing this test."""
    from typing import get_args, get_origin

    from paravideo.config import RunConfig

    out = []
    for section, sfield in RunConfig.model_fields.items():
        for name, field in sfield.annotation.model_fields.items():
            ann = field.annotation
            if get_origin(ann) is dict and get_args(ann)[1] is float:
                out.append(f"{section}.{name}.pool")
            elif ann is float or float in get_args(ann):  # float, or float | None
                out.append(f"{section}.{name}")
    return out


FLOAT_FIELDS = _float_fields()


def test_float_fields_found():
    assert {"sampling.guidance_scale", "sampling.flow_shift", "launch.timeout_s", "launch.resources.pool",
            "parallel.pcpp_fraction"} <= set(FLOAT_FIELDS)
    assert not any("dtype" in key for key in FLOAT_FIELDS)


@pytest.mark.parametrize("text", [".inf", "-.inf", ".nan", ".NaN", "+.Inf"])
@pytest.mark.parametrize("key", FLOAT_FIELDS)
def test_non_finite_floats_are_refused_in_every_float_field(tmp_path, key, text):
    file_text = "video:\n  prompt: x\n"
    with pytest.raises(ConfigError) as info:  # through --set
        load_config(_yaml(tmp_path, file_text), [f"{key}={text}"])
    assert key in str(info.value) and "finite number" in str(info.value), str(info.value)
    section, rest = key.split(".", 1)
    nested = rest.replace(".", ":\n    ")  # launch.resources.pool -> resources:\n    pool
    with pytest.raises(ConfigError) as info:  # through the file
        load_config(_yaml(tmp_path, f"{file_text}{section}:\n  {nested}: {text}\n"))
    assert key in str(info.value) and "finite number" in str(info.value), str(info.value)


BILLION_LAUGHS = "video:\n  prompt: x\n  negative_prompt: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + \
    "".join(f"  n{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9))


def test_billion_laughs_is_refused_quickly_and_small(tmp_path):
    """A ~700-byte file whose aliases expand to 10**9 strings: refused at the first alias, in a child process
    with a memory cap and a timeout so that a regression fails instead of taking the machine down."""
    import subprocess
    import sys

    path = _yaml(tmp_path, BILLION_LAUGHS)
    assert path.stat().st_size < 1000
    script = ("import resource, sys\n"
              "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
              "from paravideo.config import load_config\n"
              "from paravideo.errors import ConfigError\n"
              "try:\n    load_config(sys.argv[1])\nexcept ConfigError as err:\n    print(err)\n")
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "line 4: YAML aliases (*a0) are not supported in config files" in done.stdout, done.stdout


@pytest.mark.parametrize("text, where", [
    ("video:\n  prompt: a\nvideo:\n  prompt: b\n", "line 3: duplicate key video (first set on line 1)"),
    ("video:\n  prompt: a\n  num_frames: 17\n  prompt: b\n",
     "line 4: duplicate key video.prompt (first set on line 2)"),
    ("video:\n  prompts:\n    - from_frame: 0\n      text: a\n      text: b\n",
     "line 5: duplicate key video.prompts[0].text (first set on line 4)"),
    ("video: {prompt: a, prompt: b}\n", "line 1: duplicate key video.prompt (first set on line 1)"),
    ("video:\n  prompt: x\nlaunch:\n  resources: {pool: 1, pool: 2}\n",
     "line 4: duplicate key launch.resources.pool"),
])
def test_duplicate_keys_are_refused_at_every_level(tmp_path, text, where):
    with pytest.raises(ConfigError) as info:
        load_config(_yaml(tmp_path, text))
    assert f"config {tmp_path / 'c.yaml'}, {where}" in str(info.value), str(info.value)


def test_same_key_in_sibling_mappings_is_fine(tmp_path):
    text = "video:\n  prompts:\n    - {from_frame: 0, text: a}\n    - {from_frame: 4, text: b}\n"
    assert [s.text for s in load_config(_yaml(tmp_path, text)).video.prompts] == ["a", "b"]


def test_anchor_without_alias_and_utf8_bom_are_accepted(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes("\ufeffvideo:\n  prompt: &p café au lait\n".encode())
    assert load_config(path).video.prompt == "café au lait"


def test_non_utf8_file_names_file_offset_and_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("video:\n  negative_prompt: x\n  prompt: café\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (f"config {path} is not UTF-8 text: byte 0xe9 at offset 41 (line 3) cannot be "
                               "decoded; save the file as UTF-8")


def test_size_limit_reads_only_a_bounded_prefix(tmp_path):
    from paravideo.config_yaml import MAX_CONFIG_BYTES

    path = _yaml(tmp_path, "video:\n  prompt: x\n" + "#" * MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        load_config(path)
    fifo = tmp_path / "endless"
    import os
    import threading

    os.mkfifo(fifo)
    stop = threading.Event()

    def feed():  # a writer that never ends: only a bounded read returns
        with open(fifo, "wb") as f:
            try:
                while not stop.is_set():
                    f.write(b"# " * 4096)
            except BrokenPipeError:
                pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        with pytest.raises(ConfigError, match="larger than 1 MiB"):
            load_config(fifo)
    finally:
        stop.set()
    writer.join(timeout=10)


@pytest.mark.parametrize("item, fragment", [
    ("video.prompt=[&a [x, x], *a]", "YAML aliases (*a)"),
    ("video={prompt: a, prompt: b}", "duplicate key prompt"),
    ("sampling.seed=" + "9" * 5000, "4300 digits"),
])
def test_overrides_go_through_the_same_loader(tmp_path, item, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(_yaml(tmp_path, "video:\n  prompt: x\n"), [item])
    assert str(info.value).startswith("--set ") and fragment in str(info.value), str(info.value)


def test_override_that_is_not_yaml_is_text(tmp_path):
    config = load_config(_yaml(tmp_path, "video:\n  prompt: x\n"), ["video.prompt=*sparkles* a: b"])
    assert config.video.prompt == "*sparkles* a: b"


@pytest.mark.parametrize("seed, ok", [(0, True), (2**32 - 1, True), (2**32, False), (2**63 - 1, False),
                                      (2**64, False), (-1, False)])
def test_seed_range(seed, ok):
    data = deep_update(BASE_CONFIG, {"sampling": {"seed": seed}})
    if ok:
        assert parse_config(data).sampling.seed == seed
    else:
        assert "sampling.seed" in _error(data)


def test_largest_seed_draws_noise_in_every_mode():
    """The bound is what the noise code can use: it derives seed + 1 and seed * 1000003 + block."""
    from paravideo.config import MAX_SEED
    from paravideo.schedule.noise import NoiseSource
    from paravideo.schedule.plan import make_plan

    plan = make_plan(4097, 4, 2, 1)  # 4097 latent frames: video.num_frames = 16385, the largest allowed
    for mode in ("coordinated", "independent"):
        noise = NoiseSource(plan, mode=mode, seed=MAX_SEED, shape_chw=(1, 2, 2))
        assert noise.block_noise(len(plan.blocks) - 1).isfinite().all()


def _limited_fields() -> list[tuple[str, int | float]]:
    from paravideo.config import RunConfig

    out = []
    for section, sfield in RunConfig.model_fields.items():
        for name, field in sfield.annotation.model_fields.items():
            if isinstance(field.json_schema_extra, dict) and "limit_reason" in field.json_schema_extra:
                limit = next(m.le for m in field.metadata if getattr(m, "le", None) is not None)
                out.append((f"{section}.{name}", limit))
    return out


@pytest.mark.parametrize("key, limit", _limited_fields(), ids=[k for k, _ in _limited_fields()])
def test_bounded_fields_accept_their_limit_and_explain_refusals(key, limit):
    from paravideo.config import RunConfig

    section, name = key.split(".")
    reason = RunConfig.model_fields[section].annotation.model_fields[name].json_schema_extra["limit_reason"]
    parse_config(deep_update(BASE_CONFIG, {section: {name: limit}}))
    over = limit + (1 if isinstance(limit, int) else limit)
    if key == "video.num_frames":
        over = limit + 4  # stays of the form 4k+1, so only the bound can refuse it
    elif key in ("video.height", "video.width"):
        over = limit + 16
    message = _error(deep_update(BASE_CONFIG, {section: {name: over}}))
    shown = f"{limit:g}" if isinstance(limit, float) else str(limit)
    assert key in message and f"less than or equal to {shown}" in message and reason in message, message


@pytest.mark.parametrize("update, field", [
    ({"video": {"prompt": ""}}, "video.prompt"),
    ({"video": {"prompt": "\u3000 \t"}}, "video.prompt"),  # ideographic space: still blank
    ({"video": {"prompt": None, "prompts": [{"from_frame": 0, "text": "\n"}]}}, "video.prompts.0.text"),
    ({"output": {"dir": ""}}, "output.dir"),
    ({"output": {"dir": "out\0put"}}, "output.dir"),
    ({"model": {"path": "/models/wan\0"}}, "model.path"),
    ({"launch": {"ray_temp_dir": "  "}}, "launch.ray_temp_dir"),
])
def test_blank_text_and_nul_paths_are_refused(update, field):
    data = deep_update(BASE_CONFIG, update)
    if data["video"].get("prompt", "") is None:
        del data["video"]["prompt"]
    assert field in _error(data)


def test_huge_values_are_shown_short():
    prompt: list = ["lol"] * 10
    for _ in range(5):
        prompt = [prompt] * 10  # shared sub-lists, as YAML aliases would build: 10**6 strings if expanded
    message = _error(deep_update(BASE_CONFIG, {"video": {"prompt": prompt}, "sampling": {"steps": "9" * 10**5}}))
    assert "video.prompt" in message and "sampling.steps" in message and len(message) < 1000, len(message)
