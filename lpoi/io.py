"""Files in and out: JSON/JSONL records, atomic writes, resumable appends, confined paths, safe images.

Every writer here is atomic (temp file in the same folder + ``os.replace``), so a stage killed at any
point leaves either the old file or the new one under the final name, never a partial one.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import secrets
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "CorruptLineError",
    "ImageRejected",
    "InputError",
    "JsonlAppender",
    "UnsafePathError",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_image_integrity",
    "hashable_key",
    "load_image",
    "parse_jsonl_line",
    "read_json",
    "read_jsonl",
    "read_records",
    "safe_join",
    "sha256_file",
    "write_jsonl",
]

MAX_PIXELS = 50_000_000  # decompression-bomb limit (50 MP), see issue 3
MIN_SIDE = 8  # px; smaller images cannot hold a detectable object


class InputError(ValueError):
    """A data file that cannot be read as documented (encoding, JSON syntax, shape); the message names the
    file, and the line where there is one, and says what was expected. Stages print it as a one-line error."""


class CorruptLineError(InputError):
    """A JSONL line that is not one JSON object (``path``, ``lineno`` say where).

    In a resumable append file (:class:`JsonlAppender`) this is never the trace of a kill (that leaves a
    partial *last* line without its newline, which is cut off and recomputed): the file was edited, or
    written by two processes at once, so nothing in it can be trusted line by line.
    """

    def __init__(self, path: str | os.PathLike, lineno: int, what: str):
        super().__init__(f"{path}:{lineno}: {what}")
        self.path = Path(path)
        self.lineno = lineno


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
    place (``os.replace``); on an exception it is removed, so ``path`` is never left half-written.
    The result has the permissions ``open(path, "w")`` would leave (others on a shared cluster can read it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.fchmod(fd, os.stat(path).st_mode & 0o7777)  # a rewrite keeps the file's own permissions
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _create_temp(path: Path) -> tuple[int, str]:
    """``.<name>.<random>.tmp`` beside ``path``, created with mode 0666 so the kernel applies the umask, as
    for a plain ``open`` (``mkstemp`` would make it 0600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


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
    A complete line (newline included) that is not a JSON object raises :class:`CorruptLineError`
    naming the file and line instead of being dropped: a kill cannot produce one, so the file was
    edited or written twice at once, and recomputing that one line would hide it.
    """

    def __init__(self, path: str | os.PathLike, key: str = "id"):
        self.path = Path(path)
        self.key = key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set = set()
        if self.path.exists():
            raw = self.path.read_bytes()
            cut = raw.rfind(b"\n") + 1
            for lineno, line in enumerate(raw[:cut].split(b"\n")[:-1], 1):  # validate before truncating
                if line.strip():
                    self.done.add(hashable_key(parse_jsonl_line(line, self.path, lineno).get(key)))
            if cut != len(raw):  # partial last line from a kill: drop it, it gets recomputed
                with open(self.path, "r+b") as f:
                    f.truncate(cut)
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, row: dict) -> str:
        """Append ``row`` durably; return the line written."""
        line = json.dumps(row, ensure_ascii=False) + "\n"
        self._f.write(line)
        self._f.flush()
        os.fsync(self._f.fileno())
        self.done.add(hashable_key(row.get(self.key)))
        return line

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def hashable_key(v: Any) -> Any:
    """A row's id as a set/dict key: lists and dicts (JSON ids may be either) as canonical JSON text."""
    return json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v


# ---------------------------------------------------------------------------------------------- reads


def parse_jsonl_line(line: str | bytes, path: str | os.PathLike, lineno: int) -> dict:
    """One JSONL line as a dict; anything else raises :class:`CorruptLineError` naming file and line."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CorruptLineError(path, lineno, f"not UTF-8 text (byte 0x{line[e.start]:02x} at column "
                                                 f"{e.start + 1})") from None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise CorruptLineError(path, lineno, f"invalid JSON (truncated or corrupt line): {e.msg} at column "
                                             f"{e.colno}") from None
    if not isinstance(obj, dict):
        raise CorruptLineError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        text = _decode(path, path.read_bytes())
    except FileNotFoundError:
        raise FileNotFoundError(f"file not found: {path}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Stream JSON objects, one per non-empty line (UTF-8); errors (:class:`CorruptLineError`) name the
    file and line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"file not found: {path}")
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield parse_jsonl_line(line, path, lineno)


def _encoding(head: bytes) -> str:
    """The encoding of a JSON text, detected as :func:`json.loads` does for bytes (RFC 8259 §8.1): UTF-8
    with or without a BOM, UTF-16/32 by their BOM or the zero bytes around the first ASCII characters."""
    return json.detect_encoding(head)


def _decode(path: Path, raw: bytes) -> str:
    enc = _encoding(raw[:4])
    try:
        return raw.decode(enc)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InputError(
            f"{path}:{line}: not {enc.upper().replace('-SIG', '')} text (byte 0x{raw[e.start]:02x} at offset "
            f"{e.start}); save the file as UTF-8"
        ) from None


_NEWLINE = re.compile(r"\r\n?|\n")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(lineno, text)`` of every line. UTF-8 (the normal case) is streamed and decoded line by line, so
    an error names its line; UTF-16/32 files (rare: Windows tools) are decoded whole."""
    with open(path, "rb") as f:
        enc = _encoding(f.read(4))
    if enc not in ("utf-8", "utf-8-sig"):
        # not str.splitlines: it also splits at U+2028/9, U+0085 and more, which JSON strings may hold as
        # they are; a raw CR or LF cannot be inside a JSON string, so only they end a line
        yield from enumerate(_NEWLINE.split(_decode(path, path.read_bytes())), 1)
        return
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                 f"{e.start + 1}); save the file as UTF-8") from None


