"""User errors and stops: one clear line and an exit code, never a traceback.

Library code raises `UserError` for anything the user can fix (a missing file, a wrong checkpoint, bad
arguments); entry points wrap their `main` with `run_cli`, which turns it into a one-line message and exit code 2.
`run_cli` also turns SIGTERM and SIGHUP (a scheduler's stop, a closed terminal) into an exception like Ctrl-C's,
so every entry point stops the same way: the `finally` blocks and atomic writes under way clean up (no partial
file), and the exit code is 128 + the signal's number, as a scheduler expects.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

EXIT_USER_ERROR = 2
EXIT_SIGNAL = 128  # + the signal's number: 130 SIGINT, 143 SIGTERM, 129 SIGHUP


class UserError(Exception):
    """A mistake the user can fix; the message names the path and the fix."""


class FatalError(UserError):
    """A user error that ends a whole batch, not only the item it showed on (a full disk, damaged weights)."""


class Stopped(BaseException):
    """SIGTERM or SIGHUP arrived (a BaseException, like KeyboardInterrupt: no `except Exception` swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, _frame: object) -> None:
    raise Stopped(signum)


def run_cli(main: Callable[[], int | None]) -> None:
    """Run an entry point's `main`: `UserError` -> its lines and exit 2; SIGINT / SIGTERM / SIGHUP -> one line
    and 128 + the signal's number (handlers a `main` installs for itself, like the trainer's, take precedence)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_stopped)
    try:
        code = main()
    except UserError as err:
        for line in str(err).splitlines():  # several problems: one line each
            print(f"error: {line}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print(
            "interrupted (SIGINT); what was finished is kept: re-run the same command to continue",
            file=sys.stderr,
        )
        sys.exit(EXIT_SIGNAL + signal.SIGINT)
    except Stopped as stop:
        print(
            f"stopped ({stop}); what was finished is kept: re-run the same command to continue",
            file=sys.stderr,
        )
        sys.exit(EXIT_SIGNAL + stop.signum)
    sys.exit(code or 0)
