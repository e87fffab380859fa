"""The one exception type for bad input."""

from __future__ import annotations

import contextlib


class DfnasError(Exception):
    """A problem with the user's input (config, files, teacher) that deserves one clear line.

    Raise it with a message naming the key or file and what was expected; `dfnas.cli.cli_main`
    prints it without a traceback and exits with status 2.
    """


class FileInUse(DfnasError):
    """Another process holds the file's HDF5 lock: a live writer, never to be taken for damage."""


REMAKE = "delete it and rerun to remake it"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def damaged(path, what: str, exc: BaseException) -> DfnasError:
    """The one line for a dfnas file that cannot be read: the file, what failed, and the remedy
    (every such file is a workflow output: deleting it makes Snakemake remake it and what follows)."""
    return DfnasError(f"{path}: {what} ({first_line(exc)}); the file is damaged: {REMAKE}")


@contextlib.contextmanager
def reading(path, what: str = "cannot read it"):
    """Turn the errors HDF5 and torch raise on a damaged file (OSError, RuntimeError, KeyError,
    EOFError) inside the block into `damaged`'s one line; a `DfnasError` passes unchanged."""
    try:
        yield
    except DfnasError:
        raise
    except (OSError, RuntimeError, KeyError, EOFError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise DfnasError(f"{path} does not exist") from None
        raise damaged(path, what, exc) from None