def read_records(path: str | os.PathLike, record_keys: Iterable[str] = ()) -> Iterator[Any]:
    """The records of a JSON list or JSONL file, told apart by content (the LPOI/mDPO data ships as a list).

    Encoding: as :func:`json.loads` on bytes (UTF-8, or UTF-16/32 with a BOM or detectable from the first
    characters): the standard library reads them, so a file saved by a Windows tool works; anything else
    that is not UTF-8 is an :class:`InputError` naming the file and line. JSONL lines may be anything
    JSON (the caller rejects non-objects one by one), but a file that holds a single JSON value which is
    neither a list nor an object with one of ``record_keys`` (e.g. ``{"data": [...]}``, a pretty-printed
    wrapper, a bare string) is an :class:`InputError` saying a list is expected.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"file not found: {path}")
    lines = _lines(path)
    first = next(((n, t) for n, t in lines if t.strip()), None)
    if first is None:
        return
    if first[1].lstrip().startswith("["):
        data = read_json(path)
        if not isinstance(data, list):
            raise InputError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        yield from data
        return
    try:
        head = json.loads(first[1])
    except json.JSONDecodeError as e:
        yield _single_value(path, e, first[0], record_keys)  # a pretty-printed object, or an error
        return
    second = next(((n, t) for n, t in lines if t.strip()), None)
    if second is None:
        yield _check_single(path, head, record_keys)
        return
    yield head
    for lineno, text in itertools.chain([second], lines):
        if not text.strip():
            continue
        try:
            yield json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{lineno}: invalid JSON: {e.msg} at column {e.colno}") from None


def _single_value(path: Path, line_error: json.JSONDecodeError, lineno: int, record_keys) -> Any:
    """The file's first line is not JSON by itself: the whole file may be one (multi-line) JSON value."""
    try:
        value = read_json(path)
    except InputError:
        raise InputError(f"{path}:{lineno}: invalid JSON: {line_error.msg} at column {line_error.colno} "
                         "(expected a JSON list or JSONL: one record per line)") from None
    return _check_single(path, value, record_keys)


def _check_single(path: Path, value: Any, record_keys) -> Any:
    keys = set(record_keys)
    if isinstance(value, dict) and (not keys or keys & value.keys()):
        return value  # JSONL with a single record
    if isinstance(value, dict):
        shown = ", ".join(sorted(map(str, value))[:8])
        lists = [k for k, v in value.items() if isinstance(v, list)]
        hint = f"; the records may be the list under {lists[0]!r}" if lists else ""
        raise InputError(f"{path}: expected a JSON list of records (or JSONL, one per line), got a JSON object "
                         f"with keys {shown}{hint}")
    raise InputError(f"{path}: expected a JSON list of records (or JSONL, one per line), got a JSON "
                     f"{type(value).__name__}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- images


def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE):
    """Open, fully decode, apply EXIF orientation and convert to 8-bit RGB
    (:func:`decode_image`, then :func:`finish_image`).

    Raises :class:`ImageRejected` with reason ``missing``, ``unreadable``, ``truncated``, ``corrupt``,
    ``bad_checksum`` (a PNG chunk CRC; checked before decoding, as Pillow's decoder skips the IDAT ones),
    ``too_large`` or ``too_small``. JPEG damage that libjpeg papers over is not seen here: see
    :func:`check_image_integrity`.
    """
    return finish_image(decode_image(path, max_pixels), min_side)


