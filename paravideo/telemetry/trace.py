"""trace.json: every rank's spans on one clock, in Chrome/Perfetto trace-event format."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from paravideo.telemetry.recorder import IO, Recorder

TRACE_JSON = "trace.json"
# Decode and write run on a helper thread beside the rank's forwards, so their spans overlap the DiT's;
# they get a second lane (thread) inside the rank's track instead of nesting wrongly under a forward.
IO_LANE = 1_000_000


@dataclass
class RankTrace:
    """One rank's spans plus the moment (on its own clock) it left the closing barrier."""

    rank: int
    layers: tuple[int, int]
    sync_s: float
    spans: list[dict] = field(default_factory=list)

    @property
    def label(self) -> str:
        lo, hi = self.layers
        return f"rank {self.rank} (layers {lo}-{hi - 1})"


def rank_trace(recorder: Recorder, *, layers: tuple[int, int], barrier: Callable[[], None]) -> dict | None:
    """This rank's trace part for the gather (None when spans are not kept, so nothing is sent).

    Ranks leave a barrier at (nearly) the same instant, so each rank's clock reading right after
    it is the common reference that aligns clocks started at different times (or on other hosts).
    """
    if not recorder.keep_spans:
        return None
    barrier()
    sync_s = recorder.now()
    return asdict(RankTrace(rank=recorder.rank, layers=tuple(layers), sync_s=sync_s,
                            spans=[asdict(s) for s in recorder.spans]))


def _on_helper_lane(span: dict) -> bool:
    # Spans from before the `helper` field (old traces) go by kind: io spans ran on helper threads.
    return span.get("helper", span["kind"] == IO)


def _event(span: dict, *, pid: int, shift_s: float) -> dict:
    args = {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v))
            for k, v in span["args"].items()}
    tid = pid + IO_LANE if _on_helper_lane(span) else pid
    return {"name": span["name"], "cat": span["kind"], "ph": "X", "pid": pid, "tid": tid,
            "ts": round((span["start_s"] + shift_s) * 1e6, 3),
            "dur": round((span["end_s"] - span["start_s"]) * 1e6, 3), "args": args}


def trace_events(parts: list[dict]) -> dict:
    """The trace document: one named track per rank, spans shifted onto rank 0's clock (µs)."""
    traces = sorted((RankTrace(**p) for p in parts if p), key=lambda t: t.rank)
    if not traces:
        return {"traceEvents": [], "displayTimeUnit": "ms"}
    reference = next((t.sync_s for t in traces if t.rank == 0), traces[0].sync_s)
    events: list[dict] = []
    for t in traces:
        meta = {"pid": t.rank, "tid": t.rank, "ph": "M"}
        events.append({**meta, "name": "process_name", "args": {"name": t.label}})
        events.append({**meta, "name": "process_sort_index", "args": {"sort_index": t.rank}})
        events.append({**meta, "name": "thread_name", "args": {"name": t.label}})
        if any(_on_helper_lane(span) for span in t.spans):
            events.append({**meta, "tid": t.rank + IO_LANE, "name": "thread_name",
                           "args": {"name": f"rank {t.rank} decode / write"}})
        shift = reference - t.sync_s
        events.extend(_event(span, pid=t.rank, shift_s=shift) for span in t.spans)
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_trace(out_dir: Path, parts: list[dict | None]) -> Path | None:
    """Write `<out_dir>/trace.json` from the gathered rank parts (None when no rank kept spans)."""
    parts = [p for p in parts if p]
    if not parts:
        return None
    path = Path(out_dir) / TRACE_JSON
    path.write_text(json.dumps(trace_events(parts)) + "\n")
    return path


def read_tracks(path: Path) -> dict[str, list[dict]]:
    """Complete events of a trace file grouped by track name (for plots and tests)."""
    events = json.loads(Path(path).read_text())["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    tracks: dict[str, list[dict]] = {name: [] for name in names.values()}
    for e in events:
        if e["ph"] == "X":
            tracks[names[e["pid"]]].append(e)
    return tracks
