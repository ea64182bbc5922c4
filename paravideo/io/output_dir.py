"""The output folder: refuse to clobber an earlier run unless asked, before anything is loaded."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from paravideo.errors import ConfigError
from paravideo.io.checkpoint import CHECKPOINT_NAME
from paravideo.io.sink import FINAL_NAME, INCOMPLETE_NAME, PARTIAL_NAME, SEGMENT_DIR
from paravideo.telemetry.run_report import RUN_JSON

RUN_FILES = (FINAL_NAME, INCOMPLETE_NAME, PARTIAL_NAME, RUN_JSON, "latents.pt", CHECKPOINT_NAME)
PROBE_NAME = ".paravideo.write-probe"


def ensure_writable_dir(path: str) -> Path:
    """Create `path` if needed and prove a file can be made and removed in it; ConfigError otherwise.

    Runs before any model loads, so a read-only or foreign folder fails in one line, not after loading.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output.dir {path!r} exists and is not a folder; choose another output.dir")
    probe = out / f"{PROBE_NAME}.{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"output.dir {path!r} is not writable: {err.strerror or err} ({err.filename or out}); "
                          "choose a writable output.dir") from err
    return out


def prepare_output_dir(path: str, *, overwrite: bool, resume: bool = False) -> Path:
    """Create `path`; an earlier run's files there are an error, or removed when overwrite is set.

    A resume keeps everything: the checkpoint and its segments, and the failed run's video, which
    the resumed run replaces only once it has written one of its own.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output.dir {path!r} exists and is not a folder; choose another output.dir")
    if resume:
        if not (out / CHECKPOINT_NAME).is_file():
            raise ConfigError(f"output.dir {path!r} holds no {CHECKPOINT_NAME} to resume from; only runs with "
                              "output.checkpoint_every > 0 can be resumed")
        return out
    earlier = [name for name in RUN_FILES if (out / name).exists()]
    if earlier and not overwrite:
        raise ConfigError(f"output.dir {path!r} already holds a run ({', '.join(earlier)}); choose another "
                          "output.dir or set output.overwrite: true (e.g. --set output.overwrite=true)")
    for name in earlier:
        (out / name).unlink()
    if overwrite and (out / SEGMENT_DIR).is_dir():
        shutil.rmtree(out / SEGMENT_DIR)
    frames = out / "frames"
    if overwrite and frames.is_dir():
        for png in frames.glob("*.png"):
            png.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out
