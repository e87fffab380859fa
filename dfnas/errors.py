"""One-line errors for bad input, and the entry-point wrapper that prints them."""

from __future__ import annotations

import functools
import sys


class DfnasError(Exception):
    """A problem with the user's input (config, files, teacher) that deserves one clear line.

    Raise it with a message naming the key or file and what was expected; `cli_main`
    prints it without a traceback and exits with status 2.
    """


def cli_main(func):
    """Wrap a ``main(argv=None)`` so that a `DfnasError` becomes ``error: <message>`` and exit 2."""

    @functools.wraps(func)
    def wrapper(argv=None):
        try:
            return func(argv)
        except DfnasError as exc:
            print(f"dfnas: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
