"""`paravideo bench`: run every point of a sweep for real, predict each, write the report folder."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from paravideo.errors import ParavideoError
from paravideo.bench.markdown import write_report_md
from paravideo.bench.rows import add_speedups, point_row, summary, write_report_json
from paravideo.costmodel.cost_model import Prediction, predict
from paravideo.bench.plots import write_plots
from paravideo.costmodel.profiles import HardwareProfile, load_profile, save_profile
from paravideo.costmodel.scenario import DecodeShape, Scenario
from paravideo.bench.sweep import SweepConfig, SweepPoint, load_sweep, sweep_points
from paravideo.bench.versus import add_versus


@dataclass
class BenchResult:
    """Where the report went and its summary."""

    out_dir: Path
    summary: dict


def _predict_all(points: list[SweepPoint], profile: HardwareProfile) -> list[Prediction]:
    decodes: dict[tuple, DecodeShape] = {}  # counting the VAE once per model and resolution
    out = []
    for point in points:
        scenario = Scenario.from_config(point.config)
        key = (point.config.model.path, scenario.latent_height, scenario.latent_width)
        if key not in decodes:
            decodes[key] = DecodeShape.of(scenario)
        out.append(predict(scenario, profile, decodes[key]))
    return out


def _run_point(point: SweepPoint) -> tuple[dict | None, str | None]:
    from paravideo.generate import generate

    try:
        generate(point.config)
    except ParavideoError as err:
        return None, str(err)
    run = json.loads((Path(point.config.output.dir) / "run.json").read_text())
    return (run, None) if run.get("complete") else (None, run.get("error") or "incomplete run")


def _timeline_row(sweep: SweepConfig, rows: list[dict]) -> dict | None:
    done = [r for r in rows if r["measured"] is not None]
    if sweep.timeline:
        return next((r for r in done if r["name"] == sweep.timeline), None)
    return max(done, key=lambda r: (r["ranks"], r["frames"]), default=None)


def run_bench(sweep_path: str, *, overrides: list[str] | None = None, out_dir: str | None = None,
              calibrate: bool = False, progress: bool = True) -> BenchResult:
    """Run the sweep in `sweep_path` and write report.md, report.json and the plots."""
    from tqdm import tqdm

    sweep, base = load_sweep(sweep_path, overrides)
    out = Path(out_dir or sweep.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    points = sweep_points(sweep, base, out)
    if calibrate:
        # Re-measure under the machine's present load, so predictions and runs see the same conditions.
        from paravideo.costmodel.calibrate import calibrate as measure

        profile = measure(log=lambda line: print(f"calibrate: {line}", flush=True))
        save_profile(profile, out / "profile.yaml")
    else:
        profile = load_profile(sweep.profile)
    predictions = _predict_all(points, profile)
    rows = []
    bar = tqdm(points, desc="bench", unit="run", disable=not progress, dynamic_ncols=True)
    for point, prediction in zip(bar, predictions):
        bar.set_postfix_str(point.name)
        run, error = _run_point(point)
        rows.append(point_row(point, run, prediction, error))
    bar.close()
    add_speedups(rows)
    add_versus(rows, sweep.reference_plan)
    header = {"sweep": {**sweep.model_dump(mode="json"), "file": str(sweep_path)},
              "profile": profile.model_dump(mode="json"),
              "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores"}
    report = {**header, "summary": summary(rows), "points": rows}
    plots = write_plots(out, rows, _timeline_row(sweep, rows))
    write_report_json(out, {**header, "plots": plots}, rows)
    write_report_md(out, report, plots)
    return BenchResult(out_dir=out, summary=report["summary"])
