"""Downloads for datasets and teachers: http(s) and file:// URLs, checksum verified before use.

A download streams into a temporary file beside the destination and is renamed into place only
after its checksum matched, so an interrupted or corrupted transfer never leaves a file that a
later run would mistake for the real one.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path

from dfnas.errors import DfnasError
from dfnas.runtime import atomic_path

USER_AGENT = "dfnas (https://pypi.org/project/dfnas)"


def download_file(url: str, dest, md5: str | None = None, sha256: str | None = None, timeout: float = 60) -> Path:
    """Fetch ``url`` into ``dest``; raise `DfnasError` (and write nothing) on failure or checksum mismatch."""
    dest = Path(dest)
    digests = {"md5": hashlib.md5(), "sha256": hashlib.sha256()}
    with atomic_path(dest) as tmp:
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as out:
                while block := response.read(1 << 20):
                    out.write(block)
                    for d in digests.values():
                        d.update(block)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise DfnasError(f"download of {url} failed ({reason})") from None
        for name, expected in (("md5", md5), ("sha256", sha256)):
            actual = digests[name].hexdigest()
            if expected and actual != expected.lower():
                raise DfnasError(f"download of {url}: {name} is {actual} but {expected.lower()} was expected")
    return dest


def extract_archive(archive: Path, into: Path) -> None:
    """Unpack a tar archive (any compression) into ``into``, refusing paths that leave it."""
    import tarfile

    try:
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise DfnasError(f"{archive}: cannot unpack ({exc})") from None