def decode_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS):
    """The first half of :func:`load_image`: the file opened and fully decoded, as stored (its mode,
    ``format`` and EXIF still at hand). Raises :class:`ImageRejected` for every reason but ``too_small``."""
    from PIL import Image

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
            if img.format == "PNG":
                _check_png_crcs(path)
            img.load()  # full decode: truncated files raise here (LOAD_TRUNCATED_IMAGES stays False)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageRejected("too_large", str(e)) from None
    except OSError as e:
        msg = str(e)
        # Pillow: "image file is truncated" when the data ends early; "broken data stream" when the
        # decoder meets data it cannot decode (a zlib/deflate error in a PNG, a bad marker in a JPEG)
        low = msg.lower()
        reason = "truncated" if "truncated" in low else "corrupt" if "broken data stream" in low else "unreadable"
        raise ImageRejected(reason, f"{path}: {msg}") from None
    except Exception as e:  # PIL raises assorted errors on garbage
        raise ImageRejected("unreadable", f"{path}: {type(e).__name__}: {e}") from None
    return img


def finish_image(img, min_side: int = MIN_SIDE):
    """The second half of :func:`load_image`: a new 8-bit RGB image of the decoded ``img`` with its EXIF
    orientation applied (``img`` itself is left as it is); ``too_small`` below ``min_side`` px."""
    from PIL import ImageOps

    img = ImageOps.exif_transpose(img)
    img = to_rgb(img)
    if min(img.size) < min_side:
        raise ImageRejected("too_small", f"{img.size[0]}x{img.size[1]} has a side < {min_side} px")
    return img


# libjpeg's warnings for damaged entropy-coded data (jerror.h: JWRN_HIT_MARKER, JWRN_EXTRANEOUS_DATA,
# JWRN_HUFF_BAD_CODE, JWRN_ARITH_BAD_CODE, JWRN_MUST_RESYNC, JWRN_JPEG_EOF, JWRN_NOT_SEQUENTIAL,
# JWRN_BOGUS_PROGRESSION). Benign ones (unknown JFIF revision, Adobe transform) are not listed.
_LIBJPEG_CORRUPT = ("Corrupt JPEG data", "Premature end of JPEG file", "Invalid SOS parameters",
                    "Inconsistent progression sequence")
_STDERR_LOCK = threading.Lock()


def _check_png_crcs(path: Path) -> None:
    """Every chunk's CRC (``Image.verify``, no decompression); other problems are left to the decoder."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
    except SyntaxError as e:
        if "checksum" in str(e):
            raise ImageRejected("bad_checksum", f"{path}: {e}") from None
    except Exception:  # noqa: BLE001 - truncation and the rest are judged by the full decode
        pass


def check_image_integrity(path: str | os.PathLike, fmt: str | None = None) -> None:
    """Reject JPEG damage that decoding with Pillow lets through; call after :func:`load_image` accepted
    the file (it has checked the size, so the extra decode is bounded).

    libjpeg only *warns* about corrupt entropy-coded data (bad Huffman code, premature end of a data
    segment, stray bytes before a marker), fills the rest with grey or garbage and goes on; Pillow drops
    those warnings. OpenCV's decoder (also libjpeg-turbo) prints them on the C ``stderr``, so the file is
    decoded there (at 1/8 scale: every coefficient is still entropy-decoded, ~3x cheaper than a full
    decode) with file descriptor 2 pointed at a temp file for the call; anything else captured is written
    back to ``stderr``. Raises :class:`ImageRejected` (reason ``corrupt``). Corruption that happens to
    decode to valid codes is invisible to any decoder and passes. Other formats: nothing to do.
    ``fmt``: the file's Pillow format when the caller has it (:func:`decode_image`'s ``format``), else
    the file is opened to learn it.
    """
    from PIL import Image

    path = Path(path)
    if fmt is None:
        try:
            with Image.open(path) as im:
                fmt = im.format
        except Exception:  # noqa: BLE001 - not an image: load_image says so
            return
    if fmt in ("JPEG", "MPO"):
        found = _libjpeg_warnings(path.read_bytes())
        if found:
            raise ImageRejected("corrupt", f"{path}: the JPEG decoder reports {found[0]!r}")


def _libjpeg_warnings(data: bytes) -> list[str]:
    import cv2
    import numpy as np

    flags = cv2.IMREAD_REDUCED_GRAYSCALE_8 | cv2.IMREAD_IGNORE_ORIENTATION
    with _STDERR_LOCK, tempfile.TemporaryFile() as cap:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(cap.fileno(), 2)
            cv2.imdecode(np.frombuffer(data, np.uint8), flags)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        cap.seek(0)
        text = cap.read().decode("utf-8", errors="replace")
    found = [ln.strip() for ln in text.splitlines() if ln.strip().startswith(_LIBJPEG_CORRUPT)]
    rest = "".join(ln + "\n" for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(_LIBJPEG_CORRUPT))
    if rest:
        sys.stderr.write(rest)
    return found


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
