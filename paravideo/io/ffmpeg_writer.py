"""One ffmpeg process encoding raw RGB frames into an mp4, whose exit status is checked.

imageio-ffmpeg's writer ignores ffmpeg's exit status, and ffmpeg reports a failed write (a full disk)
only when it writes the trailer, so a broken file looked finished. This writer keeps ffmpeg's last
error lines and raises `EncodeFailed` from `send` or `close` when ffmpeg did not succeed.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np

STDERR_LINES = 5  # ffmpeg's last lines quoted in the error message


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
        # Its messages go to an unnamed temp file, not a pipe: if this process dies, ffmpeg still
        # finalises the file without meeting a closed pipe on the way.
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      stderr=self._stderr, start_new_session=True)
        self._failure: str | None = None

    def _messages(self) -> str:
        """ffmpeg's last lines of output."""
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        return "; ".join(line.strip() for line in lines[-STDERR_LINES:])

    def send(self, frame_hwc: np.ndarray) -> None:
        """Pipe one frame to ffmpeg; raises EncodeFailed if ffmpeg has exited."""
        try:
            self._proc.stdin.write(memoryview(np.ascontiguousarray(frame_hwc)).cast("B"))
        except OSError as err:  # a broken pipe: ffmpeg has gone, its stderr says why
            self.close()
            raise EncodeFailed(f"ffmpeg stopped reading frames ({err})") from err

    def close(self) -> None:
        """Send EOF, wait for ffmpeg to write the trailer; raises EncodeFailed if it failed (every call)."""
        if self._failure is not None or self._stderr.closed:
            if self._failure is not None:
                raise EncodeFailed(self._failure)
            return
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
        detail = self._messages()
        self._stderr.close()
        if code != 0:
            self._failure = detail or f"ffmpeg exited with code {code}"
            raise EncodeFailed(self._failure)
