"""The output folder: refuse to clobber an earlier run unless asked, before anything is loaded."""

from __future__ import annotations

import shutil
from pathlib import Path

from paravideo.errors import ConfigError
from paravideo.io.checkpoint import CHECKPOINT_NAME
from paravideo.io.sink import FINAL_NAME, INCOMPLETE_NAME, PARTIAL_NAME, SEGMENT_DIR
from paravideo.report.run_report import RUN_JSON

RUN_FILES = (FINAL_NAME, INCOMPLETE_NAME, PARTIAL_NAME, RUN_JSON, "latents.pt", CHECKPOINT_NAME)


def prepare_output_dir(path: str, *, overwrite: bool, resume: bool = False) -> Path:
    """Create `path`; an earlier run's files there are an error, or removed when overwrite is set.

    A resume keeps the checkpoint and the video segments it names, and drops the failed run's video.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output.dir {path!r} exists and is not a folder; choose another output.dir")
    if resume:
        if not (out / CHECKPOINT_NAME).is_file():
            raise ConfigError(f"output.dir {path!r} holds no {CHECKPOINT_NAME} to resume from; only runs with "
                              "output.checkpoint_every > 0 can be resumed")
        for name in (FINAL_NAME, INCOMPLETE_NAME, PARTIAL_NAME):
            (out / name).unlink(missing_ok=True)
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
