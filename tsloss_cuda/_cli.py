"""Error reporting shared by the command-line tools: one line on stderr, never a traceback."""
from __future__ import annotations

import sys


def first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else ""


def report_unexpected(exc: BaseException) -> int:
    """Print an unexpected (OS/runtime/value) error as one line; the exit status to return."""
    print(f"error: {type(exc).__name__}: {first_line(exc)}", file=sys.stderr)
    return 1
