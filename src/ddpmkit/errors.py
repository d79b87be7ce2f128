"""The user-facing error types: ``ValueError`` subclasses with one-line messages.

Each message names the key or file, what is wrong, and the fix; the command line prints it as
``ddpm: error: ...`` and exits 2. New code imports these from here; the modules that used to
define them (``training.config``, ``training.checkpoint``, ``data.images``) re-export them.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "DatasetError", "SettingsError", "UsageError"]


class ConfigError(ValueError):
    """A user-facing configuration problem; the message names the key and what is allowed."""


class DatasetError(ValueError):
    """A user-facing data problem; the one-line message says what is wrong and how to fix it."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


class UsageError(ValueError):
    """A mistake in the command line itself (a flag that does not apply, a missing argument)."""


class SettingsError(ConfigError):
    """A sampling setting that cannot be used: ``field`` names it, the message says the fix.

    ``str(e)`` is "field: message" for library callers (``model.sample(steps=...)``); the
    command line shows it as "--field: message" (:meth:`as_flag`).
    """

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def as_flag(self) -> str:
        """The message as the command line names the setting (``--steps: ...``)."""
        return f"--{self.field.replace('_', '-')}: {self.message}"
