"""``fetch(name, dest)``: bring one dataset of ``lpoi/sources.json`` into the layout the pipeline expects.

Per file: already present and verified -> nothing fetched; else from its URL (resumable, see
:mod:`lpoi.download.transfer`) or the Hugging Face Hub (:mod:`lpoi.download.hub`); then verified
against the recorded size/sha256 (or git blob id); archives are unpacked with
:func:`lpoi.download.archive.safe_extract`. ``<dest>/download-lock.json`` records what was
observed: the sha256 of files whose hash is "to be filled" upstream (trust on first use: later
runs must match it), where each file came from, and which files each archive produced (so a
finished extraction is skipped by a size check, without the archive and without re-hashing).
Files that cannot be fetched (offline, no network, source gone) are collected and reported at the
end in one :class:`DatasetUnavailable` that says where to put them by hand; everything that could
be fetched is kept, so the next run only does what is left.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lpoi.download.archive import safe_extract
from lpoi.download.errors import ChecksumMismatch, DatasetUnavailable, DownloadError, NetworkError
from lpoi.download.hub import env_offline, hub_cache_dir, hub_download, hub_endpoint
from lpoi.download.integrity import hash_file, verify_file, write_stamp
from lpoi.download.sources import TO_BE_FILLED, DatasetSpec, FileSpec, load_sources
from lpoi.download.transfer import download_file
from lpoi.io import atomic_write_json, read_json, read_records, safe_join

__all__ = ["LOCK_NAME", "ExtractReport", "FetchReport", "FileReport", "fetch"]

LOCK_NAME = "download-lock.json"


@dataclass
class FileReport:
    path: str  # relative to the dataset root
    source: str  # URL (hub files: their resolve URL)
    status: str  # downloaded | resumed | cached | placed (found on disk, verified) | missing
    size: int | None = None
    sha256: str | None = None
    hash_source: str = ""  # recorded (sources.json) | lock (first verified download) | new (observed now)
    detail: str = ""


@dataclass
class ExtractReport:
    archive: str
    into: str
    status: str  # extracted | cached (stamp valid) | placed (outputs put there by hand)
    n_files: int
    skipped: int = 0


@dataclass
class FetchReport:
    name: str
    dest: Path
    lock_path: Path
    files: list[FileReport] = field(default_factory=list)
    extracted: list[ExtractReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def fetched(self) -> list[FileReport]:
        return [f for f in self.files if f.status in ("downloaded", "resumed")]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dest"], d["lock_path"] = str(self.dest), str(self.lock_path)
        return d

    def summary(self) -> str:
        lines = [f"{self.name} -> {self.dest}"]
        for f in self.files:
            sha = f"sha256 {f.sha256[:12]}… ({f.hash_source})" if f.sha256 else ""
            lines.append(f"  {f.status:<10} {f.path:<44} {_human(f.size):>9}  {sha}  {f.source}")
        for e in self.extracted:
            skipped = f", {e.skipped} member(s) skipped" if e.skipped else ""
            lines.append(f"  {e.status:<10} {e.into + '/':<44} {e.n_files} file(s) from {e.archive}{skipped}")
        lines += [f"  note: {n}" for n in self.notes]
        lines.append(f"  lock: {self.lock_path}")
        return "\n".join(lines)


def fetch(
    name: str,
    dest: str | os.PathLike,
    *,
    offline: bool | None = None,
    progress: bool = True,
    sources: str | os.PathLike | Mapping[str, DatasetSpec] | None = None,
) -> FetchReport:
    """Fetch dataset ``name`` into ``dest`` (e.g. ``data/external/<name>``) and verify every file.

    ``offline=None`` follows ``HF_HUB_OFFLINE``. ``sources`` is a sources file or parsed mapping
    (default: ``lpoi/sources.json``). Raises :class:`DatasetUnavailable` when files are missing
    and cannot be fetched, :class:`ChecksumMismatch` on a wrong file, :class:`UnsafeArchiveError`
    on a dangerous archive, ``ValueError`` for an unknown name.
    """
    specs = sources if isinstance(sources, Mapping) else load_sources(sources)
    if name not in specs:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(specs))}")
    spec = specs[name]
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    offline = env_offline() if offline is None else bool(offline)
    lock_path = dest / LOCK_NAME
    lock = _read_lock(lock_path, name)
    report = FetchReport(name, dest, lock_path)
    missing: list[dict] = []
    for f in spec.files:
        try:
            if f.extract is None:
                _plain(f, dest, lock, offline, progress, report)
            else:
                _archive(f, dest, lock, offline, progress, report)
        except ChecksumMismatch:
            raise
        except DownloadError as e:
            missing.append(_missing_entry(f, dest, e))
            report.files.append(FileReport(f.path, f.source(hub_endpoint()), "missing", f.size, f.sha256,
                                           detail=str(e)))
        finally:
            atomic_write_json(lock_path, lock)  # progress survives a crash on a later file
    if missing:
        raise DatasetUnavailable(_unavailable_message(spec, dest, missing, offline), dataset=name, missing=missing)
    report.notes += _run_checks(spec, dest)
    return report


# ---------------------------------------------------------------------------------------------- plain files


def _plain(f: FileSpec, dest: Path, lock: dict, offline: bool, progress: bool, report: FetchReport) -> None:
    target = safe_join(dest, f.path)
    src = f.source(hub_endpoint())
    prev = lock["files"].get(f.path)
    exp, hsrc = _expected(f, prev, src)
    if target.exists():
        obs = verify_file(target, size=f.size, sha256=exp, git_sha1=f.git_sha1, url=src)
        status = "cached" if prev and prev.get("sha256") == obs["sha256"] else "placed"
    elif f.hub is not None:
        cached = hub_download(f.hub, offline=offline, progress=progress)
        obs = _verify_hub_file(cached, f, exp, src)
        _atomic_copy(cached, target)
        write_stamp(target, obs)
        status = "downloaded"
    else:
        if offline:
            raise NetworkError("offline mode: not fetched", url=src)
        res = _download(f, src, target, exp, progress)
        obs = {"size": res.size, "sha256": res.sha256}
        status = res.status
    _record(f, src, obs, hsrc, lock, report, status)


def _download(f: FileSpec, src: str, target: Path, exp: str | None, progress: bool):
    if f.gdrive is not None:
        from lpoi.download.gdrive import gdrive_download

        return gdrive_download(f.gdrive, target, f.size, exp, progress=progress)
    return download_file(src, target, f.size, exp, git_sha1=f.git_sha1, progress=progress)


def _verify_hub_file(cached: Path, f: FileSpec, exp: str | None, src: str) -> dict:
    """Verify a file in the hub cache (no stamp written there); a bad one is evicted from the cache."""
    try:
        return verify_file(cached, size=f.size, sha256=exp, git_sha1=f.git_sha1, url=src, use_stamp=False)
    except ChecksumMismatch as e:
        blob = cached.resolve()
        cached.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        raise ChecksumMismatch(str(cached), e.what, e.expected, e.observed, url=src, deleted=True) from None


# ---------------------------------------------------------------------------------------------- archives


def _archive(f: FileSpec, dest: Path, lock: dict, offline: bool, progress: bool, report: FetchReport) -> None:
    ex = f.extract
    assert ex is not None
    src = f.source(hub_endpoint())
    prev = lock["files"].get(f.path)
    exp, hsrc = _expected(f, prev, src)
    into = safe_join(dest, ex.into)
    state = lock["extracted"].get(f.path)
    if state and _outputs_intact(state, dest) and (exp is None or state.get("archive_sha256") in (exp, None)):
        report.extracted.append(ExtractReport(f.path, ex.into, "cached" if state.get("archive_sha256") else "placed",
                                              len(state["files"])))
        if prev:
            report.files.append(FileReport(f.path, src, "cached", prev.get("size"), prev.get("sha256"), hsrc))
        return
    placed = _placed_outputs(f, dest, into)
    if placed is not None:  # extracted content put there by hand (e.g. the official AMBER zip)
        lock["extracted"][f.path] = {"into": ex.into, "archive_sha256": None, "files": placed["sizes"],
                                     "manifest_sha256": placed["manifest_sha256"]}
        report.extracted.append(ExtractReport(f.path, ex.into, "placed", len(placed["sizes"])))
        report.notes.append(f"{ex.into}/: {len(placed['sizes'])} file(s) were placed by hand; the archive "
                            f"{f.path} was not needed (manifest sha256 {placed['manifest_sha256'][:12]}… in the lock)")
        return
    local = safe_join(dest, f.path)
    if local.exists():
        obs = verify_file(local, size=f.size, sha256=exp, git_sha1=f.git_sha1, url=src)
        archive, status = local, ("cached" if prev and prev.get("sha256") == obs["sha256"] else "placed")
    elif f.hub is not None:
        archive = hub_download(f.hub, offline=offline, progress=progress)
        obs, status = _verify_hub_file(archive, f, exp, src), "downloaded"
    else:
        if offline:
            raise NetworkError("offline mode: not fetched", url=src)
        res = _download(f, src, local, exp, progress)
        archive, obs, status = local, {"size": res.size, "sha256": res.sha256}, res.status
    _record(f, src, obs, hsrc, lock, report, status)
    result = safe_extract(archive, into, ex.members, include=ex.include, flatten=ex.flatten,
                          strip_components=ex.strip_components, strip_top_dir=ex.strip_top_dir, max_total=ex.max_total, max_ratio=ex.max_ratio,
                          progress=progress)
    if ex.expect_count is not None and len(result.files) != ex.expect_count:
        raise DownloadError(f"{archive}: extraction produced {len(result.files)} file(s) into {ex.into}/, "
                            f"expected {ex.expect_count}; the archive is not the recorded one",
                            url=src, reason="unexpected_content")
    rel_into = Path(ex.into).as_posix()
    lock["extracted"][f.path] = {"into": ex.into, "archive_sha256": obs["sha256"],
                                 "files": {f"{rel_into}/{k}": v for k, v in result.sizes.items()}}
    report.extracted.append(ExtractReport(f.path, ex.into, "extracted", len(result.files), len(result.skipped)))
    if result.skipped:
        report.notes.append(f"{f.path}: {len(result.skipped)} archive member(s) not selected, e.g. "
                            f"{result.skipped[:3]}")


def _outputs_intact(state: dict, dest: Path) -> bool:
    """Fast re-run check: every file an extraction produced is still there with its size (no hashing)."""
    files = state.get("files") or {}
    if not files:
        return False
    for rel, size in files.items():
        try:
            if (dest / rel).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def _placed_outputs(f: FileSpec, dest: Path, into: Path) -> dict | None:
    """The extraction's outputs, if a user already put them in place (all named members, or the
    expected number of files matching ``include``); hashed once into a manifest for the lock."""
    ex = f.extract
    assert ex is not None
    if ex.members:
        names = [Path(m).name if ex.flatten else "/".join(Path(m).parts[ex.strip_components:]) for m in ex.members]
        paths = [into / n for n in names]
        if not all(p.is_file() for p in paths):
            return None
    elif ex.expect_count is not None and ex.include and into.is_dir():
        import fnmatch

        paths = sorted(p for p in into.iterdir() if p.is_file() and not p.name.startswith(".")
                       and any(fnmatch.fnmatchcase(p.name, pat) for pat in ex.include))
        if len(paths) != ex.expect_count:
            return None
    else:
        return None
    sizes, lines = {}, []
    for p in sorted(paths):
        rel = p.relative_to(dest).as_posix()
        h = hash_file(p)
        sizes[rel] = h["size"]
        lines.append(f"{rel}\t{h['size']}\t{h['sha256']}\n")
    return {"sizes": sizes, "manifest_sha256": hashlib.sha256("".join(lines).encode()).hexdigest()}


# ---------------------------------------------------------------------------------------------- bookkeeping


def _expected(f: FileSpec, prev: dict | None, src: str) -> tuple[str | None, str]:
    if f.sha256:
        return f.sha256, "recorded"
    same_source = prev is not None and (  # hub files: same repo/revision/file whatever the endpoint (mirror)
        prev.get("hub") == asdict(f.hub) if f.hub is not None else prev.get("source") == src)
    if same_source and prev.get("sha256"):
        return prev["sha256"], "lock"  # pinned by the first verified download of this very source
    return None, "new"


def _record(f: FileSpec, src: str, obs: dict, hsrc: str, lock: dict, report: FetchReport, status: str) -> None:
    entry = {"source": src, "size": obs["size"], "sha256": obs["sha256"],
             "hash_source": {"recorded": "sources.json", "lock": "first verified download",
                             "new": "first verified download"}[hsrc]}
    if f.git_sha1:
        entry["git_sha1"] = f.git_sha1
    if f.hub is not None:
        entry["hub"] = asdict(f.hub)
    lock["files"][f.path] = entry
    report.files.append(FileReport(f.path, src, status, obs["size"], obs["sha256"], hsrc))
    if hsrc == "new":
        also = f" (git blob id {f.git_sha1} verified)" if f.git_sha1 else ""
        size_note = "" if f.size is not None else f", size {obs['size']}"
        report.notes.append(f"{f.path}: sha256 is {TO_BE_FILLED!r} in sources.json; observed {obs['sha256']}"
                            f"{size_note}{also}; saved in {LOCK_NAME} (later runs must match it). "
                            "Copy it into lpoi/sources.json to pin it for everyone.")


def _read_lock(path: Path, name: str) -> dict:
    if not path.exists():
        return {"dataset": name, "files": {}, "extracted": {}}
    try:
        lock = read_json(path)
    except ValueError as e:
        raise ValueError(f"{e}; delete {path} to re-verify everything from scratch") from None
    if not isinstance(lock, dict) or lock.get("dataset") != name:
        raise ValueError(f"{path} belongs to dataset {lock.get('dataset') if isinstance(lock, dict) else '?'!r}, "
                         f"not {name!r}: wrong --dest?")
    lock.setdefault("files", {})
    lock.setdefault("extracted", {})
    return lock


def _atomic_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _missing_entry(f: FileSpec, dest: Path, e: DownloadError) -> dict:
    return {"path": f.path, "source": f.source(hub_endpoint()), "reason": e.reason, "error": str(e),
            "place_at": str(dest / f.path), "size": f.size, "sha256": f.sha256 or TO_BE_FILLED,
            "extract_into": str(dest / f.extract.into) if f.extract else None, "manual": f.manual,
            "hub": asdict(f.hub) if f.hub else None, "gdrive": f.gdrive}


def _unavailable_message(spec: DatasetSpec, dest: Path, missing: list[dict], offline: bool) -> str:
    mode = "offline mode (HF_HUB_OFFLINE=1 or --offline)" if offline else "network or source unavailable"
    head = f"dataset {spec.name!r} is incomplete in {dest} and {len(missing)} file(s) could not be fetched [{mode}]:"
    out = [head]
    for m in missing:
        size = f"{m['size']} bytes" if m["size"] is not None else "size not recorded"
        out += [f"  * {m['path']}",
                f"      why:       {m['error']}",
                f"      source:    {m['source']}",
                f"      put it at: {m['place_at']}  ({size}, sha256 {m['sha256']})"]
        if m["extract_into"]:
            out.append(f"      it is unpacked into {m['extract_into']}/ on the next run")
        if m["hub"]:
            h = m["hub"]
            out.append(f"      or fill the hub cache ({hub_cache_dir()}) while online: hf download {h['repo_id']} "
                       f"{h['filename']} --repo-type {h['repo_type']} --revision {h['revision']}")
        if m["gdrive"]:
            out.append("      (a Google Drive file: open the link in a browser to download it by hand; "
                       "online, `pip install 'lpoi[official]'` lets this command fetch it)")
        if m["manual"]:
            out.append(f"      or: {m['manual']}")
    out.append(f"expected layout of {dest}:")
    out += [f"  {entry}" for entry in spec.layout]
    out.append(f"then re-run `python stages/download.py {spec.name} --dest {dest}`: it verifies the files and "
               "proceeds (sizes/hashes are checked; a wrong file is refused).")
    return "\n".join(out)


def _run_checks(spec: DatasetSpec, dest: Path) -> list[str]:
    """Post-fetch consistency checks (reported as notes: a missing image becomes a reject downstream)."""
    notes = []
    for c in spec.checks:
        if c.get("type") != "refs":
            notes.append(f"unknown check type {c.get('type')!r} skipped")
            continue
        root = dest / c["root"]
        n = ok = by_name = 0
        bad: list[str] = []
        mode = c.get("basename")  # true: by basename only; "fallback": the path, else its basename (as prepare)
        for rec in read_records(dest / c["records"]):
            n += 1
            v = rec.get(c["field"]) if isinstance(rec, dict) else None
            name = v.replace("\\", "/").rsplit("/", 1)[-1] if isinstance(v, str) else None
            found = _is_file_under(root, name if mode is True else v)
            if not found and mode == "fallback" and name != v and _is_file_under(root, name):
                found, by_name = True, by_name + 1
            if found:
                ok += 1
            elif len(bad) < 3:
                bad.append(repr(v))
        msg = f"{c['records']}: {ok}/{n} records find their {c['field']} under {c['root']}/"
        if by_name:
            msg += f" ({by_name} of them by basename only)"
        if ok < n:
            msg += f"; missing e.g. {', '.join(bad)} (downstream stages will reject those samples: reason 'missing')"
        notes.append(msg)
    return notes


def _is_file_under(root: Path, rel) -> bool:
    try:
        return isinstance(rel, str) and bool(rel) and safe_join(root, rel).is_file()
    except ValueError:
        return False


def _human(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
