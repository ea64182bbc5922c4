"""Hardware profiles for the cost model: YAML files under configs/profiles/, loaded strictly."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from paravideo.config_yaml import load_yaml_file
from paravideo.errors import ConfigError

PROFILE_DIR = Path(__file__).resolve().parents[2] / "configs" / "profiles"


class HardwareProfile(BaseModel):
    """One device kind and its links; times are per call, rates are what the code achieves."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(description="profile name (the file's stem)")
    description: str = Field(description="the hardware in words")
    device: Literal["cuda", "cpu"] = Field("cuda", description="where paravideo runs on it (the text encoder runs "
                                           "in float32 on cpu, in the model dtype on cuda)")
    source: str = Field(description="where the numbers come from: datasheet + assumption, or a calibration run")
    dit_peak_tflops: float = Field(gt=0, description="peak dense TFLOP/s at the DiT's compute dtype")
    dit_efficiency: float = Field(gt=0, le=1, description="fraction of that peak the DiT's matmuls/attention reach")
    attention_tflops: float | None = Field(None, gt=0, description="achieved TFLOP/s of the attention products "
                                           "(QK^T, AV: a fused kernel, faster per FLOP than the projections on "
                                           "CPU); None: the DiT rate")
    vae_peak_tflops: float = Field(gt=0, description="peak TFLOP/s for the float32 VAE (TF32 on NVIDIA)")
    vae_efficiency: float = Field(gt=0, le=1, description="fraction of that peak the VAE decoder reaches")
    layer_overhead_s: float = Field(ge=0, description="fixed seconds per transformer layer call (launch, Python)")
    call_overhead_s: float = Field(ge=0, description="fixed seconds per embed / conditioning / head call")
    scheduler_step_s: float = Field(ge=0, description="seconds per scheduler step on rank 0")
    decode_frame_overhead_s: float = Field(ge=0, description="fixed seconds per latent frame decoded")
    vae_op_overhead_s: float = Field(0.0, ge=0, description="fixed seconds per tensor op of the VAE decoder "
                                     "(dispatch, allocation; counted only with the bandwidth terms)")
    vae_cache_gbps: float | None = Field(None, gt=0, description="GB/s of the decoder's memory traffic (inputs, "
                                         "outputs, unfolded conv inputs) while an op's working set fits the "
                                         "last-level cache (None: the decode is priced by FLOPs alone)")
    vae_dram_gbps: float | None = Field(None, gt=0, description="GB/s of that traffic once an op's working set "
                                        "outgrows the last-level cache")
    llc_bytes: int | None = Field(None, gt=0, description="last-level cache bytes (the working-set threshold)")
    video_open_s: float = Field(ge=0, description="seconds to start the mp4 encoder (at the first block written)")
    write_frame_s: float = Field(ge=0, description="fixed seconds to hand one output frame to ffmpeg")
    write_s_per_mpixel: float = Field(ge=0, description="seconds to hand one megapixel of output frames to ffmpeg")
    link_gbps: float = Field(gt=0, description="achieved point-to-point GB/s between neighbouring ranks")
    link_latency_s: float = Field(ge=0, description="fixed seconds per message on the wire")
    wait_overhead_s: float = Field(0.0, ge=0, description="seconds one wait call costs even when the message is "
                                   "there (gloo waits run in a helper thread)")
    memory_gib: float = Field(gt=0, description="device memory per GPU (or RAM share per CPU rank)")
    runtime_base_gib: float = Field(ge=0, description="memory a rank holds before any model (CUDA context / RSS)")
    startup_s: float = Field(ge=0, description="fixed seconds from worker start to the first forward")
    load_gbps: float = Field(gt=0, description="GB/s at which weights are read and placed")
    finish_s: float = Field(ge=0, description="seconds after the last forward (closing the video, statistics)")
    attention_scores_in_memory: bool = Field(False, description="attention materialises scores (no flash kernel)")
    compute_slots: int | None = Field(None, ge=1, description="CPU cores: ranks beyond this share them")

    @property
    def dit_flops_per_s(self) -> float:
        return self.dit_peak_tflops * self.dit_efficiency * 1e12

    @property
    def attention_flops_per_s(self) -> float:
        return self.attention_tflops * 1e12 if self.attention_tflops else self.dit_flops_per_s

    @property
    def vae_flops_per_s(self) -> float:
        return self.vae_peak_tflops * self.vae_efficiency * 1e12

    def message_s(self, nbytes: int) -> float:
        """Seconds to move one message of `nbytes` between two ranks."""
        return self.link_latency_s + nbytes / (self.link_gbps * 1e9)


def available_profiles() -> list[str]:
    """Names of the profiles shipped in configs/profiles/."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load_profile(name_or_path: str) -> HardwareProfile:
    """A shipped profile by name, or a profile YAML file by path."""
    path = Path(name_or_path)
    if not path.is_file():
        path = PROFILE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown hardware profile {name_or_path!r}; use a YAML file or one of "
                          + ", ".join(available_profiles()))
    try:
        return HardwareProfile.model_validate(load_yaml_file(path))
    except ValidationError as err:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"invalid hardware profile {path}: {fields}") from None


def save_profile(profile: HardwareProfile, path: Path) -> None:
    """Write a profile as YAML (the calibration command's output)."""
    path.write_text(yaml.safe_dump(profile.model_dump(), sort_keys=False, width=110))
