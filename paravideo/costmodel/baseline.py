"""A sequence-parallel baseline (Ulysses-style, as in xDiT/USP) on the same profile, for comparisons.

The whole video is one sequence; each of N GPUs holds all weights and 1/N of the tokens, and
every layer's self-attention re-shards by heads with four all-to-alls (q, k, v in; output back).
Nothing streams: the video is decoded after the last step. Same FLOP counts as the engine's model.
"""

from __future__ import annotations

from dataclasses import dataclass

from paravideo.costmodel.cost_model import forward_dit_flops, startup_seconds
from paravideo.costmodel.costs import video_decode_seconds
from paravideo.costmodel.flops import condition_flops
from paravideo.costmodel.memory import FP32, GIB
from paravideo.costmodel.profiles import HardwareProfile
from paravideo.costmodel.scenario import DecodeShape, Scenario
from paravideo.costmodel.shapes import stage_param_bytes

ALL_TO_ALLS_PER_LAYER = 4


@dataclass
class BaselinePrediction:
    """Wall time, first frame (= wall: nothing streams), memory and traffic per GPU."""

    gpus: int
    wall_s: float
    denoise_s: float
    decode_s: float
    peak_memory_bytes: int
    sent_bytes_per_gpu: int

    def to_json(self) -> dict:
        return {"gpus": self.gpus, "wall_s": self.wall_s, "time_to_first_frame_s": self.wall_s,
                "denoise_s": self.denoise_s, "decode_s": self.decode_s, "peak_memory_gib": self.peak_memory_bytes / GIB,
                "sent_gib_per_gpu": self.sent_bytes_per_gpu / GIB}


def _activations(s: Scenario, gpus: int) -> int:
    """A layer's working set with 1/N of the tokens, plus full-sequence q/k/v for 1/N of the heads."""
    d, f, nbytes, b = s.shape.dim, s.shape.ffn_dim, s.dtype_bytes, s.batch
    local = s.latent_frames * s.tokens_per_frame // gpus
    ffn = b * local * (3 * d + 2 * f) * nbytes
    attention = b * local * 3 * d * nbytes + 3 * b * local * gpus * (d // gpus) * nbytes
    return max(ffn, attention) + 2 * b * s.text_tokens * d * nbytes


def sequence_parallel(s: Scenario, gpus: int, profile: HardwareProfile, decode: DecodeShape) -> BaselinePrediction:
    """Predict the baseline for the video of `s` (its block plan is ignored: one sequence) on `gpus` GPUs."""
    whole = s.but(block_frames=0, context_frames=0, pipeline=1)
    (step_flops,) = set(forward_dit_flops(whole))  # one forward per step, all identical
    tokens = whole.latent_frames * whole.tokens_per_frame
    shard = whole.batch * tokens * whole.shape.dim * whole.dtype_bytes // gpus  # one tensor, one GPU's share
    per_layer_bytes = ALL_TO_ALLS_PER_LAYER * shard * (gpus - 1) // gpus
    layers = whole.shape.num_layers
    comm_s = layers * (per_layer_bytes / (profile.link_gbps * 1e9)
                       + ALL_TO_ALLS_PER_LAYER * (gpus - 1) * profile.link_latency_s) if gpus > 1 else 0.0
    compute_s = (step_flops - condition_flops(whole.shape, whole.batch)) / (gpus * profile.dit_flops_per_s)
    step_s = compute_s + layers * profile.layer_overhead_s + 3 * profile.call_overhead_s + comm_s
    denoise = whole.steps * (step_s + profile.scheduler_step_s)
    pixels = whole.latent_height * whole.latent_width * 64 / 1e6
    decode_s = (video_decode_seconds(whole, profile, decode) + profile.video_open_s
                + whole.output_frames * (profile.write_frame_s + pixels * profile.write_s_per_mpixel))
    weights = stage_param_bytes(whole.shape, layers, whole.dtype_bytes)
    loop = _activations(whole, gpus) + 2 * whole.shape.out_channels * tokens * 4 * FP32 // gpus
    peak = int(profile.runtime_base_gib * GIB) + weights + max((whole.shape.text_encoder_params or 0) * FP32,
                                                               loop + decode.params * FP32)
    wall = startup_seconds(whole, profile, decode) + denoise + decode_s + profile.finish_s
    return BaselinePrediction(gpus=gpus, wall_s=wall, denoise_s=denoise, decode_s=decode_s, peak_memory_bytes=peak,
                              sent_bytes_per_gpu=whole.steps * layers * per_layer_bytes)
