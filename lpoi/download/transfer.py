"""Resumable, verified HTTP(S) downloads: ``.part`` file + Range requests + atomic move into place.

Why not ``urllib.request.urlretrieve``: it writes straight to the final name (a killed run leaves a
truncated file that looks finished), cannot resume, and ``http.client`` treats a body cut short
as a normal EOF. Here the bytes go to ``<name>.part``; a re-run asks for ``Range: bytes=<have>-``
and appends; the result is checked against the recorded size/sha256 and only then renamed to the
final name (``os.replace``, atomic on one filesystem). A mismatch deletes the part file.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from lpoi.download.errors import DownloadError, NetworkError
from lpoi.download.integrity import verify_file, write_stamp

__all__ = ["DownloadResult", "download_file", "part_path"]

USER_AGENT = "lpoi-download/0.1 (+https://github.com/; research data fetcher)"
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    url: str
    status: str  # "downloaded" | "resumed" | "cached" (already present and verified; nothing fetched)
    size: int
    sha256: str
    git_sha1: str | None = None
    bytes_fetched: int = 0


def part_path(dest: str | os.PathLike) -> Path:
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def download_file(
    url: str,
    dest: str | os.PathLike,
    size: int | None = None,
    sha256: str | None = None,
    *,
    git_sha1: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    retries: int = 2,
    progress: bool = True,
    chunk_size: int = 1 << 20,
) -> DownloadResult:
    """Fetch ``url`` to ``dest``, resuming a previous ``.part`` and verifying size/sha256/git blob id.

    - ``dest`` already there and verified (stamp fast path, see :mod:`lpoi.download.integrity`):
      nothing is fetched, status ``"cached"``. There but wrong: :class:`ChecksumMismatch`, and the
      file is left alone (it may have been placed by hand; the message says to remove it).
    - A cut connection leaves the ``.part`` file; up to ``retries`` immediate resumes are tried,
      then :class:`NetworkError` (no connection) or :class:`DownloadError` is raised and the next
      call resumes from the bytes already on disk.
    - The server ignoring ``Range`` (HTTP 200) restarts from zero; 416 with a complete part is fine.
    """
    dest = Path(dest)
    if dest.exists():
        obs = verify_file(dest, size=size, sha256=sha256, git_sha1=git_sha1, url=url)
        return DownloadResult(dest, url, "cached", obs["size"], obs["sha256"], obs.get("git_sha1"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    fetched = 0
    resumed = part.exists() and part.stat().st_size > 0
    with _exclusive(part):
        for attempt in range(retries + 1):
            try:
                fetched += _fetch_into(url, part, size, headers, timeout, progress, chunk_size, dest.name)
                break
            except DownloadError as e:
                if attempt == retries or e.reason not in ("network", "short_body"):
                    raise
                time.sleep(min(2.0**attempt, 10.0) * 0.5)
        obs = verify_file(part, size=size, sha256=sha256, git_sha1=git_sha1, delete_on_mismatch=True,
                          url=url, use_stamp=False)
        os.replace(part, dest)
    _fsync_dir(dest.parent)
    write_stamp(dest, obs)  # the bytes were just hashed: record it so re-runs skip hashing
    return DownloadResult(dest, url, "resumed" if resumed else "downloaded", obs["size"], obs["sha256"],
                          obs.get("git_sha1"), fetched)


def _fetch_into(url, part: Path, size, headers, timeout, progress, chunk_size, label) -> int:
    """One HTTP request appending to ``part``; returns bytes received. Raises on a short body."""
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:  # longer than the real file: garbage, start over
        part.unlink()
        have = 0
    if size is not None and have == size:
        return 0  # complete part from an earlier run (e.g. killed before the rename)
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the part is complete (or bogus; hash decides)
            return 0
        raise DownloadError(f"HTTP {e.code} {e.reason} for {url}", url=url, reason=f"http_{e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise NetworkError(f"cannot reach {url}: {reason}", url=url) from None
    with resp:
        start = 0
        if have and resp.status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have:
                raise DownloadError(
                    f"{url}: bad Content-Range {resp.headers.get('Content-Range')!r} for a resume at {have}",
                    url=url, reason="bad_range")
            start = have
        # 200: the server ignored Range (or this is a fresh start): write from byte 0
        length = resp.headers.get("Content-Length")
        expected_body = int(length) if length is not None and length.isdigit() else None
        total = size if size is not None else (start + expected_body if expected_body is not None else None)
        got = 0
        with open(part, "r+b" if start else "wb") as f, _bar(total, start, progress, label) as bar:
            f.seek(start)
            f.truncate()
            try:
                while chunk := resp.read(chunk_size):
                    f.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
            except (OSError, ValueError) as e:  # reset / timeout / IncompleteRead mid-body
                f.flush()
                raise DownloadError(f"{url}: connection lost after {start + got} bytes ({e}); re-run to resume",
                                    url=url, reason="short_body") from None
            f.flush()
            os.fsync(f.fileno())
        if expected_body is not None and got < expected_body:  # http.client reports a cut body as EOF
            raise DownloadError(
                f"{url}: connection closed after {start + got} of {start + expected_body} bytes; re-run to resume",
                url=url, reason="short_body")
        return got


@contextlib.contextmanager
def _exclusive(part: Path) -> Iterator[None]:
    """Advisory lock so two processes never append to the same ``.part`` (POSIX; no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    lock = part.with_name(part.name + ".lock")
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DownloadError(f"another process is downloading {part.name[:-5]} (lock {lock})",
                                reason="busy") from None
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                lock.unlink()  # while still holding it, so a newcomer never shares our lock file
    finally:
        os.close(fd)


def _bar(total, initial, progress, label):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=label[:40], disable=not progress, leave=False)


def _fsync_dir(d: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

