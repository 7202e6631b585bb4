"""One root for the agent's errors, each mixed with the builtin it resembles, and how any error
is told to people."""

from __future__ import annotations

from drivers.bus import DEVICE, describe_error


class AgentError(Exception):
    """Root of every error raised by the agent package."""


class ConfigError(AgentError, ValueError):
    """The configuration is unusable. ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class StorageError(AgentError, OSError):
    """The outbox database cannot be opened or written."""


class StorageFullError(StorageError):
    """The outbox's filesystem is full (SQLITE_FULL): the batch was not stored; retry later."""


def describe(exc: BaseException) -> str:
    """An error on one line for people, never ``[Errno 2] No such file or directory: '/x'``.

    Opening ``/dev/i2c-N`` says what to do (drivers.bus.describe_error: enable I2C, join the i2c
    group); any other OSError is ``FILE: what happened``, as Unix tools put it; the agent's own
    errors already are sentences.
    """
    if not isinstance(exc, OSError) or exc.errno is None or not exc.strerror:
        return " ".join(str(exc).split()) or type(exc).__name__
    if DEVICE.fullmatch(str(exc.filename or "")):
        return describe_error(exc)
    if exc.filename is None:
        return exc.strerror
    if exc.filename2 is not None:
        return f"{exc.filename} -> {exc.filename2}: {exc.strerror}"
    return f"{exc.filename}: {exc.strerror}"
