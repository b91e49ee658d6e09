"""What every command line of the project shares: one-line errors with exit code 2, Ctrl-C as 130."""

from __future__ import annotations

import sys
from typing import Callable

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(ValueError):
    """An error the user caused (a bad flag, path or value): printed as one line, exit code 2."""


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run ``main(argv)`` and turn user errors into one line on stderr and exit code 2.

    ``ValueError`` (bad config values), ``FileNotFoundError``/``NotADirectoryError``/
    ``PermissionError`` (bad paths) become ``error: <message>``; Ctrl-C exits 130.
    """
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
