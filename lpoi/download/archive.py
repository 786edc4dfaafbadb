"""Safe zip extraction: every member is checked *before* anything is written.

``ZipFile.extractall`` sanitises ``..`` and absolute names silently (renaming instead of refusing),
writes straight to the final names, and trusts the sizes in the header. Here an archive with any
member that is absolute, climbs out with ``..``, is a symlink, is encrypted, or would blow up past
the size/ratio caps is refused as a whole (:class:`UnsafeArchiveError`, nothing extracted).
Each member is then written to a temp file in its target folder and renamed into place, while the
bytes actually produced are counted against the declared size (headers can lie).
"""

from __future__ import annotations

import fnmatch
import os
import stat
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from lpoi.download.errors import UnsafeArchiveError
from lpoi.io import UnsafePathError, atomic_open, safe_join

__all__ = ["DEFAULT_MAX_RATIO", "DEFAULT_MAX_TOTAL", "ExtractResult", "safe_extract"]

DEFAULT_MAX_TOTAL = 16 * 1024**3  # bytes uncompressed; the largest real archive here (VLFeedback images) is ~3 GB
DEFAULT_MAX_RATIO = 100.0  # uncompressed/compressed; JPEG ≈ 1, COCO JSON ≈ 5-10, a zip bomb ≫ 1000
RATIO_MIN_BYTES = 1 << 20  # per-member ratio is only judged for members above 1 MiB (tiny files compress wildly)
MAX_MEMBERS = 2_000_000
JUNK_PREFIXES = ("__MACOSX/",)  # resource forks added by macOS zip tools: never data


@dataclass
class ExtractResult:
    files: list[Path] = field(default_factory=list)  # extracted, in archive order
    sizes: dict[str, int] = field(default_factory=dict)  # posix path relative to dest -> bytes
    skipped: list[str] = field(default_factory=list)  # members not selected (reported, never silent)


