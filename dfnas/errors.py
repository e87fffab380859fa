"""The one exception type for bad input."""

from __future__ import annotations

import contextlib
import errno
import re


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


# Why a write fails, by errno: the remedy is the user's (space, quota, permissions), not dfnas's.
WRITE_FAILURES = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                  errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                  errno.EPERM: "operation not permitted"}


def write_failure(exc: BaseException) -> str | None:
    """The reason a write failed if ``exc`` is one (an OSError with a write errno, or an HDF5 error
    whose text carries one: HDF5 reports a full disk as a RuntimeError), else None."""
    if getattr(exc, "errno", None) in WRITE_FAILURES:
        return WRITE_FAILURES[exc.errno]
    if isinstance(exc, (OSError, RuntimeError)):
        found = re.search(r"errno = (\d+)", str(exc))
        if found and int(found.group(1)) in WRITE_FAILURES:
            return WRITE_FAILURES[int(found.group(1))]
    return None


def unwritable(path, exc: BaseException) -> DfnasError:
    """The one line for a file or folder that cannot be written: the path, why, and the remedy."""
    reason = write_failure(exc) or first_line(exc)
    return DfnasError(f"{path}: cannot write it ({reason}); free space or fix the folder's permissions and rerun")


def failed_write_path(exc: BaseException) -> str | None:
    """The file a failed write names, if it names one (``OSError.filename`` or HDF5's ``filename = '...'``)."""
    if getattr(exc, "filename", None):
        return str(exc.filename)
    found = re.search(r"filename = '([^']+)'", str(exc))
    return found.group(1) if found else None
