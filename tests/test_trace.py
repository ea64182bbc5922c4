"""trace.json: valid trace-event JSON, one track per rank, every block-forward on every rank."""

from __future__ import annotations

import json
import re

from paravideo.telemetry.trace import read_tracks, trace_events
from paravideo.generate import preflight
from paravideo.runtime.rank_model import build_plan

FORWARD = re.compile(r"^block (\d+) step (\d+)$")


def _forwards(events: list[dict]) -> list[tuple[int, int]]:
    return [tuple(map(int, FORWARD.match(e["name"]).groups())) for e in events if FORWARD.match(e["name"])]


def test_two_rank_trace_has_every_forward_on_every_rank(make_config, tiny_root):
    from paravideo.generate import generate

    config = make_config(blocks={"block_frames": 2, "context_frames": 1}, parallel={"pipeline": 2},
                         launch={"launcher": "local", "nproc": 2}, output={"trace": True})
    generate(config)
    path = f"{config.output.dir}/trace.json"
    doc = json.loads(open(path).read())
    assert doc["displayTimeUnit"] == "ms"
    for event in doc["traceEvents"]:
        assert {"name", "ph", "pid", "tid"} <= set(event)
        if event["ph"] == "X":
            assert event["dur"] >= 0 and isinstance(event["ts"], float)
    tracks = read_tracks(path)
    assert sorted(tracks) == ["rank 0 (layers 0-1)", "rank 1 (layers 2-3)"]
    plan = build_plan(config, preflight(config))
    expected = [(f.block, f.step) for f in plan.forwards]
    for events in tracks.values():
        assert _forwards(events) == expected  # each rank runs the whole plan, in plan order
    names = [e["name"] for e in tracks["rank 0 (layers 0-1)"]]
    assert names.count("scheduler step") == len(plan.forwards)
    assert sum(n.startswith("decode block") for n in names) == len(plan.blocks)
    assert sum(n.startswith("write block") for n in names) == len(plan.blocks)
    assert any(n.startswith("send hidden") for n in names)
    assert any(n.startswith("wait hidden") for n in (e["name"] for e in tracks["rank 1 (layers 2-3)"]))


def test_single_rank_run_writes_one_track(make_config, tiny_root):
    from paravideo.generate import generate

    config = make_config(sampling={"steps": 2}, output={"trace": True})
    generate(config)
    tracks = read_tracks(f"{config.output.dir}/trace.json")
    assert list(tracks) == ["rank 0 (layers 0-3)"]
    assert _forwards(tracks["rank 0 (layers 0-3)"]) == [(0, 0), (0, 1)]


def test_no_trace_unless_asked(make_config, tiny_root):
    from pathlib import Path

    from paravideo.generate import generate

    config = make_config(sampling={"steps": 1})
    generate(config)
    assert not (Path(config.output.dir) / "trace.json").exists()


def test_clocks_are_aligned_at_the_barrier():
    span = {"name": "block 0 step 0", "kind": "busy", "start_s": 1.0, "end_s": 2.0, "args": {"block": 0}}
    # Rank 1's clock started 5 s later, so it read 5 s less at the shared barrier.
    parts = [{"rank": 1, "layers": [2, 4], "sync_s": 5.0, "spans": [span]},
             {"rank": 0, "layers": [0, 2], "sync_s": 10.0, "spans": [span]}]
    events = [e for e in trace_events(parts)["traceEvents"] if e["ph"] == "X"]
    by_pid = {e["pid"]: e for e in events}
    assert by_pid[0]["ts"] == 1.0e6 and by_pid[1]["ts"] == 6.0e6
    assert by_pid[1]["dur"] == 1.0e6
