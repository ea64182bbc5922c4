"""A full or read-only output file system: one clear error, no finished-looking video, no temp files.

Each case mounts a tiny tmpfs in a private mount namespace (`unshare --mount`; it vanishes with the
process), runs `paravideo generate` there and copies what the run left behind out for the checks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import BASE_CONFIG, deep_update
from paravideo.io.sink import read_video
from paravideo.io.output_lock import LOCK_NAME

# `unshare --mount` needs root (CI runs tests as root); elsewhere a user namespace maps us to root.
UNSHARE = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
SCRIPT = r"""
set -u
mount -t tmpfs -o "size=${SIZE_K}k" tmpfs "$MNT"
head -c "$FILL" /dev/zero > "$MNT/filler"
mkdir "$MNT/out"
if [ "$READ_ONLY" = 1 ]; then mount -o remount,ro "$MNT"; fi
"$PY" -m paravideo generate -c "$CFG" --set "output.dir=$MNT/out"
echo $? > "$KEEP/rc"
cp -a "$MNT/out/." "$KEEP/out/"
"""


def _namespace_refused() -> str | None:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "unshare or mount is not installed"
    probe = subprocess.run([*UNSHARE, "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True,
                           text=True)
    return None if probe.returncode == 0 else f"private tmpfs mounts are not permitted here: {probe.stderr.strip()}"


def _run_on_small_fs(tmp_path: Path, *, size_k: int, free_k: int, read_only: bool = False, **sections):
    """(exit code, stderr, copy of the output folder) of a run on a `size_k` KiB tmpfs with `free_k` KiB left."""
    reason = _namespace_refused()
    if reason:
        pytest.skip(reason)
    keep, mnt = tmp_path / "keep", tmp_path / "mnt"
    (keep / "out").mkdir(parents=True)
    mnt.mkdir()
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(deep_update(BASE_CONFIG, sections)))
    env = dict(os.environ, MNT=str(mnt), KEEP=str(keep), CFG=str(cfg), PY=sys.executable,
               SIZE_K=str(size_k), FILL=str((size_k - free_k) * 1024), READ_ONLY=str(int(read_only)))
    proc = subprocess.run([*UNSHARE, "bash", "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert (keep / "rc").is_file(), proc.stderr[-3000:]
    return int((keep / "rc").read_text()), proc.stderr, keep / "out"


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("paravideo: error:")]


# 33 frames are an mp4 of about 18 KiB, and a checkpoint of the tiny model about 660 KiB.
@pytest.mark.parametrize("size_k, free_k, sections, failing", [
    # The video does not fit: ffmpeg fails at the trailer, the broken file is removed.
    pytest.param(200, 8, {"video": {"num_frames": 33}}, "video.partial.mp4", id="video"),
    # The first checkpoint fits, the second does not: the segments so far become video.incomplete.mp4.
    pytest.param(2048, 1000, {"video": {"num_frames": 33}, "blocks": {"block_frames": 3},
                              "output": {"checkpoint_every": 1, "frames_png": True}}, "checkpoint.pt",
                 id="checkpoint"),
])
def test_full_disk_gives_one_clear_error_and_no_broken_video(tmp_path, tiny_root, size_k, free_k, sections,
                                                            failing):
    rc, stderr, out = _run_on_small_fs(tmp_path, size_k=size_k, free_k=free_k, **sections)
    assert rc == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    [error] = _error_lines(stderr)
    mnt_out = out.parent.parent / "mnt" / "out"
    assert f"no space left on device while writing {mnt_out}/{failing} (output.dir {mnt_out})" in error
    names = {p.name for p in out.iterdir()}
    # Never a finished-looking file from a failed write, never a temp file.
    assert "video.mp4" not in names and "video.partial.mp4" not in names
    assert not [n for n in names if n.startswith(".") and n != LOCK_NAME], names
    assert not list(out.glob("segments/.*")) and not list(out.glob("frames/.*"))
    if failing == "checkpoint.pt":  # what could be kept is kept: a playable video of the finished segments
        assert read_video(out / "video.incomplete.mp4").shape[0] == len(list(out.glob("frames/*.png"))) > 0
        assert (out / "checkpoint.pt").is_file() and list(out.glob("segments/seg-*.mp4"))
    else:
        assert "video.incomplete.mp4" not in names and "could not be finalised and was removed" in error
    run = json.loads((out / "run.json").read_text())  # small: written once the broken file is gone
    assert run["complete"] is False and "no space left on device" in run["error"]


def test_read_only_output_folder_is_refused_before_loading(tmp_path, tiny_root):
    rc, stderr, out = _run_on_small_fs(tmp_path, size_k=200, free_k=100, read_only=True)
    assert rc == 2 and "Traceback" not in stderr, stderr[-3000:]
    [error] = _error_lines(stderr)
    assert "/mnt/out" in error and "is not writable: Read-only file system" in error
    assert not any(out.iterdir())  # nothing written: no run.json means no worker ever started
