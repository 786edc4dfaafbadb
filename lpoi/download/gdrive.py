"""Google Drive files (the LPOI authors' released data and checkpoints), fetched with ``gdown``.

Drive has no stable direct-download URL (large files need a confirmation step, which ``gdown`` handles),
so this one source type goes through that library; ``pip install 'lpoi[official]'`` installs it. It is
imported only when a Drive file is really fetched. The bytes are verified like every other source
(size/sha256 when recorded, else pinned by the first verified download in the lock).
"""

from __future__ import annotations

import os
from pathlib import Path

from lpoi.download.errors import DownloadError, NetworkError
from lpoi.download.integrity import verify_file, write_stamp
from lpoi.download.transfer import DownloadResult, part_path

__all__ = ["DRIVE", "drive_link", "gdrive_download"]

DRIVE = "https://drive.google.com"
ENDPOINT_ENV = "LPOI_GDRIVE_ENDPOINT"  # a mirror with Drive's /uc?id= interface (the tests' loopback server)


def drive_link(file_id: str) -> str:
    """The page a person opens in a browser to download the file by hand."""
    return f"{DRIVE}/file/d/{file_id}/view"


def gdrive_download(file_id: str, dest: str | os.PathLike, size: int | None = None, sha256: str | None = None, *,
                    progress: bool = True) -> DownloadResult:
    """Fetch Drive file ``file_id`` to ``dest`` through a ``.part`` file (resumed by gdown), then verify it."""
    dest, link = Path(dest), drive_link(file_id)
    if dest.exists():
        obs = verify_file(dest, size=size, sha256=sha256, url=link)
        return DownloadResult(dest, link, "cached", obs["size"], obs["sha256"])
    try:
        import gdown
    except ImportError:
        raise DownloadError("Google Drive files are fetched with gdown, which is not installed: "
                            "pip install 'lpoi[official]' (or gdown>=5)", url=link,
                            reason="missing_dependency") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    url = f"{os.environ.get(ENDPOINT_ENV, DRIVE).rstrip('/')}/uc?id={file_id}"
    try:
        out = gdown.download(url=url, output=str(part), quiet=not progress, resume=part.exists())
    except Exception as e:  # noqa: BLE001 - gdown raises requests', its own and OS errors alike
        detail = " ".join(str(e).split())[:300]
        raise NetworkError(f"Google Drive download of {link} failed: {type(e).__name__}: {detail}", url=link) from None
    if out is None or not part.is_file():
        raise NetworkError(f"Google Drive download of {link} failed (gdown returned no file)", url=link)
    obs = verify_file(part, size=size, sha256=sha256, delete_on_mismatch=True, url=link, use_stamp=False)
    os.replace(part, dest)
    write_stamp(dest, obs)
    return DownloadResult(dest, link, "downloaded", obs["size"], obs["sha256"], bytes_fetched=obs["size"])
