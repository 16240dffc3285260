"""User-facing errors.

A :class:`UserError` is a mistake the user can fix (a wrong option, a missing file, a
corrupt checkpoint). Its message is one line that names the fix. The CLI prints it
without a traceback and exits with status 2. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; ``str(err)`` is one line naming the fix."""

    def __init__(self, message: str) -> None:
        if "\n" in message:
            raise ValueError("UserError messages must be a single line")
        super().__init__(message)


class NonFiniteLossError(UserError):
    """The search produced a NaN or infinite loss; the last good checkpoint is kept."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run or study; ``str(err)`` is one line saying what was kept and
    the exact command that continues."""

    def __init__(self, message: str) -> None:
        if "\n" in message:
            raise ValueError("Interrupted messages must be a single line")
        super().__init__(message)
