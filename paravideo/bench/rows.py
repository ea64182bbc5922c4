"""The bench report: one row per sweep point (measured, predicted, error), report.json and report.md."""

from __future__ import annotations

import json
from pathlib import Path

from paravideo.costmodel.cost_model import Prediction
from paravideo.telemetry.run_report import write_json_atomic
from paravideo.bench.sweep import SweepPoint



def _idle_fraction(rank: dict) -> float:
    total = rank["busy_s"] + rank["idle_s"] + rank["io_s"]
    return rank["idle_s"] / total if total else 0.0


def _nonzero(kinds: dict) -> dict:
    return {k: v for k, v in kinds.items() if v}


def _relative(predicted: float | None, measured: float | None) -> float | None:
    if predicted is None or not measured:
        return None
    return (predicted - measured) / measured


def measured_fields(run: dict, frames: int) -> dict:
    """What run.json says, in the report's terms."""
    ranks = [{"rank": r["rank"], "layers": r["layers"], "peak_memory_bytes": r["peak_memory_bytes"],
              "memory_kind": r["memory_kind"], "param_bytes": r["param_bytes"], "busy_s": r["busy_s"],
              "idle_s": r["idle_s"], "io_s": r["io_s"], "idle_fraction": _idle_fraction(r),
              "bytes_sent": r["bytes_sent"], "bytes_by_kind": _nonzero(r["bytes_by_kind"])} for r in run["ranks"]]
    return {"wall_s": run["wall_s"], "time_to_first_frame_s": run["time_to_first_frame_s"],
            "fps": frames / run["wall_s"], "bytes_sent": sum(r["bytes_sent"] for r in ranks), "ranks": ranks}


def predicted_fields(p: Prediction, frames: int) -> dict:
    """The cost model's figures for the same point."""
    data = p.to_json()
    data["fps"] = frames / p.wall_s
    for rank in data["ranks"]:
        rank["param_bytes"] = rank["memory"]["weights"]
    return data


def point_row(point: SweepPoint, run: dict | None, prediction: Prediction, error: str | None = None) -> dict:
    """One row of report.json."""
    from paravideo.costmodel.shapes import shape_for_model_path
    from paravideo.models.factors import latent_frames

    stride = shape_for_model_path(point.config.model.path).time_stride
    row = {"name": point.name, "plan": point.plan, "ranks": point.ranks, "frames": point.frames,
           "latent_frames": latent_frames(point.config.video.num_frames, stride), "steps": point.config.sampling.steps,
           "resolution": f"{point.config.video.width}x{point.config.video.height}",
           "run_dir": point.config.output.dir, "error": error,
           "measured": measured_fields(run, point.frames) if run else None,
           "predicted": predicted_fields(prediction, point.frames)}
    row["error_vs_measured"] = errors(row["measured"], row["predicted"]) if run else None
    return row


def errors(measured: dict, predicted: dict) -> dict:
    """Relative errors (predicted - measured) / measured, and the exact checks."""
    pairs = list(zip(measured["ranks"], predicted["ranks"]))
    return {"wall_s": _relative(predicted["wall_s"], measured["wall_s"]),
            "time_to_first_frame_s": _relative(predicted["time_to_first_frame_s"], measured["time_to_first_frame_s"]),
            "peak_memory": [_relative(p["peak_memory_bytes"], m["peak_memory_bytes"]) for m, p in pairs],
            "traffic_exact": all(m["bytes_by_kind"] == p["bytes_by_kind"] for m, p in pairs),
            "weights_exact": all(m["param_bytes"] == p["param_bytes"] for m, p in pairs)}


def add_speedups(rows: list[dict]) -> None:
    """Speed-up of each point against the 1-rank point of the same plan and frames (measured and predicted)."""
    single = {(r["plan"], r["frames"]): r for r in rows if r["ranks"] == 1}
    for row in rows:
        ref = single.get((row["plan"], row["frames"]))
        for side in ("measured", "predicted"):
            if row[side] is not None:
                ok = ref is not None and ref[side] is not None
                row[side]["speedup"] = ref[side]["wall_s"] / row[side]["wall_s"] if ok else None


def summary(rows: list[dict]) -> dict:
    """How close the model came over the whole sweep."""
    walls = [abs(r["error_vs_measured"]["wall_s"]) for r in rows if r["error_vs_measured"]]
    ttffs = [abs(e) for r in rows if r["error_vs_measured"]
             for e in [r["error_vs_measured"]["time_to_first_frame_s"]] if e is not None]
    done = [r for r in rows if r["error_vs_measured"]]
    return {"points": len(rows), "measured": len(done), "failed": [r["name"] for r in rows if r["error"]],
            "wall_abs_error_mean": sum(walls) / len(walls) if walls else None,
            "wall_abs_error_max": max(walls) if walls else None,
            "wall_within_25pct": sum(e <= 0.25 for e in walls),
            "ttff_abs_error_mean": sum(ttffs) / len(ttffs) if ttffs else None,
            "traffic_exact_all": all(r["error_vs_measured"]["traffic_exact"] for r in done),
            "weights_exact_all": all(r["error_vs_measured"]["weights_exact"] for r in done)}


def write_report_json(out_dir: Path, header: dict, rows: list[dict]) -> Path:
    """report.json: the sweep, the profile, every row and the summary."""
    path = Path(out_dir) / "report.json"
    write_json_atomic(path, {**header, "summary": summary(rows), "points": rows})
    return path


def load_report(out_dir: Path) -> dict:
    """Read a report.json back."""
    return json.loads((Path(out_dir) / "report.json").read_text())
