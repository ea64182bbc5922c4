"""One ffmpeg process encoding raw RGB frames into an mp4, whose exit status is checked.

imageio-ffmpeg's writer ignores ffmpeg's exit status, and ffmpeg reports a failed write (a full disk)
only when it writes the trailer, so a broken file looked finished. This writer keeps ffmpeg's last
error lines and raises `EncodeFailed` from `send` or `close` when ffmpeg did not succeed.
"""

from __future__ import annotations

import collections
import os
import subprocess
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np

STDERR_LINES = 20  # ffmpeg's last lines kept for the error message


class EncodeFailed(Exception):
    """ffmpeg exited with an error (its own message is the text)."""


def ffmpeg_exe() -> str:
    """The ffmpeg binary imageio-ffmpeg ships (or finds)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


class FfmpegWriter:
    """Encodes `(H, W, 3)` uint8 frames to `path` (libx264, yuv420p, crf 18)."""

    def __init__(self, path: Path, *, width: int, height: int, fps: int):
        self.path = Path(path)
        # The same command imageio-ffmpeg builds; an absolute path so ffmpeg never reads a "proto:" prefix.
        cmd = [ffmpeg_exe(), "-y", "-f", "rawvideo", "-vcodec", "rawvideo", "-s", f"{width}x{height}",
               "-pix_fmt", "rgb24", "-r", str(Fraction(fps).limit_denominator()), "-i", "-", "-an",
               "-vcodec", "libx264", "-pix_fmt", "yuv420p", "-v", "error", "-crf", "18",
               os.path.abspath(self.path)]
        # Its own session: a Ctrl-C to the job does not kill ffmpeg, which then finalises the file on EOF.
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, start_new_session=True)
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self._drain = threading.Thread(target=self._read_stderr, name="paravideo-ffmpeg-stderr", daemon=True)
        self._drain.start()

    def _read_stderr(self) -> None:
        for line in self._proc.stderr:
            self._stderr.append(line.decode(errors="replace").rstrip())

    def send(self, frame_hwc: np.ndarray) -> None:
        """Pipe one frame to ffmpeg; raises EncodeFailed if ffmpeg has exited."""
        try:
            self._proc.stdin.write(memoryview(np.ascontiguousarray(frame_hwc)).cast("B"))
        except OSError as err:  # a broken pipe: ffmpeg has gone, its stderr says why
            self.close()
            raise EncodeFailed(f"ffmpeg stopped reading frames ({err})") from err

    def close(self) -> None:
        """Send EOF, wait for ffmpeg to write the trailer; raises EncodeFailed if it failed."""
        try:
            self._proc.stdin.close()
        except OSError:
            pass  # ffmpeg already gone; its exit status tells
        try:
            code = self._proc.wait()
        except BaseException:
            self._proc.kill()
            self._proc.wait()
            raise
        self._drain.join()
        if code != 0:
            detail = "; ".join(self._stderr) or f"ffmpeg exited with code {code}"
            raise EncodeFailed(detail)
