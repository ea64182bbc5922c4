"""Project error types: user mistakes get these, internal invariants use assert."""


class ParavideoError(Exception):
    """Base of every error paravideo raises on purpose."""


class ConfigError(ParavideoError, ValueError):
    """The config (or a CLI argument) is invalid; the message names the field and the fix."""


class ModelLoadError(ParavideoError):
    """A model folder is missing, incomplete or malformed."""


class RankFailure(ParavideoError):
    """A worker rank failed; the message names the rank and the cause."""

    def __init__(self, rank: int, cause: str, *, teardown_s: float | None = None):
        super().__init__(f"rank {rank} failed: {cause}")
        self.rank = rank
        self.cause = cause
        # Seconds from the supervisor noticing the failure until every rank had ended.
        self.teardown_s = teardown_s


def describe_error(err: BaseException) -> str:
    """One line naming an error's cause: our own errors by their message, others as `Type: message`."""
    if isinstance(err, ParavideoError):
        return str(err)
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else f"{type(err).__name__} (raised without a message)"
