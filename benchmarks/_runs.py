"""Shared helpers for benchmark scripts: run `paravideo generate` in a fresh process, read run.json."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml


def _exit_on_sigterm() -> None:
    # subprocess.run kills its child on any exception; SIGTERM's default would leave the run going.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def run_generate(config: dict, *, label: str, workdir: Path | None = None) -> dict:
    """Run one generation in a fresh interpreter (so RSS high-water is this run's) and return run.json.

    Without `workdir` the run's folder is a temporary one, removed once run.json is read.
    """
    _exit_on_sigterm()
    if workdir is None:
        scratch = Path(tempfile.mkdtemp(prefix="paravideo-bench-"))
        try:
            return run_generate(config, label=label, workdir=scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    workdir = Path(workdir)
    out = workdir / label
    config = json.loads(json.dumps(config))
    config.setdefault("output", {}).update(dir=str(out), overwrite=True, progress=False)
    path = workdir / f"{label}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, OMP_NUM_THREADS=str(config.get("launch", {}).get("threads_per_rank", 1)))
    proc = subprocess.run([sys.executable, "-m", "paravideo", "generate", "-c", str(path)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{label} failed:\n{proc.stderr[-2000:]}")
    return json.loads((out / "run.json").read_text())


def read_frames(out: Path) -> np.ndarray:
    """The run's lossless PNG frames as float64 `(t, h, w, 3)`."""
    import imageio.v3 as iio

    return np.stack([iio.imread(p) for p in sorted((out / "frames").glob("*.png"))]).astype(np.float64)


def psnr(ours: np.ndarray, ref: np.ndarray) -> str:
    """PSNR in dB of 8-bit frames against a reference, "inf (equal)" when identical."""
    mse = float(np.mean((ours - ref) ** 2))
    return "inf (equal)" if mse == 0 else f"{10 * np.log10(255.0 ** 2 / mse):.1f}"


def table(header: list[str], rows: list[list]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
