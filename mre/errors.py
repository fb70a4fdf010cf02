"""The project's own errors, split by what the person at the terminal should see.

* `UserError`: something the user gave cannot work (data, configuration, a path, a run's state, the
  hub offline). The message names the file, line or option and what was expected; the entry points
  print it as one line (plus a hint) and exit 2, with no traceback: the traceback would point into
  the project's code when the fix is in the user's input.
* `RunInterrupted`: a run stopped by SIGTERM or SIGINT; the entry points exit 128 + the signal number,
  the shell's convention, so a scheduler or script never reads an interrupted run as a success.

Anything else is a bug or an unexpected failure and keeps its traceback.

The project's errors also derive from the built-in type they refine (`ValueError`,
`FileNotFoundError`), so callers that catch those keep working.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """An input that cannot work, with what to do instead; `hint` is an optional second line."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class ConfigError(UserError, ValueError):
    """A configuration value that cannot work (named as the option the user sets)."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder the user pointed at is not there, or is not what it should be."""


class RunInterrupted(Exception):
    """A run stopped by a signal after saying where it stopped and how to continue."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


USER_ERROR_STATUS = 2


@contextmanager
def exit_status_of_errors() -> Iterator[None]:
    """For entry points: a `UserError` becomes one line on stderr and exit status 2; a
    `RunInterrupted` exits 128 + its signal (its message was already logged by the runner)."""
    try:
        yield
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        raise SystemExit(USER_ERROR_STATUS) from None
    except RunInterrupted as e:
        raise SystemExit(e.exit_status) from None
