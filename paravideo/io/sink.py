"""Video sink: appends frames to an mp4 as they are decoded; the file is finalised on every path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from paravideo.io.ffmpeg_writer import EncodeFailed, FfmpegWriter, ffmpeg_exe
from paravideo.io.write_error import OutputWriteError, write_error

FINAL_NAME = "video.mp4"
PARTIAL_NAME = "video.partial.mp4"
INCOMPLETE_NAME = "video.incomplete.mp4"
SEGMENT_DIR = "segments"
CONCAT_LIST = ".concat.txt"  # ffmpeg's concat list, inside segments/ while joining
STDERR_TAIL = 5  # ffmpeg error lines quoted when a join fails
REMOVED = "the unfinished video could not be finalised and was removed"


class VideoSink:
    """Streams uint8 frames into `<dir>/video.partial.mp4` (libx264, yuv420p).

    `close(complete=True)` names the result video.mp4; a failed run's file is finalised (playable)
    and named video.incomplete.mp4, so nothing that looks like a finished video is left behind.
    `cut()` closes the current segment (resume checkpoints do this): segments are joined without
    re-encoding, so a resumed run gives the same frames as an uninterrupted one. A failed write (a
    full disk) raises OutputWriteError and never leaves a file that only looks finished.
    """

    def __init__(self, out_dir: Path, *, width: int, height: int, fps: int, frames_png: bool = False):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.width, self.height, self.fps = width, height, fps
        self.frames_png = frames_png
        self.frames_written = 0
        self.segments: list[str] = []  # finished segments, oldest first (names under segments/)
        self.path: Path | None = self.dir / PARTIAL_NAME
        self._writer: FfmpegWriter | None = None
        self._restored_frames: int | None = None  # frames_written right after a resume's load_state
        if frames_png:
            (self.dir / "frames").mkdir(exist_ok=True)

    def write(self, frames_thwc: torch.Tensor) -> None:
        """Append `(t, H, W, 3)` uint8 frames."""
        assert frames_thwc.dtype == torch.uint8 and frames_thwc.shape[1:] == (self.height, self.width, 3)
        if self._writer is None:
            self._writer = FfmpegWriter(self.dir / PARTIAL_NAME, width=self.width, height=self.height, fps=self.fps)
        for frame in np.ascontiguousarray(frames_thwc.numpy()):
            try:
                self._writer.send(frame)
            except EncodeFailed as err:
                self._writer = None
                raise self._encoder_failed(err) from err
            if self.frames_png:
                self._write_png(frame)
            self.frames_written += 1

    def _write_png(self, frame: np.ndarray) -> None:
        import imageio.v3 as iio

        path = self.dir / "frames" / f"{self.frames_written:06d}.png"
        try:
            iio.imwrite(path, frame)
        except OSError as err:
            path.unlink(missing_ok=True)  # a truncated PNG must not pass for a frame
            raise write_error(err, path, self.dir) from err

    def _encoder_failed(self, err: EncodeFailed) -> OutputWriteError:
        """ffmpeg could not finish the file, so it is broken: remove it and say so."""
        partial = self.dir / PARTIAL_NAME
        partial.unlink(missing_ok=True)
        return write_error(err, partial, self.dir, note=REMOVED)

    def _finish_writer(self) -> None:
        """Close the encoder of the current file; raises OutputWriteError (file removed) if it failed."""
        writer, self._writer = self._writer, None
        try:
            writer.close()
        except EncodeFailed as err:
            raise self._encoder_failed(err) from err

    def cut(self) -> None:
        """Finalise the current segment and keep it; the next write starts a new one."""
        if self._writer is None:
            return
        self._finish_writer()
        seg_dir = self.dir / SEGMENT_DIR
        name = f"seg-{len(self.segments):05d}.mp4"
        try:
            seg_dir.mkdir(exist_ok=True)
        except OSError as err:
            raise write_error(err, seg_dir, self.dir) from err
        os.replace(self.dir / PARTIAL_NAME, seg_dir / name)
        self.segments.append(name)

    def state(self) -> dict:
        """What a resume needs: finished segments and the frame count (call right after `cut`)."""
        return {"segments": list(self.segments), "frames_written": self.frames_written}

    def load_state(self, state: dict) -> None:
        """Continue after the segments of `state`; later segments and partial files are dropped."""
        self.segments = list(state["segments"])
        self.frames_written = self._restored_frames = int(state["frames_written"])
        seg_dir = self.dir / SEGMENT_DIR
        missing = [s for s in self.segments if not (seg_dir / s).is_file()]
        if missing:
            raise FileNotFoundError(f"cannot resume: video segment(s) {missing} are missing from {seg_dir}")
        for stale in seg_dir.glob("seg-*.mp4") if seg_dir.is_dir() else []:
            if stale.name not in self.segments:
                stale.unlink()

    def close(self, *, complete: bool, keep_segments: bool = False) -> Path | None:
        """Finalise the mp4 and give it its final name; returns it (None if no frame was written).

        A failed run's close (complete=False) never raises: it keeps what it can and says on stderr
        what it could not, so the run's own error stays the one reported.
        """
        if complete:
            return self._close(FINAL_NAME, keep_segments)
        earlier = self.dir / INCOMPLETE_NAME
        if self.frames_written == self._restored_frames and self._writer is None and earlier.is_file():
            # A resume that failed before writing a frame: the stopped run's video holds at least as
            # much, and it is not this run's to replace.
            self.path = earlier
            return earlier
        try:
            return self._close(INCOMPLETE_NAME, keep_segments)
        except OutputWriteError as err:
            print(f"paravideo: could not finalise {INCOMPLETE_NAME}: {err}", file=sys.stderr, flush=True)
            self.path = None
            return None

    def _close(self, name: str, keep_segments: bool) -> Path | None:
        target = self.dir / name
        if self._writer is not None and not self.segments and not keep_segments:
            self._finish_writer()  # one file, no checkpoints: it becomes the result as it is
            os.replace(self.dir / PARTIAL_NAME, target)
        else:
            self.cut()
            if not self.segments:
                self.path = None
                return None
            self._join(target, keep_segments)
        self.path = target
        if name == FINAL_NAME:  # a finished video supersedes an earlier attempt's incomplete one
            (self.dir / INCOMPLETE_NAME).unlink(missing_ok=True)
        return target

    def _join(self, target: Path, keep_segments: bool) -> None:
        seg_dir = self.dir / SEGMENT_DIR
        parts = [seg_dir / s for s in self.segments]
        if len(parts) == 1 and not keep_segments:
            os.replace(parts[0], target)
        else:
            try:
                _concat(parts, target)
            except (EncodeFailed, OSError) as err:
                raise write_error(err, target, self.dir, note="the video segments are kept") from err
            if not keep_segments:
                for part in parts:
                    part.unlink()
        if not keep_segments:
            self.segments = []
            if seg_dir.is_dir() and not any(seg_dir.iterdir()):
                seg_dir.rmdir()


def concat_entry(name: str) -> str:
    """One line of an ffmpeg concat list: the name single-quoted, a quote written as '\\''."""
    return "file '" + name.replace("'", "'\\''") + "'\n"


