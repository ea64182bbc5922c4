"""Replay the engine's static schedule on a clock: when each rank computes, waits, sends and decodes.

The replay follows the code path by path (stage_runner.py, comm.py): rank 0 applies predictions
in plan order before a forward needs them, posts the receive of the forward's prediction, embeds,
runs its layers and sends; a later stage posts the next receive as soon as one arrives; a send
moves once both sides are posted; at most MAX_SENDS_IN_FLIGHT sends are outstanding per rank.
Because every rank follows the plan order, one pass over the forwards in order settles all times.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from paravideo.parallel.comm import MAX_SENDS_IN_FLIGHT
from paravideo.schedule.plan import BlockPlan


@dataclass
class ScheduleCosts:
    """Seconds of every piece of work and message the replay places (indexed by forward seq)."""

    layers_s: list[list[float]]  # [stage][seq]: conditioning + the stage's layers (the "block" span)
    embed_s: list[float]  # rank 0, per forward
    head_s: list[float]  # last stage, per forward
    scheduler_step_s: float  # rank 0, per forward
    block_out_s: list[float]  # rank 0, per block: decode + write when it leaves the queue
    hidden_msg_s: list[float]  # one stage boundary, per forward
    prediction_msg_s: list[float]  # last stage to rank 0, per forward
    wait_s: float = 0.0  # every wait call costs this much, even on a message that already arrived
    # parallel.decode: pipeline: [stage - 1][block] seconds of a later stage's decode share, done between its
    # forwards once the previous decode rank has handed the block on (empty: rank 0 decodes everything)
    decode_s: list[list[float]] = field(default_factory=list)


@dataclass
class RankTimeline:
    """What one rank did on the replayed clock (seconds from the start of the denoise loop)."""

    busy_s: float = 0.0
    idle_s: float = 0.0
    io_s: float = 0.0
    end_s: float = 0.0
    spans: list[tuple[str, str, float, float]] = field(default_factory=list)  # (name, kind, start, end)

    def run(self, t: float, seconds: float, name: str, kind: str = "busy") -> float:
        """Do `seconds` of work starting at `t` (the rank is free by then); returns the end."""
        setattr(self, f"{kind}_s", getattr(self, f"{kind}_s") + seconds)
        self.spans.append((name, kind, t, t + seconds))
        return t + seconds

    def wait_until(self, t: float, ready: float, name: str, overhead: float = 0.0) -> float:
        """Idle from `t` until `ready`, plus the wait call's own `overhead`."""
        return self.run(t, max(ready, t) - t + overhead, name, "idle") if ready > t or overhead else t


@dataclass
class Replay:
    """The replayed run: per-rank timelines and when the first block's frames were written."""

    ranks: list[RankTimeline]
    first_frame_s: float

    @property
    def loop_s(self) -> float:
        return max(r.end_s for r in self.ranks)


class _Sends:
    """A rank's outstanding sends: completion times, oldest first (the engine bounds their number)."""

    def __init__(self, timeline: RankTimeline, wait_s: float):
        self.timeline, self.wait_s, self.done = timeline, wait_s, deque()

    def post(self, t: float, issue_ready: float, msg_s: float) -> tuple[float, float]:
        """Send at `t` to a receiver posted at `issue_ready`; returns (arrival, time the sender goes on)."""
        arrival = max(t, issue_ready) + msg_s
        self.done.append(arrival)
        while len(self.done) > MAX_SENDS_IN_FLIGHT:
            t = self.timeline.wait_until(t, self.done.popleft(), "send", self.wait_s)
        return arrival, t

    def flush(self, t: float) -> float:
        while self.done:
            t = self.timeline.wait_until(t, self.done.popleft(), "send", self.wait_s)
        return t


def replay(plan: BlockPlan, costs: ScheduleCosts, *, stages: int) -> Replay:
    """Run the static schedule of `plan` over `stages` ranks (one stage each) on the cost clock."""
    ranks = [RankTimeline() for _ in range(stages)]
    sends = [_Sends(r, costs.wait_s) for r in ranks]
    now = [0.0] * stages
    pred_arrival: dict[int, float] = {}
    pred_posted: dict[int, float] = {}
    recv_posted = [0.0] * stages  # when stage s posted the receive of the forward it waits for next
    state = {"applied": -1, "first_frame": None}
    last = stages - 1
    decoding = [s for s in range(1, stages) if s - 1 < len(costs.decode_s) and any(costs.decode_s[s - 1])]
    pending: list[deque] = [deque() for _ in range(stages)]  # (ready, block) decode shares not yet run

    def apply(t: float, seq: int) -> float:
        fwd = plan.forwards[seq]
        t = ranks[0].run(t, costs.scheduler_step_s, "scheduler step")
        if fwd.is_last_step:
            t = ranks[0].run(t, costs.block_out_s[fwd.block], f"decode+write block {fwd.block}", "io")
            if decoding:
                pending[decoding[0]].append((t, fwd.block))
            elif state["first_frame"] is None:
                state["first_frame"] = t
        state["applied"] = seq
        return t

    def decode_due(s: int, t: float, *, drain: bool = False) -> float:
        """Stage `s` runs the decode shares handed to it by `t` (all of them when draining)."""
        while pending[s] and (drain or pending[s][0][0] <= t):
            ready, block = pending[s].popleft()
            t = ranks[s].run(max(t, ready), costs.decode_s[s - 1][block], f"decode block {block}", "io")
            following = [d for d in decoding if d > s]
            if following:
                pending[following[0]].append((t, block))
            elif state["first_frame"] is None:
                state["first_frame"] = t
        return t

    def drain(t: float, upto: int) -> float:
        while state["applied"] < upto:
            seq = state["applied"] + 1
            t = ranks[0].wait_until(t, pred_arrival[seq], "wait prediction", costs.wait_s)
            t = apply(t, seq)
        return t

    for fwd in plan.forwards:
        seq, label = fwd.seq, f"block {fwd.block} step {fwd.step}"
        t = now[0]
        if stages > 1:
            if fwd.depends_on:
                t = drain(t, fwd.depends_on[-1])
            pred_posted[seq] = t
        t = ranks[0].run(t, costs.embed_s[seq], "embed")
        t = ranks[0].run(t, costs.layers_s[0][seq], label)
        arrival = None
        if stages == 1:
            t = ranks[0].run(t, costs.head_s[seq], "head")
            t = apply(t, seq)
        else:
            arrival, t = sends[0].post(t, recv_posted[1], costs.hidden_msg_s[seq])
        now[0] = t
        for s in range(1, stages):
            now[s] = decode_due(s, now[s])
            t = ranks[s].wait_until(now[s], arrival, "wait hidden", costs.wait_s)
            recv_posted[s] = t
            t = ranks[s].run(t, costs.layers_s[s][seq], label)
            if s < last:
                arrival, t = sends[s].post(t, recv_posted[s + 1], costs.hidden_msg_s[seq])
            else:
                t = ranks[s].run(t, costs.head_s[seq], "head")
                pred_arrival[seq], t = sends[s].post(t, pred_posted[seq], costs.prediction_msg_s[seq])
            now[s] = t
    now[0] = drain(now[0], len(plan.forwards) - 1)
    for s in decoding:  # in chain order, so each hands its last blocks on before the next drains
        now[s] = decode_due(s, now[s], drain=True)
    for s in range(stages):
        ranks[s].end_s = sends[s].flush(now[s])
    return Replay(ranks=ranks, first_frame_s=state["first_frame"] or 0.0)
