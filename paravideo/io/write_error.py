"""A failed write into the output folder as one clear error (a full disk named as such, the OS error kept)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from paravideo.errors import ParavideoError

# ffmpeg reports the OS error as text only; these are the ones a user can act on.
_FFMPEG_ERRNO = {"No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
                 "Read-only file system": errno.EROFS, "Permission denied": errno.EACCES,
                 "File too large": errno.EFBIG, "Input/output error": errno.EIO}
_PHRASE = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
           errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
           errno.EFBIG: "the file is too large for the file system"}


class OutputWriteError(ParavideoError, OSError):
    """Writing a file of the run's output folder failed (disk full, quota, read-only, I/O error).

    Also an OSError, so code that tolerates a failed write (best-effort reports) tolerates this one.
    """

    def __init__(self, message: str, *, path: Path, errno_: int | None):
        super().__init__(message)
        self.path = Path(path)
        self.errno = errno_


def write_error(err: BaseException, path: str | Path, out_dir: str | Path, *, note: str = "") -> OutputWriteError:
    """Map `err` (an OSError, or an ffmpeg failure) met while writing `path` to an OutputWriteError.

    The caller raises it `from err`, so the OS error stays attached as the cause.
    """
    if isinstance(err, OutputWriteError):
        return err
    code = getattr(err, "errno", None)
    text = str(err)
    if code is None:
        code = next((c for phrase, c in _FFMPEG_ERRNO.items() if phrase in text), None)
    what = _PHRASE.get(code) or (os.strerror(code) if code else text.strip().splitlines()[-1] if text.strip()
                                 else type(err).__name__)
    fix = "free some space there" if code in (errno.ENOSPC, errno.EDQUOT) else "check the folder"
    message = f"{what} while writing {path} (output.dir {out_dir})"
    if note:
        message += f"; {note}"
    return OutputWriteError(f"{message}; {fix} (or choose another output.dir) and run again", path=Path(path),
                            errno_=code)
