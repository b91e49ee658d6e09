"""What every command line of the project shares: one-line errors with exit code 2, Ctrl-C as 130."""

from __future__ import annotations

import sys
from typing import Callable

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(ValueError):
    """An error the user caused (a bad flag, path or value): printed as one line, exit code 2."""


def os_error_line(exc: OSError) -> str:
    """``<path>: <cause>`` for an OSError that names a path (a read-only folder, a full disk), else
    its own message: the user fixes the environment, so the line says where and what."""
    if exc.filename is None:
        return str(exc) or type(exc).__name__
    cause = exc.strerror or type(exc).__name__
    target = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else str(exc.filename)
    return f"{target}: {cause}"


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run ``main(argv)`` and turn user errors into one line on stderr and exit code 2.

    ``ValueError`` (bad config values) and any ``OSError`` (a bad path, a read-only or full disk)
    become ``error: <message>``; Ctrl-C exits 130.
    """
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, OSError) as exc:
        text = os_error_line(exc) if isinstance(exc, OSError) else str(exc)
        message = text.splitlines()[0] if text else type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
