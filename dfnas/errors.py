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


class Damaged(DfnasError):
    """A dfnas file that cannot be read back; ``detail`` says what failed, without the remedy."""

    def __init__(self, message: str, detail: str):
        super().__init__(message)
        self.detail = detail


class Unwritable(DfnasError):
    """A file or folder that cannot be written (no space, a read-only file system, permissions)."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: cannot write it ({reason}); free space or fix the folder's permissions and rerun")
        self.reason = reason


REMAKE = "delete it and rerun to remake it"  # every workflow output: Snakemake remakes it and what follows

# Why a file cannot be opened at all, by errno: not damage, and nothing to delete.
ACCESS_FAILURES = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                   errno.EISDIR: "a folder, not a file"}
# Why a write fails, by errno: the remedy is the user's (space, quota), not dfnas's.
WRITE_FAILURES = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                  errno.EROFS: "read-only file system"}


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _errno(exc: BaseException, table: dict) -> str | None:
    """``table``'s reason for ``exc``'s errno: an OSError's own, or one HDF5 writes into its message
    (it reports a full disk as a RuntimeError with ``errno = 28`` in the text)."""
    if getattr(exc, "errno", None) in table:
        return table[exc.errno]
    if isinstance(exc, (OSError, RuntimeError)):
        found = re.search(r"errno = (\d+)", str(exc))
        if found and int(found.group(1)) in table:
            return table[int(found.group(1))]
    return None


def write_failure(exc: BaseException) -> str | None:
    """Why a write failed, if ``exc`` is a full disk, an exceeded quota or a read-only file system."""
    return _errno(exc, WRITE_FAILURES)


def access_failure(exc: BaseException) -> str | None:
    """Why a file could not be opened, if ``exc`` is a permission problem or a folder in its place."""
    return _errno(exc, ACCESS_FAILURES)


def file_in_use(path) -> FileInUse:
    return FileInUse(f"{path}: another process has it open (HDF5 file lock): let that job finish, or stop it, "
                     "before running this one")


def damaged(path, what: str, exc: BaseException, remedy: str = REMAKE) -> DfnasError:
    """The one line for a dfnas file that cannot be read: the file, what failed, and the remedy
    (``REMAKE`` for workflow outputs). A file another process holds (`FileInUse`) or one that
    cannot be opened for permissions is not damage, and gets its own line."""
    if "unable to lock file" in str(exc):
        return file_in_use(path)
    reason = access_failure(exc)
    if reason:
        return DfnasError(f"{path}: cannot read it ({reason})")
    detail = f"{what} ({first_line(exc)})"
    return Damaged(f"{path}: {detail}; the file is damaged: {remedy}", detail)


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


def unwritable(path, exc: BaseException) -> Unwritable:
    """The one line for a file or folder that cannot be written: the path, why, and the remedy."""
    if isinstance(exc, Unwritable):
        return Unwritable(path, exc.reason)
    return Unwritable(path, write_failure(exc) or access_failure(exc) or first_line(exc))


def failed_write_path(exc: BaseException) -> str | None:
    """The file a failed write names, if it names one (``OSError.filename`` or HDF5's ``filename = '...'``)."""
    if getattr(exc, "filename", None):
        return str(exc.filename)
    found = re.search(r"filename = '([^']+)'", str(exc))
    return found.group(1) if found else None
