"""Video sink: appends frames to an mp4 as they are decoded; the file is finalised on every path."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import torch

FINAL_NAME = "video.mp4"
PARTIAL_NAME = "video.partial.mp4"
INCOMPLETE_NAME = "video.incomplete.mp4"
SEGMENT_DIR = "segments"


class VideoSink:
    """Streams uint8 frames into `<dir>/video.partial.mp4` (libx264, yuv420p).

    `close(complete=True)` names the result video.mp4; a failed run's file is finalised (playable)
    and named video.incomplete.mp4, so nothing that looks like a finished video is left behind.
    `cut()` closes the current segment (resume checkpoints do this): segments are joined without
    re-encoding, so a resumed run gives the same frames as an uninterrupted one.
    """

    def __init__(self, out_dir: Path, *, width: int, height: int, fps: int, frames_png: bool = False):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.width, self.height, self.fps = width, height, fps
        self.frames_png = frames_png
        self.frames_written = 0
        self.segments: list[str] = []  # finished segments, oldest first (names under segments/)
        self.path: Path | None = self.dir / PARTIAL_NAME
        self._writer = None
        if frames_png:
            (self.dir / "frames").mkdir(exist_ok=True)

    def _open(self):
        import imageio_ffmpeg

        writer = imageio_ffmpeg.write_frames(
            str(self.dir / PARTIAL_NAME), (self.width, self.height), fps=self.fps, codec="libx264",
            pix_fmt_out="yuv420p", macro_block_size=1, quality=None, output_params=["-crf", "18"],
            ffmpeg_log_level="error")
        writer.send(None)  # start ffmpeg
        return writer

    def write(self, frames_thwc: torch.Tensor) -> None:
        """Append `(t, H, W, 3)` uint8 frames."""
        assert frames_thwc.dtype == torch.uint8 and frames_thwc.shape[1:] == (self.height, self.width, 3)
        if self._writer is None:
            self._writer = self._open()
        for frame in np.ascontiguousarray(frames_thwc.numpy()):
            self._writer.send(frame)
            if self.frames_png:
                import imageio.v3 as iio

                iio.imwrite(self.dir / "frames" / f"{self.frames_written:06d}.png", frame)
            self.frames_written += 1

    def cut(self) -> None:
        """Finalise the current segment and keep it; the next write starts a new one."""
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        (self.dir / SEGMENT_DIR).mkdir(exist_ok=True)
        name = f"seg-{len(self.segments):05d}.mp4"
        os.replace(self.dir / PARTIAL_NAME, self.dir / SEGMENT_DIR / name)
        self.segments.append(name)

    def state(self) -> dict:
        """What a resume needs: finished segments and the frame count (call right after `cut`)."""
        return {"segments": list(self.segments), "frames_written": self.frames_written}

    def load_state(self, state: dict) -> None:
        """Continue after the segments of `state`; later segments and partial files are dropped."""
        self.segments = list(state["segments"])
        self.frames_written = int(state["frames_written"])
        seg_dir = self.dir / SEGMENT_DIR
        for stale in seg_dir.glob("seg-*.mp4") if seg_dir.is_dir() else []:
            if stale.name not in self.segments:
                stale.unlink()
        missing = [s for s in self.segments if not (seg_dir / s).is_file()]
        if missing:
            raise FileNotFoundError(f"cannot resume: video segment(s) {missing} are missing from {seg_dir}")

    def close(self, *, complete: bool, keep_segments: bool = False) -> Path | None:
        """Finalise the mp4 and give it its final name; returns it (None if no frame was written)."""
        self.cut()
        target = self.dir / (FINAL_NAME if complete else INCOMPLETE_NAME)
        self.path = None
        if not self.segments:
            return None
        parts = [self.dir / SEGMENT_DIR / s for s in self.segments]
        if len(parts) == 1 and not keep_segments:
            os.replace(parts[0], target)
        else:
            _concat(parts, target)
            if not keep_segments:
                for part in parts:
                    part.unlink()
        if not keep_segments:
            self.segments = []
            seg_dir = self.dir / SEGMENT_DIR
            if seg_dir.is_dir() and not any(seg_dir.iterdir()):
                seg_dir.rmdir()
        self.path = target
        return target


def _concat(parts: list[Path], target: Path) -> None:
    """Join mp4 segments without re-encoding (ffmpeg's concat demuxer)."""
    import imageio_ffmpeg

    listing = target.with_name(f".{target.name}.txt")
    listing.write_text("".join(f"file '{p.resolve()}'\n" for p in parts))
    tmp = target.with_name(f".{target.name}.tmp.mp4")
    try:
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "concat", "-safe", "0",
                        "-i", str(listing), "-c", "copy", str(tmp)], check=True, capture_output=True)
        os.replace(tmp, target)
    finally:
        listing.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


def read_video(path: Path) -> np.ndarray:
    """Decode an mp4 to `(t, H, W, 3)` uint8 (for tests and checks; no ffprobe needed)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    width, height = meta["size"]
    frames = [np.frombuffer(buf, dtype=np.uint8).reshape(height, width, 3) for buf in reader]
    return np.stack(frames) if frames else np.zeros((0, height, width, 3), np.uint8)
