"""The run config: a typed tree loaded strictly from YAML, with dotted `--set` overrides."""

from __future__ import annotations

import difflib
import reprlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from paravideo.config_yaml import RefusedYAML, load_yaml_file, parse_yaml
from paravideo.errors import ConfigError

# Upper bounds on what scales time and memory: far above any real run, far below what exhausts a machine.
MAX_SIDE = 4096  # pixels: 4K; Wan was trained at up to 1280x720, and attention grows with the square of the pixels
MAX_FRAMES = 16385  # 4k+1: over 17 minutes at 16 fps; each block's noise and latents grow with the video
MAX_TEXT_TOKENS = 1024  # Wan was trained with 512; every cross-attention attends to all of them, padding included
MAX_SEED = 2**32 - 1  # the seed is mixed with block numbers (seed * 1000003 + block) into torch's 64-bit seed
MAX_RANKS = 1024  # per degree and launch.nproc: a typo of 10**6 would spawn that many processes
MAX_TIMEOUT_S = 86400.0  # one day: no wait in a run is legitimately longer; ~1e14 s overflows timedelta


def _limit(why: str) -> dict:
    """Field kwargs that make a range error also say why the limit is there (`_format_error` appends it)."""
    return {"json_schema_extra": {"limit_reason": why}}


def _path_like(value: str | None) -> str | None:
    # The OS would refuse these only at first use, after the models load, with a raw traceback.
    if value is not None and not value.strip():
        raise ValueError("must not be empty (name a folder)")
    if value is not None and "\0" in value:
        raise ValueError("must not contain a NUL character (\\0); no file system allows one in a path")
    return value


def _not_blank(value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise ValueError("must not be empty or whitespace only (the model needs text to condition on)")
    return value


class _Section(BaseModel):
    # allow_inf_nan=False: .inf / .nan in any float field (guidance, timeouts, resources) is a typo or an attack.
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, allow_inf_nan=False)


class ModelConfig(_Section):
    path: str = Field("builtin:tiny", description="diffusers-format Wan text-to-video folder (Wan2.1-T2V, "
                      "Wan2.2-T2V-A14B, Wan2.2-TI2V-5B), or builtin:tiny / small / tiny-a14b / tiny-ti2v")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="DiT compute dtype")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when available, else cpu")
    text_max_length: int = Field(512, ge=1, le=MAX_TEXT_TOKENS, description="prompt tokens (Wan was trained "
                                 "with 512)", **_limit("every cross-attention attends to all of them, "
                                                       "padding included"))

    @field_validator("path")
    @classmethod
    def _path_known(cls, value: str) -> str:
        from paravideo.models.builtin import BUILTIN_SPECS

        _path_like(value)
        if value.startswith("builtin:") and value.removeprefix("builtin:") not in BUILTIN_SPECS:
            raise ValueError(f"unknown built-in model {value!r}; choose one of "
                             + ", ".join(f"builtin:{n}" for n in BUILTIN_SPECS))
        return value


class PromptSpan(_Section):
    from_frame: int = Field(ge=0, description="first output frame this prompt conditions")
    text: str = Field(min_length=1, description="the prompt")

    _text_not_blank = field_validator("text")(_not_blank)


class VideoConfig(_Section):
    prompt: str | None = Field(None, description="the prompt for the whole video")
    prompts: list[PromptSpan] | None = Field(None, description="a prompt schedule (alternative to prompt)")
    negative_prompt: str = Field("", description="classifier-free guidance's negative prompt")
    num_frames: int = Field(17, ge=1, le=MAX_FRAMES, description="output frames, Tk+1 for the model's VAE time "
                            "stride T (Wan: 4k+1; checked against the model folder)",
                            **_limit("over 17 minutes at 16 fps; longer runs: generate parts and join them"))
    height: int = Field(64, ge=16, le=MAX_SIDE, description="pixels, a multiple of VAE stride x patch (Wan2.1: 16, "
                        "Wan2.2-TI2V-5B: 32; checked against the model folder)",
                        **_limit("4K; attention memory grows with the square of the pixel count"))
    width: int = Field(64, ge=16, le=MAX_SIDE, description="pixels, a multiple of VAE stride x patch, like height",
                       **_limit("4K; attention memory grows with the square of the pixel count"))
    fps: int = Field(16, ge=1, le=240, description="frames per second of the mp4")

    _prompt_not_blank = field_validator("prompt")(_not_blank)

    @model_validator(mode="after")
    def _one_prompt_source(self) -> VideoConfig:
        if self.prompt is None and self.prompts is None:  # also `prompt:` with nothing after it (null in YAML)
            raise ValueError("video.prompt is missing or empty; set exactly one of video.prompt or video.prompts")
        if self.prompt is not None and self.prompts is not None:
            raise ValueError("set exactly one of video.prompt or video.prompts")
        if self.prompts is not None:
            starts = [span.from_frame for span in self.prompts]
            if not starts or starts[0] != 0:
                raise ValueError("video.prompts must start with from_frame: 0")
            if any(b <= a for a, b in zip(starts, starts[1:])):
                raise ValueError(f"video.prompts from_frame values must increase strictly, got {starts}")
            if starts[-1] >= self.num_frames:
                raise ValueError(f"video.prompts from_frame {starts[-1]} is past the last frame "
                                 f"(video.num_frames = {self.num_frames})")
        return self

    def prompt_spans(self) -> list[PromptSpan]:
        """The prompt schedule, a single span when only `prompt` is set."""
        return self.prompts if self.prompts is not None else [PromptSpan(from_frame=0, text=self.prompt)]


