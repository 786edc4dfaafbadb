"""Files in and out: JSON/JSONL records, atomic writes, resumable appends, confined paths, safe images.

Every writer here is atomic (temp file in the same folder + ``os.replace``), so a stage killed at any
point leaves either the old file or the new one under the final name, never a partial one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "ImageRejected",
    "JsonlAppender",
    "UnsafePathError",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "load_image",
    "read_json",
    "read_jsonl",
    "read_records",
    "safe_join",
    "sha256_file",
    "write_jsonl",
]

MAX_PIXELS = 50_000_000  # decompression-bomb limit (50 MP), see issue 3
MIN_SIDE = 8  # px; smaller images cannot hold a detectable object


class UnsafePathError(ValueError):
    """A path that is absolute, climbs out with ``..``, or resolves (via symlinks) outside its root."""


class ImageRejected(ValueError):
    """An image that cannot be used; ``reason`` is a stable machine-readable code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------------------------------------- paths


def safe_join(root: str | os.PathLike, rel: str) -> Path:
    """Resolve ``rel`` under ``root``; refuse absolute paths, ``..`` and symlinks leading out.

    >>> safe_join("/data", "a/b.png").as_posix().endswith("a/b.png")
    True
    """
    if not isinstance(rel, str) or not rel:
        raise UnsafePathError(f"path must be a non-empty string, got {rel!r}")
    if "\x00" in rel:
        raise UnsafePathError(f"path contains a NUL byte: {rel!r}")
    p = Path(rel)
    if p.is_absolute() or rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":"):
        raise UnsafePathError(f"absolute path not allowed: {rel!r}")
    if ".." in p.parts:
        raise UnsafePathError(f"'..' not allowed in path: {rel!r}")
    root_resolved = Path(root).resolve()
    full = (root_resolved / p).resolve()
    if full != root_resolved and root_resolved not in full.parents:
        raise UnsafePathError(f"path {rel!r} resolves outside its root {str(root_resolved)!r}")
    return full


# ---------------------------------------------------------------------------------------------- writes


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w"):
    """Write ``path`` through a temp file in the same folder: on a clean exit it is fsynced and moved into
    place (``os.replace``); on an exception it is removed, so ``path`` is never left half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, sort_keys=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write all rows atomically; returns the number written."""
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


class JsonlAppender:
    """Append-only JSONL for resumable stages: one flushed line per finished item.

    On open, a trailing partial line (the process was killed mid-write) is cut off, and the
    values of ``key`` already present are available as ``done`` so the caller skips them.
    """

    def __init__(self, path: str | os.PathLike, key: str = "id"):
        self.path = Path(path)
        self.key = key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set = set()
        if self.path.exists():
            raw = self.path.read_bytes()
            cut = raw.rfind(b"\n") + 1
            if cut != len(raw):  # partial last line from a kill: drop it, it gets recomputed
                with open(self.path, "r+b") as f:
                    f.truncate(cut)
            for line in raw[:cut].decode("utf-8").splitlines():
                if line.strip():
                    self.done.add(_hashable(json.loads(line).get(key)))
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.done.add(_hashable(row.get(self.key)))

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _hashable(v: Any) -> Any:
    return json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v


# ---------------------------------------------------------------------------------------------- reads


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Stream JSON objects, one per non-empty line; errors name the file and line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"file not found: {path}")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield obj


def read_records(path: str | os.PathLike) -> Iterator[Any]:
    """A JSON list or JSONL file, by content (the LPOI/mDPO data ships as a JSON list)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"file not found: {path}")
    with open(path, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    if head.startswith("["):
        data = read_json(path)
        yield from data
    else:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- images


def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE):
    """Open, fully decode, apply EXIF orientation and convert to 8-bit RGB.

    Raises :class:`ImageRejected` with reason ``missing``, ``unreadable``, ``truncated``,
    ``too_large`` or ``too_small``.
    """
    from PIL import Image, ImageOps

    path = Path(path)
    if not path.is_file():
        raise ImageRejected("missing", f"no such image file: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            w, h = img.size
            if w * h > max_pixels:
                raise ImageRejected("too_large", f"{w}x{h} = {w * h} px exceeds {max_pixels}")
            img.load()  # full decode: truncated files raise here (LOAD_TRUNCATED_IMAGES stays False)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageRejected("too_large", str(e)) from None
    except OSError as e:
        msg = str(e)
        reason = "truncated" if "truncated" in msg.lower() or "broken data stream" in msg.lower() else "unreadable"
        raise ImageRejected(reason, f"{path}: {msg}") from None
    except Exception as e:  # PIL raises assorted errors on garbage
        raise ImageRejected("unreadable", f"{path}: {type(e).__name__}: {e}") from None
    img = ImageOps.exif_transpose(img)
    img = to_rgb(img)
    if min(img.size) < min_side:
        raise ImageRejected("too_small", f"{img.size[0]}x{img.size[1]} has a side < {min_side} px")
    return img


def to_rgb(img):
    """8-bit RGB from any PIL mode: palette, alpha (composited on white), CMYK, 16-bit, float, grayscale."""
    from PIL import Image

    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        import numpy as np

        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype("uint8")
        return Image.fromarray(a, "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, img).convert("RGB")
    return img.convert("RGB")
