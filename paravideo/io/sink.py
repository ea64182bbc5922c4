"""Video sink: appends frames to an mp4 as they are decoded; the file is finalised on every path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

FINAL_NAME = "video.mp4"
PARTIAL_NAME = "video.partial.mp4"
INCOMPLETE_NAME = "video.incomplete.mp4"


class VideoSink:
    """Streams uint8 frames into `<dir>/video.partial.mp4` (libx264, yuv420p).

    `close(complete=True)` renames it to video.mp4; a failed run's file is finalised (playable) and
    named video.incomplete.mp4, so nothing that looks like a finished video is left behind.
    """

    def __init__(self, out_dir: Path, *, width: int, height: int, fps: int, frames_png: bool = False):
        import imageio_ffmpeg

        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.width, self.height, self.fps = width, height, fps
        self.frames_png = frames_png
        self.frames_written = 0
        self.path = self.dir / PARTIAL_NAME
        self._writer = imageio_ffmpeg.write_frames(
            str(self.path), (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
            macro_block_size=1, quality=None, output_params=["-crf", "18"], ffmpeg_log_level="error")
        self._writer.send(None)  # start ffmpeg
        if frames_png:
            (self.dir / "frames").mkdir(exist_ok=True)

    def write(self, frames_thwc: torch.Tensor) -> None:
        """Append `(t, H, W, 3)` uint8 frames."""
        assert frames_thwc.dtype == torch.uint8 and frames_thwc.shape[1:] == (self.height, self.width, 3)
        array = np.ascontiguousarray(frames_thwc.numpy())
        for frame in array:
            self._writer.send(frame)
            if self.frames_png:
                import imageio.v3 as iio

                iio.imwrite(self.dir / "frames" / f"{self.frames_written:06d}.png", frame)
            self.frames_written += 1

    def close(self, *, complete: bool) -> Path | None:
        """Finalise the mp4 and give it its final name; returns that path (None if no frame was written)."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            if self.frames_written == 0:
                # ffmpeg cannot finalise an mp4 without frames; leave no file that looks like a video.
                try:
                    writer.close()
                except OSError:
                    pass
                self.path.unlink(missing_ok=True)
                self.path = None
                return None
            writer.close()
        if self.path is None:
            return None
        target = self.dir / (FINAL_NAME if complete else INCOMPLETE_NAME)
        os.replace(self.path, target)
        self.path = target
        return target


def read_video(path: Path) -> np.ndarray:
    """Decode an mp4 to `(t, H, W, 3)` uint8 (for tests and checks; no ffprobe needed)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    width, height = meta["size"]
    frames = [np.frombuffer(buf, dtype=np.uint8).reshape(height, width, 3) for buf in reader]
    return np.stack(frames) if frames else np.zeros((0, height, width, 3), np.uint8)
