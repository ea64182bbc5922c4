"""What a model family declares about a checkpoint: strides, channels, patch, experts, timestep form.

Core code (config checks, noise, geometry, decode, the cost model) asks these factors instead of
hard-coding one model's numbers; a model family's adapter reads them off the folder's configs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from paravideo.errors import ConfigError

TimestepForm = Literal["per_video", "per_token"]


def latent_frames(num_frames: int, time_stride: int) -> int:
    """Latent frames of a video of `num_frames` output frames (the first frame stands alone)."""
    return (num_frames - 1) // time_stride + 1


def dit_layer_flops(*, dim: int, ffn_dim: int, batch: int, query_tokens: int, key_tokens: int,
                    text_tokens: int) -> int:
    """FLOPs of one Wan-style DiT layer's forward (matmuls and attention; elementwise ops not counted)."""
    mm = lambda m, k, n: 2 * m * k * n  # noqa: E731 - a multiply and an add per term
    q = batch * query_tokens
    return (4 * mm(q, dim, dim)  # self-attention q, k, v, out
            + 2 * mm(q, dim, key_tokens)  # QK^T and AV over all heads
            + 2 * mm(q, dim, dim)  # cross-attention q, out
            + 2 * mm(batch * text_tokens, dim, dim)  # text K/V, projected again in every forward
            + 2 * mm(q, dim, text_tokens)
            + mm(q, dim, ffn_dim) + mm(q, ffn_dim, dim))


def first_output_frame(latent: int, time_stride: int) -> int:
    """First output frame decoded from latent frame `latent`."""
    return 0 if latent == 0 else time_stride * (latent - 1) + 1


@dataclass(frozen=True)
class ModelFactors:
    """The factors of one model folder that decide shapes, valid sizes and which expert runs when."""

    family: str  # the adapter that reads and runs the folder ("wan")
    pipeline_class: str  # model_index.json's _class_name
    latent_channels: int
    time_stride: int  # VAE: output frames per latent frame after the first
    spatial_stride: int  # VAE: pixels per latent pixel, each way
    patch_size: tuple[int, int, int]  # DiT: latent (frames, rows, cols) per token
    num_layers: int
    text_dim: int
    dim: int
    num_heads: int
    # Component folders of the experts, the high-noise one first; one entry for a single model.
    experts: tuple[str, ...] = ("transformer",)
    # Expert 0 runs while t >= boundary_ratio x num_train_timesteps, expert 1 below (None: one expert).
    boundary_ratio: float | None = None
    num_train_timesteps: int = 1000
    timestep_form: TimestepForm = "per_video"
    transformer_config: dict = field(default_factory=dict, compare=False, repr=False)
    vae_config: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def size_multiple(self) -> tuple[int, int]:
        """Pixels that height and width must be multiples of (VAE stride x DiT patch)."""
        return self.spatial_stride * self.patch_size[1], self.spatial_stride * self.patch_size[2]

    @property
    def boundary_timestep(self) -> float | None:
        """The timestep at which the low-noise expert takes over (None with one expert)."""
        return None if self.boundary_ratio is None else self.boundary_ratio * self.num_train_timesteps

    def expert_for(self, timestep: float) -> int:
        """Index of the expert that denoises at `timestep` (WanPipeline's rule: t >= boundary -> expert 0)."""
        boundary = self.boundary_timestep
        return 0 if boundary is None or timestep >= boundary else 1

    def layer_flops(self, *, batch: int, query_tokens: int, key_tokens: int, text_tokens: int) -> int:
        """FLOPs of one transformer layer's forward over a window (`dit_layer_flops` with this model's sizes)."""
        return dit_layer_flops(dim=self.dim, ffn_dim=self.transformer_config["ffn_dim"], batch=batch,
                               query_tokens=query_tokens, key_tokens=key_tokens, text_tokens=text_tokens)

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames of a video of `num_frames` output frames (the first frame stands alone)."""
        return latent_frames(num_frames, self.time_stride)

    def summary(self) -> dict:
        """The factors as plain data, for run.json and `validate`."""
        return {"family": self.family, "experts": list(self.experts), "boundary_ratio": self.boundary_ratio,
                "latent_channels": self.latent_channels, "time_stride": self.time_stride,
                "spatial_stride": self.spatial_stride, "patch_size": list(self.patch_size),
                "timestep_form": self.timestep_form}

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """Latent (rows, cols) of a frame of `height` x `width` pixels."""
        return height // self.spatial_stride, width // self.spatial_stride

    def token_rows(self, height: int) -> int:
        """Token rows of a frame `height` pixels tall."""
        return height // self.size_multiple[0]

    def check_video(self, num_frames: int, height: int, width: int) -> None:
        """Raise ConfigError naming the field and this model's factor when a size does not fit the model."""
        problems = []
        stride = self.time_stride
        if (num_frames - 1) % stride:
            lower = (num_frames - 1) // stride * stride + 1
            problems.append(f"video.num_frames: must be of the form {stride}k+1 (this model's VAE compresses time "
                            f"{stride}x); nearest valid values: {lower} or {lower + stride}")
        for name, value, multiple in (("height", height, self.size_multiple[0]),
                                      ("width", width, self.size_multiple[1])):
            if value % multiple:
                lower = value // multiple * multiple
                problems.append(f"video.{name}: must be a multiple of {multiple} (this model's VAE compresses "
                                f"{self.spatial_stride}x, its DiT patches {multiple // self.spatial_stride}x); "
                                f"nearest valid values: {lower or multiple} or {lower + multiple}")
        if problems:
            raise ConfigError("invalid config for model " + self.pipeline_class + ":\n  " + "\n  ".join(problems))