class SamplingConfig(_Section):
    steps: int = Field(20, ge=1, le=1000, description="denoising steps",
                       **_limit("the schedulers are defined on 1000 training timesteps"))
    guidance_scale: float = Field(5.0, ge=0.0, le=100.0, description="classifier-free guidance; <= 1 disables it",
                                  **_limit("Wan uses 3 to 6; far larger values overflow the prediction"))
    guidance_scale_2: float | None = Field(None, ge=0.0, le=100.0, description="two-expert models "
                                           "(Wan2.2-T2V-A14B): guidance of the low-noise expert; default: "
                                           "guidance_scale",
                                           **_limit("Wan uses 3 to 6; far larger values overflow the prediction"))
    scheduler: Literal["default", "unipc", "flow_euler", "dpm"] = Field(
        "default", description="default = the checkpoint's scheduler config")
    flow_shift: float | None = Field(None, gt=0.0, le=100.0, description="override the scheduler's flow shift",
                                     **_limit("Wan uses 3 to 12; larger values put every step at pure noise"))
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seeds the noise pool; same seed, same video",
                      **_limit("2**32 - 1; the seed is combined with block numbers into torch's 64-bit "
                               "generator seed"))


class BlocksConfig(_Section):
    block_frames: int = Field(0, ge=0, description="latent frames per block; 0 = whole video as one block")
    context_frames: int = Field(0, ge=0, description="latent frames of context from each neighbour")
    feature_cache: bool = Field(True, description="attend to cached K/V of the newer neighbour's head")
    noise: Literal["coordinated", "independent"] = Field("coordinated", description="initial noise per block")


class ParallelConfig(_Section):
    pipeline: int = Field(1, ge=1, le=MAX_RANKS, description="pipeline stages (parallel.patch ranks each)")
    stage_layers: list[int] | None = Field(None, description="layers per stage, e.g. [3, 5]; default balanced by cost "
                                           "(with decode: pipeline together with the decode pieces)")
    patch: int = Field(1, ge=1, le=MAX_RANKS, description="bands of token rows each block is cut into, one rank "
                       "each per stage; ranks = pipeline x patch")
    patch_mode: Literal["exact", "distrifusion", "pcpp"] = Field(
        "exact", description="exact = every band sees fresh K/V of all bands (the one-rank result); "
        "distrifusion = after warm-up, one-step-stale K/V of all other bands; pcpp = after warm-up, "
        "one-step-stale K/V of only the nearest pcpp_fraction of each adjacent band's rows")
    pcpp_fraction: float = Field(0.3, gt=0.0, le=1.0, description="pcpp: fraction of an adjacent band's rows "
                                 "a band attends to (and receives)")
    warmup_steps: int = Field(4, ge=1, le=1000, description="distrifusion / pcpp: each block's first steps "
                              "exchange fresh K/V synchronously (step 0 has no stale K/V)")
    decode: Literal["rank0", "pipeline"] = Field(
        "rank0", description="rank0 = rank 0 decodes every finished block; pipeline = the VAE decoder's pieces "
        "are cut across decode_ranks, frames flow rank to rank (bit-identical video; docs/decode_parallel.md)")
    decode_ranks: list[int] | None = Field(None, description="decode: pipeline: ranks running decoder pieces, in "
                                           "order, starting with 0; default every rank (at most one per piece)")
    decode_pieces: list[int] | None = Field(None, description="decode: pipeline: decoder pieces per decode rank; "
                                            "default chosen with the layers by weighted FLOPs (run.json "
                                            "parallel.decode shows the split)")
    cfg: int = Field(1, ge=1, le=2, description="2 = classifier-free guidance's conditional and unconditional "
                     "branches on two rank groups (needs sampling.guidance_scale > 1); ranks = cfg x pipeline x "
                     "patch x ring x ulysses")
    ulysses: int = Field(1, ge=1, le=MAX_RANKS, description="sequence parallelism inside a stage: ranks that "
                         "split a window's tokens and swap them for attention heads with an all-to-all (the "
                         "model's heads must divide by it); exact")
    ring: int = Field(1, ge=1, le=MAX_RANKS, description="sequence parallelism inside a stage: ranks that split "
                      "a window's tokens and share K/V over a ring group, attention merged chunk by chunk "
                      "(online softmax, within 1e-5 of one rank in float32)")
    sp_backend: Literal["auto", "torch", "xfuser"] = Field(
        "auto", description="sequence-parallel attention: torch = torch.distributed collectives (gloo or "
        "NCCL); xfuser = xDiT's USP attention (CUDA only, the xdit extra); auto = torch (xfuser is not wired "
        "up yet, see docs/sequence_parallel.md)")


