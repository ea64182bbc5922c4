"""Bench points against a reference plan (e.g. uncached): speed-up, PSNR and max error of the frames, work saved.

An approximate mode (step caching, stale patch K/V) is worth its speed-up only next to what it does
to the video, so the bench puts both in one table. Frames are compared as the lossless PNGs every
point writes when the sweep names a `reference_plan`, never through the lossy mp4.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _frames(run_dir: str) -> np.ndarray | None:
    import imageio.v3 as iio

    paths = sorted((Path(run_dir) / "frames").glob("*.png"))
    return np.stack([iio.imread(p) for p in paths]).astype(np.float64) if paths else None


def frame_error(ours: np.ndarray, ref: np.ndarray) -> dict:
    """PSNR (dB, None when equal) and max abs error of 8-bit frames."""
    mse = float(np.mean((ours - ref) ** 2))
    return {"psnr_db": None if mse == 0 else 10 * np.log10(255.0 ** 2 / mse),
            "max_abs_error": float(np.abs(ours - ref).max()), "equal": mse == 0}


def _step_cache(run_dir: str) -> dict | None:
    try:
        return json.loads((Path(run_dir) / "run.json").read_text()).get("step_cache")
    except (OSError, json.JSONDecodeError):
        return None


def add_versus(rows: list[dict], reference_plan: str | None) -> None:
    """Each measured row's `versus_reference` against the reference plan's point of the same ranks and frames."""
    if not reference_plan:
        return
    refs = {(r["ranks"], r["frames"]): r for r in rows if r["plan"] == reference_plan and r["measured"]}
    for row in rows:
        ref = refs.get((row["ranks"], row["frames"]))
        if row["measured"] is None or ref is None:
            row["versus_reference"] = None
            continue
        ours, theirs = _frames(row["run_dir"]), _frames(ref["run_dir"])
        cache = _step_cache(row["run_dir"]) or {}
        row["versus_reference"] = {
            "reference": ref["name"], "speedup": ref["measured"]["wall_s"] / row["measured"]["wall_s"],
            **(frame_error(ours, theirs) if ours is not None and theirs is not None and ours.shape == theirs.shape
               else {"psnr_db": None, "max_abs_error": None, "equal": None}),
            "forwards_reused": cache.get("forwards_reused", 0),
            "layer_forwards_saved_fraction": cache.get("saved_fraction", 0.0)}


def versus_table(rows: list[dict]) -> list[str]:
    """report.md lines: the table against the reference plan (empty without one)."""
    body = []
    for r in rows:
        v = r.get("versus_reference")
        if not v:
            continue
        psnr = "equal" if v["equal"] else ("–" if v["psnr_db"] is None else f"{v['psnr_db']:.1f}")
        error = "–" if v["max_abs_error"] is None else f"{v['max_abs_error']:.0f}"
        body.append(f"| {r['name']} | {v['reference']} | {v['speedup']:.2f} | {psnr} | {error} | "
                    f"{v['forwards_reused']} | {v['layer_forwards_saved_fraction'] * 100:.0f}% |")
    if not body:
        return []
    return ["## Against the reference plan", "",
            "| point | reference | speed-up | PSNR dB | max abs frame error (0-255) | forwards reused | "
            "layer-forwards saved |", "|---|---|---|---|---|---|---|", *body, "",
            "Speed-up = the reference point's wall time / this wall time (same ranks and frames); frames compared "
            "as lossless PNGs.", ""]
