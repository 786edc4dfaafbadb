"""The recorded sources (``lpoi/sources.json``): typed, validated, with errors that name the entry.

A hash is either 64 lowercase hex digits or the literal marker :data:`TO_BE_FILLED`; anything else
(a typo, a truncated hash) is refused rather than silently treated as "unknown".
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from lpoi.download.archive import DEFAULT_MAX_RATIO, DEFAULT_MAX_TOTAL

__all__ = ["DEFAULT_SOURCES", "TO_BE_FILLED", "DatasetSpec", "ExtractSpec", "FileSpec", "HubRef", "load_sources"]

DEFAULT_SOURCES = Path(__file__).resolve().parent.parent / "sources.json"
TO_BE_FILLED = "to be filled on first verified download"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    filename: str
    revision: str  # a 40-hex commit pins the bytes; a branch name ("main") does not
    repo_type: str = "dataset"

    def url(self, endpoint: str = "https://huggingface.co") -> str:
        prefix = {"dataset": "datasets/", "space": "spaces/"}.get(self.repo_type, "")
        return (f"{endpoint.rstrip('/')}/{prefix}{self.repo_id}/resolve/"
                f"{quote(self.revision, safe='')}/{quote(self.filename)}")


@dataclass(frozen=True)
class ExtractSpec:
    into: str  # folder under the dataset root
    members: tuple[str, ...] | None = None
    include: tuple[str, ...] | None = None  # basename globs
    flatten: bool = False
    strip_components: int = 0
    strip_top_dir: bool = False
    expect_count: int | None = None  # files the extraction must produce (e.g. 1004 AMBER images)
    max_total: int = DEFAULT_MAX_TOTAL
    max_ratio: float = DEFAULT_MAX_RATIO


@dataclass(frozen=True)
class FileSpec:
    path: str  # relative to the dataset root: the file, or (archives) where a hand-placed copy is looked for
    url: str | None = None
    hub: HubRef | None = None
    gdrive: str | None = None  # a Google Drive file id (fetched with gdown: lpoi.download.gdrive)
    size: int | None = None
    sha256: str | None = None  # None = TO_BE_FILLED in the JSON
    git_sha1: str | None = None  # git blob id from the source repo's tree: a content hash when sha256 is unknown
    extract: ExtractSpec | None = None
    note: str = ""
    manual: str = ""  # extra instructions for placing this file by hand

    def source(self, endpoint: str = "https://huggingface.co") -> str:
        if self.gdrive:
            from lpoi.download.gdrive import drive_link

            return drive_link(self.gdrive)
        return self.hub.url(endpoint) if self.hub else str(self.url)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    licence: str
    layout: tuple[str, ...]
    files: tuple[FileSpec, ...]
    checks: tuple[dict, ...] = ()
    homepage: str = ""
    kind: str = "dataset"  # "dataset" (under data/external) | "checkpoint" (model weights, under models/external)

    @property
    def default_root(self) -> str:
        return "models/external" if self.kind == "checkpoint" else "data/external"


def load_sources(path: str | os.PathLike | None = None) -> dict[str, DatasetSpec]:
    """Parse and validate a sources file (default: the one shipped in ``lpoi/sources.json``): its
    ``datasets`` and its ``checkpoints`` (model weights; same entry format) in one mapping by name."""
    path = Path(path) if path is not None else DEFAULT_SOURCES
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"sources file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("datasets"), dict) \
            or not isinstance(raw.get("checkpoints", {}), dict):
        raise ValueError(f"{path}: expected an object with a 'datasets' mapping (and optionally 'checkpoints')")
    out = {name: _dataset(name, d, path) for name, d in raw["datasets"].items()}
    for name, d in raw.get("checkpoints", {}).items():
        if name in out:
            raise ValueError(f"{path}: checkpoints.{name}: the name is also a dataset")
        out[name] = dataclasses.replace(_dataset(name, d, path, "checkpoints"), kind="checkpoint")
    return out


def _dataset(name: str, d: dict, src: Path, section: str = "datasets") -> DatasetSpec:
    where = f"{src}: {section}.{name}"
    _expect_keys(d, {"description", "licence", "layout", "files", "checks", "homepage"}, where)
    files = tuple(_file(f, f"{where}.files[{i}]") for i, f in enumerate(_req(d, "files", list, where)))
    paths = [f.path for f in files]
    if len(set(paths)) != len(paths):
        raise ValueError(f"{where}: duplicate file paths {sorted(p for p in paths if paths.count(p) > 1)}")
    return DatasetSpec(
        name=name,
        description=_req(d, "description", str, where),
        licence=_req(d, "licence", str, where),
        layout=tuple(_req(d, "layout", list, where)),
        files=files,
        checks=tuple(d.get("checks", [])),
        homepage=d.get("homepage", ""),
    )


def _file(f: dict, where: str) -> FileSpec:
    _expect_keys(f, {"path", "url", "hub", "gdrive", "size", "sha256", "git_sha1", "extract", "note", "manual"}, where)
    path = _relpath(_req(f, "path", str, where), where)
    if sum(k in f for k in ("url", "hub", "gdrive")) != 1:
        raise ValueError(f"{where}: give exactly one of 'url', 'hub' or 'gdrive'")
    gdrive = f.get("gdrive")
    if gdrive is not None and not re.fullmatch(r"[A-Za-z0-9_-]{20,}", str(gdrive)):
        raise ValueError(f"{where}: gdrive must be a Google Drive file id, got {gdrive!r}")
    hub = None
    if "hub" in f:
        h = f["hub"]
        _expect_keys(h, {"repo_id", "filename", "revision", "repo_type"}, f"{where}.hub")
        hub = HubRef(_req(h, "repo_id", str, where), _req(h, "filename", str, where),
                     _req(h, "revision", str, where), h.get("repo_type", "dataset"))
    url = f.get("url")
    if url is not None and not str(url).startswith(("https://", "http://")):
        raise ValueError(f"{where}: url must be http(s), got {url!r}")
    size = f.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise ValueError(f"{where}: size must be a non-negative integer or null, got {size!r}")
    sha = _req(f, "sha256", str, where)
    if sha == TO_BE_FILLED:
        sha = None
    elif not _HEX64.match(sha):
        raise ValueError(f"{where}: sha256 must be 64 lowercase hex digits or {TO_BE_FILLED!r}, got {sha!r}")
    git_sha1 = f.get("git_sha1")
    if git_sha1 is not None and not _HEX40.match(git_sha1):
        raise ValueError(f"{where}: git_sha1 must be 40 lowercase hex digits, got {git_sha1!r}")
    ex = None
    if "extract" in f:
        e = f["extract"]
        _expect_keys(e, {"into", "members", "include", "flatten", "strip_components", "strip_top_dir", "expect_count",
                         "max_total", "max_ratio"}, f"{where}.extract")
        ex = ExtractSpec(
            into=_relpath(_req(e, "into", str, where), where),
            members=tuple(e["members"]) if e.get("members") is not None else None,
            include=tuple(e["include"]) if e.get("include") is not None else None,
            flatten=bool(e.get("flatten", False)),
            strip_components=int(e.get("strip_components", 0)),
            strip_top_dir=bool(e.get("strip_top_dir", False)),
            expect_count=e.get("expect_count"),
            max_total=int(e.get("max_total", DEFAULT_MAX_TOTAL)),
            max_ratio=float(e.get("max_ratio", DEFAULT_MAX_RATIO)),
        )
    return FileSpec(path=path, url=url, hub=hub, gdrive=gdrive, size=size, sha256=sha, git_sha1=git_sha1, extract=ex,
                    note=f.get("note", ""), manual=f.get("manual", ""))


def _relpath(p: str, where: str) -> str:
    pp = PurePosixPath(p)
    if not p or pp.is_absolute() or ".." in pp.parts or "\\" in p:
        raise ValueError(f"{where}: path must be relative and stay inside the dataset folder, got {p!r}")
    return pp.as_posix()


def _req(d: dict, key: str, typ: type, where: str):
    if key not in d:
        raise ValueError(f"{where}: missing '{key}'")
    if not isinstance(d[key], typ):
        raise ValueError(f"{where}.{key}: expected {typ.__name__}, got {type(d[key]).__name__}")
    return d[key]


def _expect_keys(d, allowed: set[str], where: str) -> None:
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected an object")
    extra = set(d) - allowed - {"_comment"}
    if extra:
        raise ValueError(f"{where}: unknown key(s) {sorted(extra)}")
