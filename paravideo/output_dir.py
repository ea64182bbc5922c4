"""The output folder: refuse to clobber an earlier run unless asked, before anything is loaded."""

from __future__ import annotations

from pathlib import Path

from paravideo.errors import ConfigError
from paravideo.io.sink import FINAL_NAME, INCOMPLETE_NAME, PARTIAL_NAME
from paravideo.report.run_report import RUN_JSON

RUN_FILES = (FINAL_NAME, INCOMPLETE_NAME, PARTIAL_NAME, RUN_JSON, "latents.pt")


def prepare_output_dir(path: str, *, overwrite: bool) -> Path:
    """Create `path`; an earlier run's files there are an error, or removed when overwrite is set."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output.dir {path!r} exists and is not a folder; choose another output.dir")
    earlier = [name for name in RUN_FILES if (out / name).exists()]
    if earlier and not overwrite:
        raise ConfigError(f"output.dir {path!r} already holds a run ({', '.join(earlier)}); choose another "
                          "output.dir or set output.overwrite: true (e.g. --set output.overwrite=true)")
    for name in earlier:
        (out / name).unlink()
    frames = out / "frames"
    if overwrite and frames.is_dir():
        for png in frames.glob("*.png"):
            png.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out
