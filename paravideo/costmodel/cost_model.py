"""The cost model: FLOPs from shapes, the plan's static schedule replayed on a hardware profile.

predict(scenario, profile) gives wall time, time to first frame, per-rank memory, bubble and
traffic. Only the profile is hardware-specific; everything else follows from the shapes and
from `make_plan`, the same plan the engine runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from paravideo.costmodel.costs import forward_dit_flops, schedule_costs, startup_seconds
from paravideo.costmodel.memory import MemoryBreakdown, memory_by_rank
from paravideo.costmodel.profiles import HardwareProfile
from paravideo.costmodel.scenario import DecodeShape, Scenario
from paravideo.costmodel.simulate import Replay, replay
from paravideo.costmodel.traffic import traffic_by_rank

__all__ = ["Prediction", "RankPrediction", "forward_dit_flops", "predict", "startup_seconds"]


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


@dataclass(frozen=True)
class Slowdown:
    """CPU time-sharing factors: how much longer the forwards and the decode take than on a free core."""

    busy: float = 1.0
    io: float = 1.0


def _slowdown(s: Scenario, profile: HardwareProfile, timeline: Replay) -> Slowdown:
    """CPU time-sharing: while more threads compute than there are cores, each piece of work stretches.

    A GPU profile leaves compute_slots unset. Idle ranks block in a wait and take no core. Each stage's
    timeline stands for its bands, CFG groups and sequence chunks (they compute side by side), but only
    one of them decodes; the replay's spans say which work overlaps, so forwards that share the cores
    with every other rank's are stretched more than a decode that runs alone at the end of the video.
    """
    if not profile.compute_slots or not timeline.loop_s:
        return Slowdown()
    events: list[tuple[float, float, float]] = []  # (time, change of busy threads, change of io threads)
    for r in timeline.ranks:
        for _, kind, start, end in r.spans:
            if end <= start or kind not in ("busy", "io"):
                continue
            width = s.patch * s.replicas * s.threads_per_rank if kind == "busy" else s.threads_per_rank
            busy, io = (width, 0.0) if kind == "busy" else (0.0, width)
            events += [(start, busy, io), (end, -busy, -io)]
    events.sort()
    weighted = {"busy": 0.0, "io": 0.0}
    total = {"busy": 0.0, "io": 0.0}
    busy = io = 0.0
    for (t, d_busy, d_io), (t_next, _, _) in zip(events, events[1:]):
        busy, io = busy + d_busy, io + d_io
        length = t_next - t
        stretch = max(1.0, (busy + io) / profile.compute_slots)
        for kind, width in (("busy", busy), ("io", io)):
            total[kind] += width * length
            weighted[kind] += width * length * stretch
    factor = {k: weighted[k] / total[k] if total[k] > 1e-12 else 1.0 for k in total}
    return Slowdown(busy=factor["busy"], io=factor["io"])


def predict(s: Scenario, profile: HardwareProfile, decode: DecodeShape | None = None) -> Prediction:
    """Predict the run of scenario `s` on `profile` (pass `decode` to reuse a counted VAE)."""
    decode = decode if decode is not None else DecodeShape.of(s)
    timeline: Replay = replay(s.plan, schedule_costs(s, profile, decode), stages=s.pipeline)
    slow = _slowdown(s, profile, timeline)
    if slow.busy > 1.0 or slow.io > 1.0:
        timeline = replay(s.plan, schedule_costs(s, profile, decode, slow.busy, decode_slow=slow.io),
                          stages=s.pipeline)
    traffic = traffic_by_rank(s.traffic)
    memory = memory_by_rank(s, profile, decode)
    startup = startup_seconds(s, profile, decode)
    decoders = decode.shares(s)
    # Bands, CFG groups and sequence chunks of a stage run the same schedule: each takes its stage's timeline.
    stage_of = [s.layout.stage_of(r) for r in range(s.world_size)]
    ranks = [RankPrediction(rank=r, layers=s.ranges[stage_of[r]], memory=memory[r],
                            busy_s=timeline.ranks[stage_of[r]].busy_s, idle_s=timeline.ranks[stage_of[r]].idle_s,
                            io_s=timeline.ranks[stage_of[r]].io_s if r in decoders else 0.0,
                            bytes_by_kind=traffic.get(r, {}))
             for r in range(s.world_size)]
    return Prediction(profile=profile.name, wall_s=startup + timeline.loop_s + profile.finish_s,
                      first_frame_s=startup + timeline.first_frame_s, startup_s=startup, loop_s=timeline.loop_s,
                      dit_flops=sum(forward_dit_flops(s)), ranks=ranks)