def _concat(parts: list[Path], target: Path) -> None:
    """Join mp4 segments without re-encoding (ffmpeg's concat demuxer); raises EncodeFailed or OSError."""
    # The list sits beside the segments and names them relative to itself, so the output folder's
    # path (spaces, quotes, anything) never has to be written in ffmpeg's list syntax.
    folders = {p.parent for p in parts}
    assert len(folders) == 1, "segments live in one folder"
    listing = folders.pop() / CONCAT_LIST
    tmp = target.with_name(f".{target.name}.tmp.mp4")
    try:
        listing.write_text("".join(concat_entry(p.name) for p in parts))
        proc = subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "concat", "-safe", "0",
                               "-i", os.path.abspath(listing), "-c", "copy", os.path.abspath(tmp)],
                              capture_output=True, text=True, errors="replace")
        if proc.returncode != 0:
            raise EncodeFailed("; ".join(proc.stderr.strip().splitlines()[-STDERR_TAIL:])
                               or f"ffmpeg exited with code {proc.returncode}")
        os.replace(tmp, target)
    finally:
        listing.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)



def check_segment(path: Path) -> str | None:
    """Why the mp4 segment at `path` cannot be joined (missing, truncated, not an mp4), or None if it can."""
    if not path.is_file():
        return "missing"
    # Demux without decoding: cheap, and enough to catch a truncated or foreign file.
    proc = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", os.path.abspath(path), "-c", "copy", "-f", "null",
                           "-"], capture_output=True, text=True, errors="replace")
    if proc.returncode != 0:
        return "damaged (" + ("; ".join(proc.stderr.strip().splitlines()[-2:]) or "ffmpeg cannot read it") + ")"
    return None


def read_video(path: Path) -> np.ndarray:
    """Decode an mp4 to `(t, H, W, 3)` uint8 (for tests and checks; no ffprobe needed)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    width, height = meta["size"]
    frames = [np.frombuffer(buf, dtype=np.uint8).reshape(height, width, 3) for buf in reader]
    return np.stack(frames) if frames else np.zeros((0, height, width, 3), np.uint8)
