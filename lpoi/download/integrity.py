"""Size + sha256 verification with a stamp file, so a finished multi-GB file is not re-hashed on every run.

The stamp ``.<name>.verified.json`` sits next to the file and records the size, ``st_mtime_ns`` and
hashes observed when the file was last fully hashed. A later check trusts it only while the file's
size and mtime are unchanged *and* the stamp's hash equals the expected one; anything else (the
file was touched, replaced, or a different hash is now expected) triggers a full re-hash.
This is the same trade-off ``make``/DVC make: a same-size in-place edit that also preserves the
mtime to the nanosecond is not detected — delete the stamp (or the file) to force a re-hash.

Optionally a git blob id is checked too: for files on GitHub whose sha256 nobody published, the
blob id (``git hash-object``) from the repository's tree *is* a content hash we can verify.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from lpoi.download.errors import ChecksumMismatch
from lpoi.io import atomic_write_json

__all__ = ["SHA256_RE", "STAMP_SUFFIX", "hash_file", "stamp_path", "stamped_sha256", "verify_file", "write_stamp"]

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
STAMP_SUFFIX = ".verified.json"
_CHUNK = 1 << 20


def stamp_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_name(f".{p.name}{STAMP_SUFFIX}")


def hash_file(path: str | os.PathLike, *, git_sha1: bool = False) -> dict:
    """sha256 (and optionally the git blob sha1, ``sha1(b"blob <size>\\0" + content)``) in one pass."""
    path = Path(path)
    size = path.stat().st_size
    h256 = hashlib.sha256()
    h1 = hashlib.sha1(f"blob {size}\0".encode()) if git_sha1 else None
    with open(path, "rb") as f:
        while b := f.read(_CHUNK):
            h256.update(b)
            if h1 is not None:
                h1.update(b)
    out = {"size": size, "sha256": h256.hexdigest()}
    if h1 is not None:
        out["git_sha1"] = h1.hexdigest()
    return out


def _read_stamp(path: Path) -> dict | None:
    try:
        with open(stamp_path(path), encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _fresh(stamp: dict | None, st: os.stat_result) -> bool:
    return (stamp is not None and stamp.get("size") == st.st_size and stamp.get("mtime_ns") == st.st_mtime_ns
            and bool(SHA256_RE.match(str(stamp.get("sha256", "")))))


def stamped_sha256(path: str | os.PathLike) -> str | None:
    """The sha256 a stamp records for ``path`` while its size and mtime are unchanged; else None (read-only)."""
    stamp = _read_stamp(Path(path))
    return stamp["sha256"] if _fresh(stamp, Path(path).stat()) else None


def verify_file(
    path: str | os.PathLike,
    *,
    size: int | None = None,
    sha256: str | None = None,
    git_sha1: str | None = None,
    delete_on_mismatch: bool = False,
    url: str | None = None,
    use_stamp: bool = True,
) -> dict:
    """Check ``path`` against the expected size / sha256 / git blob id; return the observed values.

    Returns ``{"size", "sha256", ["git_sha1"], "stamped": bool}`` where ``stamped`` says the stamp
    fast path was used (no hashing). Raises :class:`ChecksumMismatch` on any difference, after
    deleting the file when ``delete_on_mismatch`` (used for files we just downloaded, never for
    files a user placed by hand). ``None`` expectations are not checked (the caller records the
    observed hash as "to be filled").
    """
    path = Path(path)
    st = path.stat()
    if size is not None and st.st_size != size:
        _mismatch(path, "size", size, st.st_size, delete_on_mismatch, url)
    if use_stamp:
        stamp = _read_stamp(path)
        if (
            _fresh(stamp, st)
            and (sha256 is None or stamp["sha256"] == sha256)
            and (git_sha1 is None or stamp.get("git_sha1") == git_sha1)
        ):
            out = {"size": st.st_size, "sha256": stamp["sha256"], "stamped": True}
            if "git_sha1" in stamp:
                out["git_sha1"] = stamp["git_sha1"]
            return out
    obs = hash_file(path, git_sha1=git_sha1 is not None)
    if sha256 is not None and obs["sha256"] != sha256:
        _mismatch(path, "sha256", sha256, obs["sha256"], delete_on_mismatch, url)
    if git_sha1 is not None and obs["git_sha1"] != git_sha1:
        _mismatch(path, "git blob sha1", git_sha1, obs["git_sha1"], delete_on_mismatch, url)
    if use_stamp:
        write_stamp(path, obs)
    return {**obs, "stamped": False}


def write_stamp(path: str | os.PathLike, observed: dict) -> None:
    """Record hashes just computed for ``path`` (with its current size and mtime) for the fast path."""
    st = Path(path).stat()
    if st.st_size != observed["size"]:
        raise ValueError(f"{path}: stamp for {observed['size']} bytes but the file has {st.st_size}")
    keep = {k: observed[k] for k in ("size", "sha256", "git_sha1") if k in observed}
    atomic_write_json(stamp_path(path), {**keep, "mtime_ns": st.st_mtime_ns})


def _mismatch(path: Path, what: str, expected, observed, delete: bool, url: str | None) -> None:
    if delete:
        path.unlink(missing_ok=True)
        stamp_path(path).unlink(missing_ok=True)
    raise ChecksumMismatch(str(path), what, expected, observed, url=url, deleted=delete)
