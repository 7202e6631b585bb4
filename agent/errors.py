"""One root for the agent's errors, each mixed with the builtin it resembles."""

from __future__ import annotations


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
