"""The cost model: FLOPs from shapes, the plan's static schedule replayed on a hardware profile.

predict(scenario, profile) gives wall time, time to first frame, per-rank memory, bubble and
traffic. Only the profile is hardware-specific; everything else follows from the shapes and
from `make_plan`, the same plan the engine runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from paravideo.report.flops import (condition_flops, embed_flops, head_flops, layer_flops, text_projection_flops,
                                    window)
from paravideo.report.memory import MemoryBreakdown, memory_by_rank
from paravideo.report.profiles import HardwareProfile
from paravideo.report.scenario import DecodeShape, Scenario
from paravideo.report.shapes import stage_param_bytes
from paravideo.report.simulate import Replay, ScheduleCosts, replay
from paravideo.report.traffic import traffic_by_rank

MEGA = 1e6


@dataclass
class RankPrediction:
    """One rank: its layers, memory, time split and bytes sent."""

    rank: int
    layers: tuple[int, int]
    memory: MemoryBreakdown
    busy_s: float
    idle_s: float
    io_s: float
    bytes_by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def idle_fraction(self) -> float:
        total = self.busy_s + self.idle_s + self.io_s
        return self.idle_s / total if total else 0.0

    def to_json(self) -> dict:
        return {"rank": self.rank, "layers": list(self.layers), "memory": self.memory.to_json(),
                "peak_memory_bytes": self.memory.peak, "busy_s": self.busy_s, "idle_s": self.idle_s,
                "io_s": self.io_s, "idle_fraction": self.idle_fraction, "bytes_by_kind": self.bytes_by_kind,
                "bytes_sent": sum(self.bytes_by_kind.values())}


@dataclass
class Prediction:
    """What the model expects of a run."""

    profile: str
    wall_s: float
    first_frame_s: float
    startup_s: float
    loop_s: float
    dit_flops: int
    ranks: list[RankPrediction]

    @property
    def bubble(self) -> float:
        """Share of the stage-seconds of the loop in which a rank waited instead of working."""
        return 1.0 - sum(r.busy_s + r.io_s for r in self.ranks) / (len(self.ranks) * self.loop_s)

    @property
    def bytes_sent(self) -> int:
        return sum(sum(r.bytes_by_kind.values()) for r in self.ranks)

    @property
    def max_peak_memory(self) -> int:
        return max(r.memory.peak for r in self.ranks)

    def to_json(self) -> dict:
        return {"profile": self.profile, "wall_s": self.wall_s, "time_to_first_frame_s": self.first_frame_s,
                "startup_s": self.startup_s, "loop_s": self.loop_s, "bubble": self.bubble,
                "dit_flops": self.dit_flops, "bytes_sent": self.bytes_sent,
                "max_peak_memory_bytes": self.max_peak_memory, "ranks": [r.to_json() for r in self.ranks]}


def forward_dit_flops(s: Scenario) -> list[int]:
    """FLOPs of each block-forward through the whole DiT (embed, conditioning, every layer, head)."""
    out = []
    for fwd in s.plan.forwards:
        w = window(s.plan, fwd, tokens_per_frame=s.tokens_per_frame, batch=s.batch, text_tokens=s.text_tokens)
        out.append(s.shape.num_layers * sum(layer_flops(s.shape, w).values()) + condition_flops(s.shape, s.batch)
                   + embed_flops(s.shape, w.query_tokens) + head_flops(s.shape, s.batch, w.query_tokens))
    return out


def _contention(s: Scenario, profile: HardwareProfile) -> float:
    # On a CPU, ranks beyond the cores time-share them; a GPU profile leaves compute_slots unset.
    slots = profile.compute_slots
    return max(1.0, s.world_size * s.threads_per_rank / slots) if slots else 1.0


def schedule_costs(s: Scenario, profile: HardwareProfile, decode: DecodeShape) -> ScheduleCosts:
    """Seconds of every piece of work and message of the scenario on `profile`."""
    slow = _contention(s, profile)
    rate = profile.dit_flops_per_s / slow
    call = profile.call_overhead_s * slow
    layers_s: list[list[float]] = [[] for _ in s.ranges]
    embed_s, head_s = [], []
    cond_s = call + condition_flops(s.shape, s.batch) / rate
    for fwd in s.plan.forwards:
        w = window(s.plan, fwd, tokens_per_frame=s.tokens_per_frame, batch=s.batch, text_tokens=s.text_tokens)
        one_layer = profile.layer_overhead_s * slow + sum(layer_flops(s.shape, w).values()) / rate
        for stage, (lo, hi) in enumerate(s.ranges):
            layers_s[stage].append(cond_s + (hi - lo) * one_layer)
        embed_s.append(call + embed_flops(s.shape, w.query_tokens) / rate)
        head_s.append(call + head_flops(s.shape, s.batch, w.query_tokens) / rate)
    pixels = s.latent_height * s.latent_width * 64 / MEGA  # megapixels per output frame (VAE 8x8)
    write_frame_s = profile.write_frame_s + pixels * profile.write_s_per_mpixel
    block_out = [(b.frames * profile.decode_frame_overhead_s + decode.block_flops(s, b.index)
                  / profile.vae_flops_per_s) * slow + s.block_output_frames(b.index) * write_frame_s
                 for b in s.plan.blocks]
    block_out[0] += profile.video_open_s
    layout = s.traffic_layout()
    seqs = range(len(s.plan.forwards))
    return ScheduleCosts(layers_s=layers_s, embed_s=embed_s, head_s=head_s,
                         scheduler_step_s=profile.scheduler_step_s * slow, block_out_s=block_out,
                         hidden_msg_s=[profile.message_s(layout.hidden_bytes(q)) for q in seqs],
                         prediction_msg_s=[profile.message_s(layout.prediction_bytes(q)) for q in seqs])


def startup_seconds(s: Scenario, profile: HardwareProfile, decode: DecodeShape) -> float:
    """Fixed start-up plus reading rank 0's share (its stage, the float32 text encoder and VAE)."""
    lo, hi = s.ranges[0]
    nbytes = stage_param_bytes(s.shape, hi - lo, s.dtype_bytes) + 4 * ((s.shape.text_encoder_params or 0)
                                                                       + decode.params)
    text = text_projection_flops(s.shape, s.prompts + int(s.cfg), s.text_tokens) / profile.dit_flops_per_s
    return profile.startup_s + nbytes / (profile.load_gbps * 1e9) + text


def predict(s: Scenario, profile: HardwareProfile, decode: DecodeShape | None = None) -> Prediction:
    """Predict the run of scenario `s` on `profile` (pass `decode` to reuse a counted VAE)."""
    decode = decode if decode is not None else DecodeShape.of(s)
    timeline: Replay = replay(s.plan, schedule_costs(s, profile, decode), stages=s.pipeline)
    traffic = traffic_by_rank(s.traffic_layout())
    memory = memory_by_rank(s, profile, decode)
    startup = startup_seconds(s, profile, decode)
    ranks = [RankPrediction(rank=r, layers=s.ranges[r], memory=memory[r], busy_s=t.busy_s, idle_s=t.idle_s,
                            io_s=t.io_s, bytes_by_kind=traffic.get(r, {}))
             for r, t in enumerate(timeline.ranks)]
    return Prediction(profile=profile.name, wall_s=startup + timeline.loop_s + profile.finish_s,
                      first_frame_s=startup + timeline.first_frame_s, startup_s=startup, loop_s=timeline.loop_s,
                      dit_flops=sum(forward_dit_flops(s)), ranks=ranks)
