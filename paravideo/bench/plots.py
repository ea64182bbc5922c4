"""PNG plots of a bench report: latency and memory against frames, speed-up against ranks, a timeline."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

MIB = 1024 ** 2
KIND_COLOURS = {"busy": "#3b7dd8", "idle": "#d9d9d9", "io": "#e8912d"}


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        from paravideo.errors import ParavideoError

        raise ParavideoError("the bench report's plots need matplotlib: pip install 'paravideo[report]'") from None
    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    return plt


def _series(rows: list[dict], y) -> dict[tuple[str, int], list[tuple[int, float]]]:
    out: dict[tuple[str, int], list[tuple[int, float]]] = defaultdict(list)
    for r in rows:
        if r["measured"] is not None:
            out[(r["plan"], r["ranks"])].append((r["frames"], y(r)))
    return {k: sorted(v) for k, v in out.items()}


def _against_frames(rows: list[dict], path: Path, *, title: str, ylabel: str, measured, predicted) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (plan, ranks), points in _series(rows, measured).items():
        line, = ax.plot(*zip(*points), marker="o", label=f"{plan}, {ranks} rank(s)")
        pred = _series([r for r in rows if r["plan"] == plan and r["ranks"] == ranks], predicted)[(plan, ranks)]
        ax.plot(*zip(*pred), linestyle="--", color=line.get_color(), alpha=0.7)
    ax.set(title=title + " (solid: measured, dashed: predicted)", xlabel="output frames", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_speedup(rows: list[dict], path: Path) -> None:
    """Speed-up against ranks per (plan, frames), with the ideal line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups: dict[tuple[str, int], dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        for side in ("measured", "predicted"):
            if r["measured"] is not None and r[side].get("speedup") is not None:
                groups[(r["plan"], r["frames"])][side].append((r["ranks"], r[side]["speedup"]))
    ranks = sorted({r["ranks"] for r in rows}) or [1]
    ax.plot(ranks, ranks, color="black", linestyle=":", label="ideal")
    for (plan, frames), sides in sorted(groups.items()):
        line, = ax.plot(*zip(*sorted(sides["measured"])), marker="o", label=f"{plan}, {frames} frames")
        if sides["predicted"]:
            ax.plot(*zip(*sorted(sides["predicted"])), linestyle="--", color=line.get_color(), alpha=0.7)
    ax.set(title="Speed-up against 1 rank (solid: measured, dashed: predicted)", xlabel="ranks", ylabel="speed-up",
           xticks=ranks)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_timeline(trace_path: Path, path: Path, *, title: str) -> None:
    """One lane per rank, spans coloured by kind (busy, idle, io), from a trace.json."""
    from paravideo.telemetry.trace import read_tracks

    plt = _pyplot()
    tracks = read_tracks(trace_path)
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.8 * len(tracks)))
    names = sorted(tracks)
    for lane, name in enumerate(names):
        for kind, colour in KIND_COLOURS.items():
            bars = [(e["ts"] / 1e6, e["dur"] / 1e6) for e in tracks[name] if e["cat"] == kind]
            if bars:
                ax.broken_barh(bars, (lane - 0.4, 0.8), facecolors=colour, label=kind if lane == 0 else None)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_title(title, loc="left")
    ax.set_xlabel("seconds (rank 0's clock)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in KIND_COLOURS.values()]
    ax.legend(handles, list(KIND_COLOURS), loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=3, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(out_dir: Path, rows: list[dict], timeline_point: dict | None) -> dict[str, str]:
    """Write every plot; returns {title: file name} for report.md."""
    out_dir = Path(out_dir)
    plots = {"Latency against frames": "latency_vs_frames.png", "Peak memory against frames": "memory_vs_frames.png",
             "Speed-up against ranks": "speedup_vs_ranks.png"}
    _against_frames(rows, out_dir / plots["Latency against frames"], title="Wall time", ylabel="seconds",
                    measured=lambda r: r["measured"]["wall_s"], predicted=lambda r: r["predicted"]["wall_s"])
    _against_frames(rows, out_dir / plots["Peak memory against frames"], title="Largest per-rank peak memory",
                    ylabel="MiB", measured=lambda r: max(x["peak_memory_bytes"] for x in r["measured"]["ranks"]) / MIB,
                    predicted=lambda r: r["predicted"]["max_peak_memory_bytes"] / MIB)
    plot_speedup(rows, out_dir / plots["Speed-up against ranks"])
    if timeline_point is not None:
        name = "timeline.png"
        plot_timeline(Path(timeline_point["run_dir"]) / "trace.json", out_dir / name,
                      title=f"Per-rank timeline of {timeline_point['name']}")
        plots[f"Timeline of {timeline_point['name']}"] = name
    return plots