def safe_extract(
    zip_path: str | os.PathLike,
    dest: str | os.PathLike,
    members: Iterable[str] | None = None,
    *,
    include: Iterable[str] | None = None,
    flatten: bool = False,
    strip_components: int = 0,
    strip_top_dir: bool = False,
    max_total: int = DEFAULT_MAX_TOTAL,
    max_ratio: float = DEFAULT_MAX_RATIO,
    progress: bool = False,
) -> ExtractResult:
    """Extract ``zip_path`` under ``dest`` after validating every member.

    - ``members``: extract exactly these names (missing ones are an error); default all files.
    - ``include``: glob patterns matched against each member's *basename* (``"AMBER_*.jpg"``);
      non-matching members, ``__MACOSX/`` entries and ``._*`` AppleDouble files are skipped and
      listed in :attr:`ExtractResult.skipped`.
    - ``flatten``: write each file as ``dest/<basename>``; ``strip_components``: drop that many
      leading folders (like ``tar --strip-components``); ``strip_top_dir``: drop the top folder
      only if every selected member sits under the same one (for archives whose inner layout is
      not known in advance). Two members landing on the same target are refused unless they are
      byte-identical (same size and CRC-32), in which case the later one is skipped and reported.
    - Caps: ``max_total`` bytes for the selected members together, ``max_ratio`` for the archive as
      a whole and for each member above 1 MiB.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    result = ExtractResult()
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as e:
        raise UnsafeArchiveError("bad_zip", f"{zip_path}: {e}") from None
    with zf:
        infos = zf.infolist()
        _check_archive(infos, zip_path)
        selected = _select(infos, members, include, result, zip_path)
        if strip_top_dir and not flatten and not strip_components:
            tops = {_target_name(i.filename, False, 0).split("/")[0] for i in selected}
            nested = all("/" in _target_name(i.filename, False, 0) for i in selected)
            strip_components = 1 if len(tops) == 1 and nested else 0
        targets, total = _plan_targets(selected, zip_path, result, flatten=flatten, strip_components=strip_components,
                                       max_total=max_total, max_ratio=max_ratio)
        dest.mkdir(parents=True, exist_ok=True)
        try:
            paths = {rel: safe_join(dest, rel) for rel in targets}
        except UnsafePathError as e:
            raise UnsafeArchiveError("escapes_dest", str(e)) from None
        from tqdm.auto import tqdm

        with tqdm(total=total, unit="B", unit_scale=True, desc=f"unzip {zip_path.name}"[:40],
                  disable=not progress, leave=False) as bar:
            for rel, info in targets.items():
                _extract_one(zf, info, paths[rel], bar)
                result.files.append(paths[rel])
                result.sizes[rel] = info.file_size
    return result


def _check_archive(infos: list[zipfile.ZipInfo], zip_path: Path) -> None:
    """The whole archive is checked, even members we will not extract: names, symlinks, member count."""
    if len(infos) > MAX_MEMBERS:
        raise UnsafeArchiveError("too_many_members", f"{zip_path}: {len(infos)} members > {MAX_MEMBERS}")
    for info in infos:
        _check_name(info.filename, zip_path)
        if _is_symlink(info):
            raise UnsafeArchiveError("symlink", f"{zip_path}: member {info.filename!r} is a symbolic link")


def _select(infos: list[zipfile.ZipInfo], members, include, result: ExtractResult,
            zip_path: Path) -> list[zipfile.ZipInfo]:
    """The members to extract (``members`` exactly, else files matching ``include``, junk left out); the
    rest is listed in ``result.skipped``."""
    by_name = {i.filename: i for i in infos}
    if members is not None:
        wanted = list(members)
        missing = [m for m in wanted if m not in by_name]
        if missing:
            raise UnsafeArchiveError("missing_members", f"{zip_path}: no member(s) {missing}")
        chosen = set(wanted)
        result.skipped = [i.filename for i in infos if i.filename not in chosen and not i.is_dir()]
        return [by_name[m] for m in wanted]
    patterns = None if include is None else list(include)
    selected = []
    for i in infos:
        if i.is_dir():
            continue
        base = PurePosixPath(i.filename).name
        junk = i.filename.startswith(JUNK_PREFIXES) or base.startswith("._")
        if junk or (patterns is not None and not any(fnmatch.fnmatchcase(base, p) for p in patterns)):
            result.skipped.append(i.filename)
        else:
            selected.append(i)
    return selected


def _plan_targets(selected: list[zipfile.ZipInfo], zip_path: Path, result: ExtractResult, *, flatten: bool,
                  strip_components: int, max_total: int, max_ratio: float) -> tuple[dict[str, zipfile.ZipInfo], int]:
    """``{target name: member}`` and the bytes they expand to, after the size, ratio, encryption and
    duplicate-target checks (byte-identical duplicates are skipped and reported)."""
    targets: dict[str, zipfile.ZipInfo] = {}
    total = compressed = 0
    for i in selected:
        if i.flag_bits & 0x1:
            raise UnsafeArchiveError("encrypted", f"{zip_path}: member {i.filename!r} is encrypted")
        total += i.file_size
        compressed += i.compress_size
        if total > max_total:
            raise UnsafeArchiveError(
                "too_large", f"{zip_path}: selected members expand to > {max_total} bytes (cap max_total)")
        if i.file_size > RATIO_MIN_BYTES and i.file_size > max_ratio * max(i.compress_size, 1):
            raise UnsafeArchiveError(
                "ratio", f"{zip_path}: member {i.filename!r} expands {i.file_size}/{i.compress_size} "
                         f"> {max_ratio:g}x (zip bomb?)")
        rel = _target_name(i.filename, flatten, strip_components)
        if rel in targets:
            first = targets[rel]
            if (first.file_size, first.CRC) == (i.file_size, i.CRC):
                result.skipped.append(i.filename)  # same bytes twice: keep one
                total -= i.file_size
                compressed -= i.compress_size
                continue
            raise UnsafeArchiveError(
                "duplicate_target", f"{zip_path}: {first.filename!r} and {i.filename!r} -> {rel!r}")
        targets[rel] = i
    if total > RATIO_MIN_BYTES and total > max_ratio * max(compressed, 1):
        raise UnsafeArchiveError("ratio", f"{zip_path}: archive expands {total}/{compressed} > {max_ratio:g}x")
    return targets, total


def _check_name(name: str, zip_path: Path) -> None:
    if not name or "\x00" in name:
        raise UnsafeArchiveError("bad_name", f"{zip_path}: member name {name!r}")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError("absolute_path", f"{zip_path}: member {name!r} has an absolute path")
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        raise UnsafeArchiveError("parent_traversal", f"{zip_path}: member {name!r} climbs out with '..'")


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)  # Unix mode bits; 0 for DOS-made archives


def _target_name(name: str, flatten: bool, strip: int) -> str:
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if flatten:
        parts = parts[-1:]
    elif strip:
        if len(parts) <= strip:
            raise UnsafeArchiveError("strip", f"member {name!r} has fewer than {strip + 1} path parts")
        parts = parts[strip:]
    return "/".join(parts)


def _extract_one(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, bar) -> None:
    written = 0
    try:
        with atomic_open(target, "wb") as out, zf.open(info) as src:
            while chunk := src.read(1 << 20):
                written += len(chunk)
                if written > info.file_size:  # a header that understates the size: stop before filling the disk
                    raise UnsafeArchiveError(
                        "size_lie", f"member {info.filename!r} produced more than its declared {info.file_size} bytes")
                out.write(chunk)
                bar.update(len(chunk))
    except zipfile.BadZipFile as e:  # bad CRC (e.g. a header understating the size: zipfile truncates)
        raise UnsafeArchiveError("corrupt", f"member {info.filename!r}: {e}") from None
