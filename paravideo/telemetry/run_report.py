"""run.json: what a run produced, how long it took, and how each rank spent its time and memory."""

from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

RUN_JSON = "run.json"


@dataclass
class RunReport:
    """The fields of run.json (see README, "Outputs")."""

    complete: bool
    frames: int
    latent_frames: int
    steps: int
    blocks: int
    wall_s: float
    denoise_s: float | None  # the denoise loop with streaming output, without loading (rank 0)
    time_to_first_frame_s: float | None
    world_size: int
    video: str | None
    config: dict
    parallel: dict = field(default_factory=dict)
    # The model's declared factors: family, experts (and which one ran each step), strides, channels.
    model: dict | None = None
    plan: dict = field(default_factory=dict)
    ranks: list[dict] = field(default_factory=list)
    block_digests: list[str] = field(default_factory=list)
    error: str | None = None
    # Step caching: per block the steps computed and reused, the indicator, layer-forwards saved (None: off).
    step_cache: dict | None = None
    # Rank 0 builds the report on the machine whose sink wrote the video, so its host name is the default.
    video_node: str | None = field(default_factory=socket.gethostname)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON via a temp file and rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
        os.replace(tmp, path)
    except OSError as err:  # a full disk: no half-written temp file left, one clear error
        from paravideo.io.write_error import write_error

        raise write_error(err, path, path.parent) from err
    finally:
        tmp.unlink(missing_ok=True)


def write_run_report(out_dir: Path, report: RunReport) -> Path:
    """Write `<out_dir>/run.json`."""
    path = Path(out_dir) / RUN_JSON
    write_json_atomic(path, report.to_json())
    return path


def mark_failed(out_dir: Path, error: str) -> None:
    """Record a failure found by the launcher in run.json (written by rank 0, or made here)."""
    path = Path(out_dir) / RUN_JSON
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        data = {"complete": False, "frames": 0}
    data["complete"] = False
    data["error"] = error
    try:
        write_json_atomic(path, data)
    except OSError as err:  # best effort (a full disk): the failure itself is what gets reported
        print(f"paravideo: could not record the failure in {path}: {err}", file=sys.stderr, flush=True)