class StepCacheConfig(_Section):
    policy: Literal["off", "teacache", "first_block"] = Field(
        "off", description="reuse a (block, step)'s layer output from its previous step when the input barely "
        "changed: teacache = indicator is the first layer's modulated input (its relative L1 change, "
        "accumulated); first_block = layer 0 always runs and its residual is the indicator; off = exact")
    threshold: float = Field(0.1, ge=0.0, le=10.0, description="error budget: a step is reused while the "
                             "indicator's relative L1 change since the last computed step stays below threshold "
                             "x the schedule's weight; 0 = never reuse (equals off)")
    schedule: Literal["bell", "flat"] = Field("bell", description="the threshold's weight per step: bell = "
                                              "4u(1-u) with u = timestep / num_train_timesteps (most reuse mid-"
                                              "trajectory, none at the ends); flat = 1")
    warmup_steps: int = Field(2, ge=1, le=1000, description="each block's first steps are always computed "
                              "(step 0 has no previous step)")
    cooldown_steps: int = Field(1, ge=0, le=1000, description="each block's last steps are always computed")
    max_consecutive: int = Field(3, ge=1, le=1000, description="at most this many reused steps in a row per "
                                 "block (bounds the drift between computed steps)")

    @field_validator("policy", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` (in a file or a --set) as false; it can only mean the policy.
        return "off" if value is False else value


class CacheConfig(_Section):
    step: StepCacheConfig = Field(default_factory=StepCacheConfig, description="step caching (approximate; "
                                  "run.json reports what it saved)")


class LaunchConfig(_Section):
    launcher: Literal["inline", "local", "torchrun", "ray"] = Field(
        "inline", description="inline = this process; local = spawn launch.nproc workers here; "
        "ray = one Ray actor per rank")
    nproc: int = Field(1, ge=1, le=MAX_RANKS, description="workers (ranks) for the local and ray launchers")
    threads_per_rank: int = Field(1, ge=1, le=1024, description="torch CPU threads per worker")
    timeout_s: float = Field(300.0, gt=0, le=MAX_TIMEOUT_S, description="a rank waiting longer than this fails "
                             "the run", **_limit("one day; no single wait in a run is legitimately longer"))
    ray_address: str = Field("auto", description="auto = the running cluster (RAY_ADDRESS or a local head), "
                             "else start a local Ray instance; local = always a private local instance; "
                             "HOST:PORT or ray://HOST:PORT = that cluster")
    ray_connect_timeout_s: float = Field(5.0, gt=0, le=3600.0, description="how long the pre-flight check "
                                         "waits for the Ray address to answer")
    ray_num_cpus: int | None = Field(None, ge=1, le=1 << 16, description="CPUs of a local Ray instance "
                                     "started here (default: all cores)")
    ray_temp_dir: str | None = Field(None, description="temp dir of a local Ray instance started here "
                                     "(default: a fresh one, removed afterwards)")
    ray_cpus_per_rank: float = Field(1.0, ge=0, le=1024.0, description="CPUs each rank's actor reserves (0 "
                                     "in tests on small machines)")
    resources: dict[str, float] = Field(default_factory=dict, description="extra Ray resources each rank's "
                                        "actor reserves, e.g. {my_gpu_pool: 1}")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Ray placement group strategy for the ranks' bundles")

    _temp_dir_path = field_validator("ray_temp_dir")(_path_like)

    @field_validator("ray_address")
    @classmethod
    def _ray_address_form(cls, value: str) -> str:
        from paravideo.launch.ray_address import parse_ray_address

        parse_ray_address(value)
        return value

    @field_validator("resources")
    @classmethod
    def _resources_named(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if name in ("CPU", "GPU"):
                raise ValueError(f"{name!r} cannot be set here: CPUs come from launch.ray_cpus_per_rank, "
                                 "GPUs from model.device (one per rank with cuda)")
            if amount < 0:
                raise ValueError(f"{name!r}: {amount} must be >= 0")
        return value


class OutputConfig(_Section):
    dir: str = Field("outputs/run", description="folder for video.mp4 and run.json")
    overwrite: bool = Field(False, description="allow writing into a folder holding an earlier run")
    frames_png: bool = Field(False, description="also write every frame as PNG under frames/")
    progress: bool = Field(True, description="show a progress bar")
    background_decode: bool = Field(True, description="decode and write finished blocks on a helper thread, "
                                    "overlapping the denoising (same frames either way)")
    save_latents: bool = Field(False, description="also save the clean latents as latents.pt (debugging; "
                               "memory grows with length)")
    checkpoint_every: int = Field(0, ge=0, description="write a resume checkpoint every K iterations (0 = never)")
    resume: bool = Field(False, description="continue the checkpointed run in output.dir "
                         "(`paravideo generate --resume DIR` sets this)")
    trace: bool = Field(False, description="also write trace.json (Chrome/Perfetto), one track per rank")
    fetch_to_driver: bool = Field(False, description="ray: copy video.mp4 and run.json to output.dir on the "
                                  "driver when rank 0 ran on another machine")

    _dir_path = field_validator("dir")(_path_like)


class RunConfig(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    video: VideoConfig
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    blocks: BlocksConfig = Field(default_factory=BlocksConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    launch: LaunchConfig = Field(default_factory=LaunchConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    # Checks that need the model's factors (frame and size multiples, latent frames, token rows, experts)
    # run at preflight: paravideo.models.checks.check_against_model.
    @model_validator(mode="after")
    def _blocks_fit(self) -> RunConfig:
        block, ctx = self.blocks.block_frames, self.blocks.context_frames
        if ctx and not block:
            raise ValueError("blocks.context_frames needs blocks.block_frames > 0 (one block has no neighbours)")
        if ctx > block:
            raise ValueError(f"blocks.context_frames = {ctx} must not exceed blocks.block_frames = {block}")
        return self

    @model_validator(mode="after")
    def _bands_fit(self) -> RunConfig:
        par = self.parallel
        if par.patch > 1 and par.patch_mode != "exact" and par.warmup_steps > self.sampling.steps:
            raise ValueError(f"parallel.warmup_steps = {par.warmup_steps} exceeds sampling.steps = "
                             f"{self.sampling.steps}; use at most {self.sampling.steps} (equal to steps makes "
                             f"{par.patch_mode} exact)")
        if par.patch > 1 and par.patch_mode != "exact" and self.output.checkpoint_every:
            # Checkpoints hold the queue (every band's rows), not the one-step-stale K/V of every band and layer.
            raise ValueError(f"output.checkpoint_every is not supported with parallel.patch_mode = {par.patch_mode!r} "
                             "(its one-step-stale K/V of every band and layer outlive an iteration and are not "
                             "checkpointed); set parallel.patch_mode: exact or output.checkpoint_every: 0")
        return self

    @model_validator(mode="after")
    def _step_cache_fits(self) -> RunConfig:
        from paravideo.cache.step_policy import check_step_cache

        check_step_cache(self)
        return self

    @model_validator(mode="after")
    def _decode_fits(self) -> RunConfig:
        par = self.parallel
        if par.decode == "rank0" and (par.decode_ranks is not None or par.decode_pieces is not None):
            raise ValueError("parallel.decode_ranks / decode_pieces apply to parallel.decode: pipeline; set it, "
                             "or drop them")
        if par.decode == "pipeline" and par.pipeline * par.patch * par.cfg * par.ulysses * par.ring < 2:
            raise ValueError("parallel.decode: pipeline spreads the decode over ranks, but this run has one rank "
                             "(parallel.cfg x pipeline x patch x ring x ulysses = 1); use parallel.decode: rank0")
        return self

    @model_validator(mode="after")
    def _new_axes_fit(self) -> RunConfig:
        par = self.parallel
        seq = par.ulysses * par.ring
        if par.cfg > 1 and self.sampling.guidance_scale <= 1.0:
            raise ValueError(f"parallel.cfg = {par.cfg} splits classifier-free guidance's two branches, but "
                             f"sampling.guidance_scale = {self.sampling.guidance_scale} turns guidance off (one "
                             "branch); set parallel.cfg: 1 or guidance_scale > 1")
        if par.patch > 1 and (seq > 1 or par.cfg > 1):
            raise ValueError(f"parallel.patch = {par.patch} cannot be combined with parallel.ulysses / ring / cfg "
                             "yet (bands and sequence chunks both split a stage's tokens); use one of them")
        if par.sp_backend == "xfuser" and seq > 1 and self.model.device == "cpu":
            raise ValueError("parallel.sp_backend 'xfuser' needs CUDA (xfuser cannot even be imported without a "
                             "GPU), but model.device is 'cpu'; use parallel.sp_backend: torch or auto")
        return self

    @model_validator(mode="after")
    def _guidance_2_used(self) -> RunConfig:
        if self.sampling.guidance_scale_2 is not None and self.sampling.guidance_scale <= 1.0:
            raise ValueError(f"sampling.guidance_scale_2 = {self.sampling.guidance_scale_2} has no effect: "
                             f"sampling.guidance_scale = {self.sampling.guidance_scale} turns guidance off for both "
                             "experts (as in WanPipeline); set guidance_scale > 1 or drop guidance_scale_2")
        return self

    def resolved(self) -> dict[str, Any]:
        """The config as plain data, defaults filled in."""
        return self.model_dump(mode="json")


def _section_keys(loc: tuple) -> list[str]:
    """The keys valid beside the last element of `loc` (empty where that is not a config section)."""
    section: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        field = section.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        section = field.annotation
    return list(section.model_fields)


def _unknown_key(loc: tuple) -> str:
    keys = _section_keys(loc)
    if not keys:
        return "unknown key (check the spelling; `paravideo validate` lists the resolved config)"
    close = difflib.get_close_matches(str(loc[-1]), keys, n=1)
    return ("unknown key" + (f"; did you mean {close[0]!r}?" if close else "") + f" (valid keys here: {', '.join(keys)})")


def _limit_reason(loc: tuple) -> str:
    """The `_limit` reason of the field at `loc`, or ''."""
    section: type[BaseModel] = RunConfig
    for part in loc:
        field = section.model_fields.get(str(part))
        if field is None:
            return ""
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            section = field.annotation
    extra = field.json_schema_extra if field is not None else None
    return extra.get("limit_reason", "") if isinstance(extra, dict) else ""


def _shown(value: Any) -> str:
    # reprlib, not repr: a value built by the caller may share sub-lists, and repr would expand every share.
    short = reprlib.Repr()
    short.maxstring = short.maxother = short.maxlong = 60
    short.maxlevel, short.maxlist, short.maxdict = 2, 4, 4
    return short.repr(value)


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for item in err.errors():
        # Cross-field checks have no location of their own; their messages name the fields.
        field = ".".join(str(p) for p in item["loc"])
        msg = item["msg"].removeprefix("Value error, ")
        kind = item["type"]
        if kind == "extra_forbidden":
            msg = _unknown_key(item["loc"])
        elif kind == "missing":
            msg = "required field is missing"
        elif kind == "finite_number":
            msg = "must be a finite number (.inf and .nan are not allowed)"
        elif kind in ("less_than_equal", "less_than") and (why := _limit_reason(item["loc"])):
            msg += f" ({why})"
        shown = kind.endswith("_type") or kind in ("finite_number", "less_than_equal", "less_than")
        lines.append(f"  {field + ': ' if field else ''}{msg}" + (f" (got {_shown(item['input'])})" if shown else ""))
    return "\n".join(lines)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set sampling.steps=10")
    key, raw = item.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: malformed key {key!r}")
    try:
        value = parse_yaml(raw) if raw else ""
    except RefusedYAML as err:
        raise ConfigError(f"--set {item!r}: {err}; to pass it as text, quote it: --set 'KEY=\"...\"'") from None
    except yaml.YAMLError:
        value = raw  # not YAML at all: take the text as given (e.g. a prompt with a colon)
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted KEY=VALUE overrides (values parsed as YAML scalars) to raw config data."""
    for item in overrides:
        path, value = _parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


def parse_config(data: Any, *, source: str = "(dict)") -> RunConfig:
    """Validate raw config data into a RunConfig, raising ConfigError naming each bad field."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {source}: the top level must be a mapping of sections, "
                          f"got {type(data).__name__}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config file (bounded safe loader), apply overrides, validate."""
    path = Path(path)
    data = load_yaml_file(path)
    data = {} if data is None else data
    if isinstance(data, dict):
        data = apply_overrides(data, overrides or [])
    return parse_config(data, source=str(path))
