"""The one exception type for bad input."""

from __future__ import annotations


class DfnasError(Exception):
    """A problem with the user's input (config, files, teacher) that deserves one clear line.

    Raise it with a message naming the key or file and what was expected; `dfnas.cli.cli_main`
    prints it without a traceback and exits with status 2.
    """
