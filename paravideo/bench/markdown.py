"""report.md: the bench report's tables (measured, memory, predicted against measured) and plots."""

from __future__ import annotations

from pathlib import Path

from paravideo.bench.versus import versus_table

MIB = 1024 ** 2


def _s(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:+.0f}%"


def _mib(value: int | None) -> str:
    return "–" if value is None else f"{value / MIB:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _timing(rows: list[dict]) -> list[str]:
    body = []
    for r in rows:
        m = r["measured"]
        if m is None:
            body.append([r["name"], str(r["ranks"]), str(r["frames"]), r["plan"], f"failed: {r['error']}"]
                        + [""] * 6)
            continue
        idle = " / ".join(f"{x['idle_fraction']:.2f}" for x in m["ranks"])
        body.append([r["name"], str(r["ranks"]), str(r["frames"]), r["plan"], _s(m["wall_s"]),
                     _s(m["time_to_first_frame_s"]), _s(m["fps"], 1), _s(m.get("speedup")), idle,
                     _mib(m["bytes_sent"]), _s(r["predicted"].get("speedup"))])
    return _table(["point", "ranks", "frames", "plan", "wall s", "first frame s", "frames/s", "speed-up vs 1 rank",
                   "idle fraction per rank", "MiB sent", "predicted speed-up"], body)


def _memory(rows: list[dict]) -> list[str]:
    body = []
    for r in rows:
        if r["measured"] is None:
            continue
        for m, p in zip(r["measured"]["ranks"], r["predicted"]["ranks"]):
            body.append([r["name"], str(m["rank"]), f"{m['layers'][0]}-{m['layers'][1] - 1}",
                         _mib(m["peak_memory_bytes"]), _mib(p["peak_memory_bytes"]), _mib(m["param_bytes"]),
                         _mib(p["param_bytes"]), m["memory_kind"]])
    return _table(["point", "rank", "layers", "peak MiB measured", "peak MiB predicted", "param MiB measured",
                   "param MiB predicted", "measured as"], body)


def _versus(rows: list[dict]) -> list[str]:
    body = []
    for r in rows:
        m, p, e = r["measured"], r["predicted"], r["error_vs_measured"]
        if m is None:
            continue
        body.append([r["name"], _s(m["wall_s"]), _s(p["wall_s"]), _pct(e["wall_s"]),
                     _s(m["time_to_first_frame_s"]), _s(p["time_to_first_frame_s"]), _pct(e["time_to_first_frame_s"]),
                     " / ".join(f"{x['idle_fraction']:.2f}" for x in p["ranks"]), _s(p["bubble"]),
                     "yes" if e["traffic_exact"] else "NO", "yes" if e["weights_exact"] else "NO"])
    return _table(["point", "wall s", "predicted", "error", "first frame s", "predicted", "error",
                   "predicted idle per rank", "predicted bubble", "traffic exact", "weights exact"], body)


def write_report_md(out_dir: Path, report: dict, plots: dict[str, str]) -> Path:
    """Write report.md from the report.json data and the plot files."""
    s, prof = report["summary"], report["profile"]
    lines = [f"# {report['sweep']['name']}", "",
             f"{s['measured']} of {s['points']} points ran; each is a real `paravideo generate` with the local "
             f"launcher (folders under `runs/`). Base config `{report['sweep']['base']}`; machine: {report['machine']}.",
             "", "## Measured", ""] + _timing(report["points"])
    lines += ["", "Idle fraction = time in waits / (busy + idle + io) per rank, from the recorder's spans. "
              "Speed-up = wall time of the 1-rank point of the same plan and frames / this wall time.",
              "", *versus_table(report["points"]), "## Memory per rank", ""] + _memory(report["points"])
    lines += ["", "On CPU the peak is the process's RSS high-water mark (Python, torch and libraries included); "
              "on GPU it is CUDA's max allocated.", "",
              f"## Predicted against measured (profile `{prof['name']}`)", ""] + _versus(report["points"])
    mean = s["wall_abs_error_mean"]
    absolute = lambda v: "–" if v is None else f"{v * 100:.0f}%"  # noqa: E731
    lines += ["", f"Wall-time error: mean |error| {absolute(mean)}, max |error| {absolute(s['wall_abs_error_max'])}, "
              f"{s['wall_within_25pct']} of {s['measured']} points within 25%. Traffic equal to the recorder's "
              f"byte count at every point: {'yes' if s['traffic_exact_all'] else 'NO'}. Profile source: "
              f"{prof['source']}", ""]
    for title, name in plots.items():
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    path = Path(out_dir) / "report.md"
    path.write_text("\n".join(lines))
    return path
