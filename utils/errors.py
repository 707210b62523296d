"""User errors: one clear line and exit code 2, never a traceback.

Library code raises `UserError` for anything the user can fix (a missing file, a wrong checkpoint, bad
arguments); entry points wrap their `main` with `run_cli`, which turns it into a one-line message.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake the user can fix; the message names the path and the fix."""


def run_cli(main: Callable[[], int | None]) -> None:
    """Run an entry point's `main`, mapping `UserError` to a one-line message and exit code 2."""
    try:
        code = main()
    except UserError as err:
        for line in str(err).splitlines():  # several problems: one line each
            print(f"error: {line}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
