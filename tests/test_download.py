"""Download stages against a real HTTP server on 127.0.0.1 (and a minimal Hugging Face Hub on it).

Expected hashes are computed here with hashlib from the bytes the server serves, never copied from
the code under test; the AMBER entries of lpoi/sources.json are checked against the official files
in ../shared/benchmarks (byte-identical copies, see its PROVENANCE.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import socket
import stat
import struct
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lpoi.download import (
    LOCK_NAME,
    TO_BE_FILLED,
    ChecksumMismatch,
    DatasetUnavailable,
    DownloadError,
    UnsafeArchiveError,
    download_file,
    fetch,
    load_sources,
    safe_extract,
    verify_file,
)
from lpoi.download.sources import DatasetSpec, ExtractSpec, FileSpec, HubRef
from lpoi.download.transfer import part_path
import shared_data

REPO = Path(__file__).resolve().parents[1]
SHARED = shared_data.SHARED / "benchmarks"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def git_blob_sha1(b: bytes) -> str:  # what `git hash-object` prints
    return hashlib.sha1(b"blob %d\0" % len(b) + b).hexdigest()


# ---------------------------------------------------------------------------------------------- server


class Server:
    """Static files + a Hub ``resolve`` endpoint, with Range support, a one-shot mid-body cut, a log."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.hub: dict[str, bytes] = {}  # "/datasets/{repo}/resolve/{rev}/{filename}" -> bytes
        self.cut_once: set[str] = set()
        self.ignore_range = False
        self.log: list[tuple[str, str, dict]] = []
        srv = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_HEAD(self):
                self._serve(head=True)

            def do_GET(self):
                self._serve(head=False)

            def _serve(self, head: bool):
                srv.log.append((self.command, self.path, dict(self.headers)))
                path = self.path.split("?")[0]
                hub = path in srv.hub
                body = srv.hub.get(path, srv.files.get(path))
                if body is None:
                    self.send_response(404)
                    if "/resolve/" in path:
                        self.send_header("X-Error-Code", "EntryNotFound")
                        self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, code = 0, 200
                m = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
                if m and not srv.ignore_range:
                    start, code = int(m.group(1)), 206
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                chunk = body[start:]
                self.send_response(code)
                self.send_header("Content-Length", str(len(chunk)))
                self.send_header("Accept-Ranges", "bytes")
                if code == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                if hub:  # what hf_hub_download needs from a HEAD: commit, etag, size
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("ETag", f'"{sha(body)}"')
                self.end_headers()
                if head:
                    return
                if not head and path in srv.cut_once:
                    srv.cut_once.discard(path)
                    self.wfile.write(chunk[: len(chunk) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(chunk)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def gets(self, path: str | None = None) -> list[dict]:
        return [h for m, p, h in self.log if m == "GET" and (path is None or p.split("?")[0] == path)]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def hermetic_hub(tmp_path, monkeypatch):
    """Hub env for every test: a private cache, no token, no telemetry, online unless a test says so."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # the hub reads HF_HUB_OFFLINE once, at import: a run under HF_HUB_OFFLINE=1 (CI) must not leak in here
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")


def payload(n: int, seed: int = 0) -> bytes:
    out, block = bytearray(), hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


def make_zip(entries: list[tuple[zipfile.ZipInfo | str, bytes]], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for info, data in entries:
            z.writestr(info, data)
    return buf.getvalue()


def files_under(p: Path, hidden: bool = True) -> list[str]:
    """Files below ``p``; ``hidden=False`` leaves out dotfiles (the ``.X.verified.json`` stamps)."""
    return sorted(x.relative_to(p).as_posix() for x in p.rglob("*")
                  if x.is_file() and (hidden or not x.name.startswith(".")))


# ---------------------------------------------------------------------------------------------- download_file


def test_download_verifies_and_moves_into_place(server, tmp_path):
    data = payload(300_000)
    server.files["/a.bin"] = data
    dest = tmp_path / "out" / "a.bin"
    res = download_file(server.url + "/a.bin", dest, size=len(data), sha256=sha(data), progress=False)
    assert dest.read_bytes() == data
    assert (res.status, res.size, res.sha256, res.bytes_fetched) == ("downloaded", len(data), sha(data), len(data))
    assert not part_path(dest).exists()
    assert [x.name for x in dest.parent.iterdir() if not x.name.startswith(".")] == ["a.bin"]


def test_interrupted_download_resumes_with_range(server, tmp_path):
    data = payload(200_001, seed=1)
    server.files["/big.bin"] = data
    server.cut_once.add("/big.bin")
    dest = tmp_path / "big.bin"
    url = server.url + "/big.bin"
    with pytest.raises(DownloadError) as ei:  # first run: the server drops the connection mid-body
        download_file(url, dest, size=len(data), sha256=sha(data), retries=0, progress=False)
    assert ei.value.reason == "short_body"
    half = len(data) // 2
    assert not dest.exists()  # never a partial file under the final name
    assert part_path(dest).read_bytes() == data[:half]
    res = download_file(url, dest, size=len(data), sha256=sha(data), retries=0, progress=False)  # second run
    assert dest.read_bytes() == data and res.status == "resumed" and res.bytes_fetched == len(data) - half
    first, second = server.gets("/big.bin")
    assert "Range" not in first and second["Range"] == f"bytes={half}-"
    assert not part_path(dest).exists()


def test_retry_inside_one_call_resumes(server, tmp_path):
    data = payload(100_000, seed=2)
    server.files["/c.bin"] = data
    server.cut_once.add("/c.bin")
    res = download_file(server.url + "/c.bin", tmp_path / "c.bin", sha256=sha(data), retries=1, progress=False)
    assert (tmp_path / "c.bin").read_bytes() == data and res.sha256 == sha(data)
    assert server.gets("/c.bin")[1]["Range"] == f"bytes={len(data) // 2}-"


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    data = payload(80_000, seed=3)
    server.files["/d.bin"] = data
    server.cut_once.add("/d.bin")
    server.ignore_range = True
    dest = tmp_path / "d.bin"
    with pytest.raises(DownloadError):
        download_file(server.url + "/d.bin", dest, sha256=sha(data), retries=0, progress=False)
    download_file(server.url + "/d.bin", dest, sha256=sha(data), retries=0, progress=False)
    assert dest.read_bytes() == data  # the 200 body replaced the half part instead of being appended


@pytest.mark.parametrize("wrong", ["sha256", "size"])
def test_checksum_mismatch_rejected_and_nothing_kept(server, tmp_path, wrong):
    data = payload(50_000, seed=4)
    server.files["/e.bin"] = data
    dest = tmp_path / "e.bin"
    kw = {"sha256": sha(b"something else")} if wrong == "sha256" else {"size": len(data) + 7}
    with pytest.raises(ChecksumMismatch) as ei:
        download_file(server.url + "/e.bin", dest, progress=False, retries=0, **kw)
    assert ei.value.deleted and ei.value.what == wrong
    assert not dest.exists() and not part_path(dest).exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_rerun_fetches_nothing_and_skips_hashing(server, tmp_path, monkeypatch):
    data = payload(120_000, seed=5)
    server.files["/f.bin"] = data
    dest = tmp_path / "f.bin"
    download_file(server.url + "/f.bin", dest, size=len(data), sha256=sha(data), progress=False)
    n = len(server.log)
    from lpoi.download import integrity

    def no_hashing(*a, **k):
        raise AssertionError("a verified file must not be re-hashed")

    monkeypatch.setattr(integrity, "hash_file", no_hashing)
    res = download_file(server.url + "/f.bin", dest, size=len(data), sha256=sha(data), progress=False)
    assert res.status == "cached" and res.bytes_fetched == 0 and len(server.log) == n


def test_stamp_is_not_trusted_after_the_file_changes(tmp_path):
    p = tmp_path / "g.bin"
    p.write_bytes(b"a" * 1000)
    good = sha(b"a" * 1000)
    assert verify_file(p, size=1000, sha256=good)["stamped"] is False
    assert verify_file(p, size=1000, sha256=good)["stamped"] is True
    p.write_bytes(b"b" * 1000)  # same size, new content, new mtime
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    with pytest.raises(ChecksumMismatch) as ei:
        verify_file(p, size=1000, sha256=good)
    assert not ei.value.deleted and p.exists()  # a file we did not download is never deleted


def test_wrong_file_already_in_place_is_refused_not_deleted(server, tmp_path):
    data = payload(10_000, seed=6)
    server.files["/h.bin"] = data
    dest = tmp_path / "h.bin"
    dest.write_bytes(b"placed by hand, wrong")
    with pytest.raises(ChecksumMismatch) as ei:
        download_file(server.url + "/h.bin", dest, sha256=sha(data), progress=False)
    assert "remove or replace it" in str(ei.value) and dest.read_bytes() == b"placed by hand, wrong"
    assert server.log == []


def test_git_blob_id_is_verified(server, tmp_path):
    data = b"line\n" * 1000
    server.files["/q.jsonl"] = data
    res = download_file(server.url + "/q.jsonl", tmp_path / "q.jsonl", git_sha1=git_blob_sha1(data), progress=False)
    assert res.git_sha1 == git_blob_sha1(data)
    with pytest.raises(ChecksumMismatch):
        download_file(server.url + "/q.jsonl", tmp_path / "r.jsonl", git_sha1="0" * 40, progress=False)
    assert not (tmp_path / "r.jsonl").exists()


# ---------------------------------------------------------------------------------------------- safe_extract


def _symlink_info(name: str) -> zipfile.ZipInfo:
    zi = zipfile.ZipInfo(name)
    zi.create_system = 3
    zi.external_attr = (stat.S_IFLNK | 0o777) << 16
    return zi


@pytest.mark.parametrize(
    "evil, reason",
    [("../evil", "parent_traversal"), ("ok/../../evil", "parent_traversal"), ("/tmp/abs_evil", "absolute_path"),
     ("C:/evil", "absolute_path"), (None, "symlink")],
)
def test_zip_slip_rejected_before_anything_is_written(tmp_path, evil, reason):
    bad = (_symlink_info("link"), b"../../outside") if evil is None else (zipfile.ZipInfo(evil), b"pwned")
    archive = tmp_path / "bad.zip"
    archive.write_bytes(make_zip([("good.txt", b"fine"), bad]))
    assert (evil or "link") in zipfile.ZipFile(archive).namelist()  # the hostile name really is in the archive
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError) as ei:
        safe_extract(archive, dest)
    assert ei.value.reason == reason
    assert not dest.exists() or files_under(dest) == []  # not even the good member
    assert not (tmp_path / "evil").exists() and not Path("/tmp/abs_evil").exists()


def test_zip_bomb_rejected_by_ratio_and_by_total_cap(tmp_path):
    bomb = tmp_path / "bomb.zip"
    bomb.write_bytes(make_zip([("zeros.bin", bytes(20 * 1024 * 1024))]))
    assert bomb.stat().st_size * 100 < 20 * 1024 * 1024  # > 100x compression: a bomb by the default cap
    with pytest.raises(UnsafeArchiveError) as ei:
        safe_extract(bomb, tmp_path / "x")
    assert ei.value.reason == "ratio"
    big = tmp_path / "big.zip"
    big.write_bytes(make_zip([("a.bin", payload(3000)), ("b.bin", payload(3000, 1))], zipfile.ZIP_STORED))
    with pytest.raises(UnsafeArchiveError) as ei:
        safe_extract(big, tmp_path / "y", max_total=5000)
    assert ei.value.reason == "too_large"
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert files_under(safe_extract(big, tmp_path / "z", max_total=6000).files[0].parent) == ["a.bin", "b.bin"]


def test_header_that_understates_size_is_refused_without_partial_file(tmp_path):
    data = b"0123456789" * 20_000
    raw = bytearray(make_zip([("lie.txt", data)]))
    # patch the uncompressed size (local header @22, central directory @24) from 200000 to 1000
    lo, cd = raw.index(b"PK\x03\x04"), raw.index(b"PK\x01\x02")
    assert struct.unpack_from("<I", raw, lo + 22)[0] == len(data) == struct.unpack_from("<I", raw, cd + 24)[0]
    struct.pack_into("<I", raw, lo + 22, 1000)
    struct.pack_into("<I", raw, cd + 24, 1000)
    archive = tmp_path / "lie.zip"
    archive.write_bytes(bytes(raw))
    with pytest.raises(UnsafeArchiveError) as ei:
        safe_extract(archive, tmp_path / "d")
    assert ei.value.reason in ("corrupt", "size_lie")
    assert files_under(tmp_path / "d") == []


def test_extract_named_members_flattened_and_skips_reported(tmp_path):
    archive = tmp_path / "ann.zip"
    archive.write_bytes(make_zip([("annotations/instances_val2014.json", b"{}"),
                                  ("annotations/captions_val2014.json", b"[]"),
                                  ("annotations/instances_train2014.json", b"{ }")]))
    res = safe_extract(archive, tmp_path / "coco", ["annotations/instances_val2014.json",
                                                    "annotations/captions_val2014.json"], flatten=True)
    assert files_under(tmp_path / "coco") == ["captions_val2014.json", "instances_val2014.json"]
    assert res.skipped == ["annotations/instances_train2014.json"]
    with pytest.raises(UnsafeArchiveError) as ei:
        safe_extract(archive, tmp_path / "c2", ["annotations/nope.json"])
    assert ei.value.reason == "missing_members"


def test_include_globs_junk_and_colliding_names(tmp_path):
    archive = tmp_path / "imgs.zip"
    archive.write_bytes(make_zip([("image/AMBER_1.jpg", b"1"), ("image/AMBER_2.jpg", b"2"), ("image/readme.txt", b"r"),
                                  ("__MACOSX/image/._AMBER_1.jpg", b"junk"), ("copy/AMBER_2.jpg", b"2")]))
    res = safe_extract(archive, tmp_path / "images", include=["AMBER_*.jpg"], flatten=True)
    assert files_under(tmp_path / "images") == ["AMBER_1.jpg", "AMBER_2.jpg"]
    assert set(res.skipped) == {"image/readme.txt", "__MACOSX/image/._AMBER_1.jpg", "copy/AMBER_2.jpg"}
    clash = tmp_path / "clash.zip"
    clash.write_bytes(make_zip([("a/x.jpg", b"1"), ("b/x.jpg", b"2")]))
    with pytest.raises(UnsafeArchiveError) as ei:
        safe_extract(clash, tmp_path / "c", flatten=True)
    assert ei.value.reason == "duplicate_target"
    top = tmp_path / "top.zip"
    top.write_bytes(make_zip([("merged_images/a/1.jpg", b"1"), ("merged_images/2.jpg", b"2")]))
    safe_extract(top, tmp_path / "t", strip_top_dir=True)
    assert files_under(tmp_path / "t") == ["2.jpg", "a/1.jpg"]


# ---------------------------------------------------------------------------------------------- fetch()


def _demo_spec(server: Server, *, json_sha: str | None, zip_sha: str | None, hub: bool = False) -> dict:
    """A small dataset shaped like objhal: one plain file + an archive whose two members are kept."""
    files = []
    if hub:
        ref = HubRef("org/demo", "pairs.json", COMMIT)
        zref = HubRef("org/demo", "imgs.zip", COMMIT)
        files.append(FileSpec("pairs.json", hub=ref, sha256=json_sha))
        files.append(FileSpec("downloads/imgs.zip", hub=zref, sha256=zip_sha,
                              extract=ExtractSpec("images", strip_top_dir=True)))
    else:
        files.append(FileSpec("pairs.json", url=server.url + "/demo/pairs.json", sha256=json_sha))
        files.append(FileSpec("downloads/ann.zip", url=server.url + "/demo/ann.zip", sha256=zip_sha,
                              extract=ExtractSpec("coco", members=("annotations/a.json", "annotations/b.json"),
                                                  flatten=True)))
    checks = ({"type": "refs", "records": "pairs.json", "field": "img_path", "root": "images"},) if hub else ()
    return {"demo": DatasetSpec("demo", "demo data", "CC0", ("pairs.json", "coco/a.json", "coco/b.json"),
                                tuple(files), checks)}


def _serve_demo(server: Server, hub: bool = False) -> tuple[bytes, bytes]:
    pairs = json.dumps([{"img_path": "1.jpg", "prompt": "p", "chosen": "c", "rejected": "r"},
                        {"img_path": "sub/2.jpg", "prompt": "p", "chosen": "c", "rejected": "r"},
                        {"img_path": "3.jpg", "prompt": "p", "chosen": "c", "rejected": "r"}]).encode()
    if hub:
        archive = make_zip([("merged_images/1.jpg", b"img1"), ("merged_images/sub/2.jpg", b"img2")])
        server.hub[f"/datasets/org/demo/resolve/{COMMIT}/pairs.json"] = pairs
        server.hub[f"/datasets/org/demo/resolve/{COMMIT}/imgs.zip"] = archive
    else:
        archive = make_zip([("annotations/a.json", b'{"a": 1}'), ("annotations/b.json", b'{"b": 2}'),
                            ("annotations/unused.json", b"{}")])
        server.files["/demo/pairs.json"] = pairs
        server.files["/demo/ann.zip"] = archive
    return pairs, archive


def test_fetch_http_layout_lock_and_rerun_does_nothing(server, tmp_path):
    pairs, archive = _serve_demo(server)
    specs = _demo_spec(server, json_sha=None, zip_sha=sha(archive))  # pairs.json: "to be filled"
    dest = tmp_path / "demo"
    rep = fetch("demo", dest, sources=specs, progress=False)
    assert files_under(dest, hidden=False) == ["coco/a.json", "coco/b.json", "download-lock.json",
                                               "downloads/ann.zip", "pairs.json"]
    assert not [p for p in files_under(dest) if p.endswith((".part", ".tmp"))]
    assert (dest / "coco" / "a.json").read_bytes() == b'{"a": 1}'
    assert {f.path: f.status for f in rep.files} == {"pairs.json": "downloaded", "downloads/ann.zip": "downloaded"}
    assert [(e.status, e.n_files, e.skipped) for e in rep.extracted] == [("extracted", 2, 1)]
    lock = json.loads((dest / LOCK_NAME).read_text())
    assert lock["files"]["pairs.json"]["sha256"] == sha(pairs)  # observed hash pinned for next time
    assert any(sha(pairs) in n and "sources.json" in n for n in rep.notes)  # and the user is told
    assert server.url + "/demo/pairs.json" in rep.summary()
    n = len(server.log)
    rep2 = fetch("demo", dest, sources=specs, progress=False)
    assert len(server.log) == n  # re-run: nothing fetched
    assert {f.status for f in rep2.files} == {"cached"} and rep2.extracted[0].status == "cached"
    assert rep2.files[0].hash_source == "lock"
    (dest / "downloads" / "ann.zip").unlink()  # the archive may be deleted after extraction
    fetch("demo", dest, sources=specs, progress=False)
    assert len(server.log) == n
    (dest / "pairs.json").write_bytes(pairs.replace(b'"p"', b'"P"'))  # tampered after the pinning
    with pytest.raises(ChecksumMismatch):
        fetch("demo", dest, sources=specs, progress=False)


def test_fetch_offline_error_then_manual_placement_proceeds(server, tmp_path):
    pairs, archive = _serve_demo(server)
    specs = _demo_spec(server, json_sha=sha(pairs), zip_sha=sha(archive))
    dest = tmp_path / "demo"
    with pytest.raises(DatasetUnavailable) as ei:
        fetch("demo", dest, sources=specs, offline=True, progress=False)
    msg = str(ei.value)
    assert server.log == []  # offline: the network is never touched
    for needle in ("'demo'", server.url + "/demo/pairs.json", server.url + "/demo/ann.zip",
                   str(dest / "downloads" / "ann.zip"), "expected layout", "coco/a.json", "re-run", "offline"):
        assert needle in msg
    assert ei.value.dataset == "demo" and {m["path"] for m in ei.value.missing} == {"pairs.json", "downloads/ann.zip"}
    (dest / "pairs.json").write_bytes(pairs)  # the user places the files by hand...
    (dest / "downloads").mkdir(exist_ok=True)
    (dest / "downloads" / "ann.zip").write_bytes(archive)
    rep = fetch("demo", dest, sources=specs, offline=True, progress=False)  # ...and re-runs: verified, proceeds
    assert {f.status for f in rep.files} == {"placed"} and files_under(dest / "coco") == ["a.json", "b.json"]
    assert server.log == []
    (dest / "pairs.json").write_bytes(b"[]")  # a wrong file placed by hand is refused, not used
    with pytest.raises(ChecksumMismatch):
        fetch("demo", dest, sources=specs, offline=True, progress=False)


def test_fetch_with_no_network_names_url_and_layout(tmp_path, monkeypatch):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there: connection refused, like a machine without network
    specs = {"demo": DatasetSpec("demo", "d", "CC0", ("x.txt",),
                                 (FileSpec("x.txt", url=f"http://127.0.0.1:{port}/x.txt", sha256=sha(b"x")),))}
    with pytest.raises(DatasetUnavailable) as ei:
        fetch("demo", tmp_path / "d", sources=specs, offline=False, progress=False)
    assert f"127.0.0.1:{port}/x.txt" in str(ei.value) and ei.value.missing[0]["reason"] == "network"
    assert "expected layout" in str(ei.value)


def test_hub_download_through_loopback_endpoint_then_offline_cache(server, tmp_path, monkeypatch):
    """huggingface_hub.hf_hub_download against the loopback server via HF_ENDPOINT (set after import:
    fetch passes endpoint/cache explicitly), then the hub's own offline cache layout with HF_HUB_OFFLINE=1."""
    pairs, archive = _serve_demo(server, hub=True)
    specs = _demo_spec(server, json_sha=None, zip_sha=sha(archive), hub=True)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    rep = fetch("demo", tmp_path / "d1", sources=specs, progress=False)
    assert (tmp_path / "d1" / "pairs.json").read_bytes() == pairs
    assert files_under(tmp_path / "d1" / "images") == ["1.jpg", "sub/2.jpg"]  # top folder stripped
    resolve = f"/datasets/org/demo/resolve/{COMMIT}/"
    assert {(m, p) for m, p, _ in server.log} == {(m, resolve + f) for m in ("HEAD", "GET")
                                                   for f in ("pairs.json", "imgs.zip")}
    assert (tmp_path / "hf_home" / "hub" / "datasets--org--demo" / "snapshots" / COMMIT / "imgs.zip").exists()
    assert rep.files[0].source == server.url + resolve + "pairs.json"
    assert any("2/3 records find their img_path under images/" in n and "'3.jpg'" in n for n in rep.notes)
    assert not (tmp_path / "d1" / "downloads").exists()  # the archive stays in the hub cache only
    n = len(server.log)
    fetch("demo", tmp_path / "d1", sources=specs, progress=False)
    assert len(server.log) == n  # re-run: nothing fetched
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # another mirror: the pin is per repo@revision
    again = fetch("demo", tmp_path / "d1", sources=specs, progress=False)
    assert again.files[0].hash_source == "lock" and again.files[0].status == "cached"
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rep = fetch("demo", tmp_path / "d2", sources=specs, progress=False)  # offline, served from the hub cache
    assert len(server.log) == n and (tmp_path / "d2" / "images" / "sub" / "2.jpg").read_bytes() == b"img2"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_home"))
    with pytest.raises(DatasetUnavailable) as ei:
        fetch("demo", tmp_path / "d3", sources=specs, progress=False)
    assert server.url + resolve + "imgs.zip" in str(ei.value) and "hf download org/demo imgs.zip" in str(ei.value)
    assert len(server.log) == n


def test_hub_file_with_wrong_hash_is_evicted_from_cache(server, tmp_path, monkeypatch):
    pairs, archive = _serve_demo(server, hub=True)
    specs = _demo_spec(server, json_sha=sha(b"not these bytes"), zip_sha=sha(archive), hub=True)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    with pytest.raises(ChecksumMismatch) as ei:
        fetch("demo", tmp_path / "d", sources=specs, progress=False)
    assert ei.value.deleted and not (tmp_path / "d" / "pairs.json").exists()
    blobs = tmp_path / "hf_home" / "hub" / "datasets--org--demo" / "blobs"
    assert not (blobs / sha(pairs)).exists()


def test_cli_subprocess_with_hf_endpoint_from_the_environment(server, tmp_path):
    """The stage as DVC runs it: a fresh process that imports huggingface_hub with HF_ENDPOINT already set."""
    pairs, archive = _serve_demo(server, hub=True)
    src = tmp_path / "sources.json"
    src.write_text(json.dumps({"datasets": {"demo": {
        "description": "demo", "licence": "CC0", "layout": ["pairs.json", "images/"],
        "files": [{"path": "pairs.json", "hub": {"repo_id": "org/demo", "filename": "pairs.json", "revision": COMMIT},
                   "sha256": sha(pairs)},
                  {"path": "downloads/imgs.zip", "hub": {"repo_id": "org/demo", "filename": "imgs.zip",
                                                         "revision": COMMIT},
                   "size": len(archive), "sha256": sha(archive), "extract": {"into": "images", "strip_top_dir": True}}],
    }}}))
    env = {**os.environ, "HF_ENDPOINT": server.url, "HF_HOME": str(tmp_path / "cli_home"), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "stages" / "download.py"), "demo", "--sources", str(src), "--no-progress"]
    r = subprocess.run(cmd + ["--dest", str(tmp_path / "out")], check=False, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "downloaded" in r.stdout and server.url in r.stdout
    assert files_under(tmp_path / "out" / "images") == ["1.jpg", "sub/2.jpg"]
    r = subprocess.run(cmd + ["--dest", str(tmp_path / "off"), "--offline"], check=False,
                       env={**env, "HF_HOME": str(tmp_path / "nothing")}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: dataset 'demo'") and "Traceback" not in r.stderr


# ---------------------------------------------------------------------------------------------- recorded sources


def test_shipped_sources_are_valid_and_amber_hashes_match_the_official_files():
    specs = load_sources()
    assert {n for n, s in specs.items() if s.kind == "dataset"} == {"mdpo-10k", "amber", "objhal", "mmhal",
                                                                   "lpoi-official"}
    for spec in specs.values():
        for f in spec.files:
            assert f.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", f.sha256)
            if f.hub is not None:
                assert f.hub.revision == "main" or re.fullmatch(r"[0-9a-f]{40}", f.hub.revision)
    amber = {f.path: f for f in specs["amber"].files}
    shared_data.shared_file("benchmarks")  # the official files (skips, naming ../shared, without them)
    for rel in ["annotations.json", "relation.json", "safe_words.txt", "query/query_all.json",
                "query/query_discriminative-relation.json"]:
        b = (SHARED / "amber" / rel).read_bytes()
        assert (amber[rel].size, amber[rel].sha256) == (len(b), sha(b))
        assert "534babf6bbfcce2e735c26289dedfb21cef3c939/data/" + rel in amber[rel].url
    syn = (SHARED / "object_halbench" / "synonyms_refine.txt").read_bytes()
    objhal = {f.path: f for f in specs["objhal"].files}
    assert objhal["synonyms_refine.txt"].sha256 == sha(syn)
    assert objhal["obj_halbench_300_with_image.jsonl"].git_sha1 == "cb8e15a81a1ddf720f306fda0decefb1ed80c31f"


def test_amber_fetch_end_to_end_with_the_recorded_hashes(server, tmp_path):
    """The shipped AMBER entry, with its URLs pointed at the loopback server serving the official files:
    the recorded sizes/sha256 must accept the real bytes, and the layout must be the one the scorer reads."""
    shared_data.shared_file("benchmarks")  # the official files (skips, naming ../shared, without them)
    spec = load_sources()["amber"]
    files = []
    for f in spec.files:
        if f.extract is None:
            server.files["/amber/" + f.path] = (SHARED / "amber" / f.path).read_bytes()
            files.append(dataclasses.replace(f, url=server.url + "/amber/" + f.path))
        else:  # a stand-in images zip (the real one is 415 MB): same shape, so no recorded hash
            z = make_zip([(f"image/AMBER_{i}.jpg", b"\xff\xd8%d" % i) for i in range(1, 1005)], zipfile.ZIP_STORED)
            server.files["/amber/AMBER.zip"] = z
            files.append(dataclasses.replace(f, hub=None, url=server.url + "/amber/AMBER.zip", size=len(z), sha256=None))
    specs = {"amber": dataclasses.replace(spec, files=tuple(files))}
    dest = tmp_path / "amber"
    rep = fetch("amber", dest, sources=specs, progress=False)
    got = set(files_under(dest, hidden=False))
    for rel in ["annotations.json", "relation.json", "safe_words.txt", "query/query_all.json",
                "query/query_generative.json", "images/AMBER_1.jpg", "images/AMBER_1004.jpg"]:
        assert rel in got
    assert len([p for p in got if p.startswith("images/")]) == 1004
    assert all(f.hash_source == "recorded" for f in rep.files if f.path != "downloads/AMBER.zip")
    # the images can also be placed by hand (official Google Drive zip): counted, hashed into the lock
    dest2 = tmp_path / "amber2"
    (dest2 / "images").mkdir(parents=True)
    for i in range(1, 1005):
        (dest2 / "images" / f"AMBER_{i}.jpg").write_bytes(b"x%d" % i)
    n = len(server.log)
    rep2 = fetch("amber", dest2, sources=specs, progress=False)
    assert rep2.extracted[0].status == "placed" and len(server.log) == n + 10  # only the 10 data files


def test_shipped_checkpoints_pin_the_official_files():
    """The three original checkpoints of issue 13: the official URLs, with size and sha256 recorded (values
    published by several independent projects; a download checks them)."""
    ck = {n: s for n, s in load_sources().items() if s.kind == "checkpoint"}
    assert set(ck) == {"sam-vit-b", "sam-vit-h", "groundingdino-swint-ogc", "lpoi-official-idefics2-8b",
                       "lpoi-official-llava-1.5-7b", "lpoi-official-llava-1.5-13b"}  # (the last three: Drive)
    expect = {"sam-vit-b": ("sam_vit_b_01ec64.pth", 375042383, "ec2df627"),
              "sam-vit-h": ("sam_vit_h_4b8939.pth", 2564550879, "a7bf3b02"),
              "groundingdino-swint-ogc": ("groundingdino_swint_ogc.pth", 693997677, "3b3ca256")}
    for name, (fname, size, sha_start) in expect.items():
        (f,) = ck[name].files
        assert (f.path, f.size) == (fname, size) and f.sha256.startswith(sha_start) and len(f.sha256) == 64
        assert f.url.startswith("https://") and f.url.endswith("/" + fname)
        assert ck[name].default_root == "models/external"


def test_checkpoint_cli_lands_in_models_external_and_refuses_a_wrong_file(server, tmp_path):
    """``python stages/download.py NAME`` for a checkpoint entry: default folder models/external/NAME, verified;
    a server handing out other bytes is refused and nothing is left in place."""
    blob = payload(50_000, seed=3)
    server.files["/w/ckpt.pth"] = blob
    server.files["/w/bad.pth"] = payload(50_000, seed=4)
    src = tmp_path / "sources.json"
    entry = lambda url: {"description": "w", "licence": "CC0", "layout": ["ckpt.pth"],
                         "files": [{"path": "ckpt.pth", "url": server.url + url, "size": len(blob), "sha256": sha(blob)}]}
    src.write_text(json.dumps({"datasets": {}, "checkpoints": {"demo-ckpt": entry("/w/ckpt.pth"),
                                                                "bad-ckpt": entry("/w/bad.pth")}}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, str(REPO / "stages" / "download.py"), "--sources", str(src), "--no-progress"]
    r = subprocess.run(cmd + ["demo-ckpt"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "models/external/demo-ckpt/ckpt.pth").read_bytes() == blob
    r = subprocess.run(cmd + ["bad-ckpt"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "sha256" in r.stderr.lower()
    assert not (tmp_path / "models/external/bad-ckpt/ckpt.pth").exists()
    r = subprocess.run(cmd + ["--list"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert "demo-ckpt" in r.stdout and "checkpoint" in r.stdout


@pytest.mark.parametrize(
    "entry, needle",
    [({"path": "a", "url": "https://x/a", "sha256": "abc"}, "64 lowercase hex"),
     ({"path": "../a", "url": "https://x/a", "sha256": TO_BE_FILLED}, "stay inside"),
     ({"path": "a", "sha256": TO_BE_FILLED}, "exactly one of 'url', 'hub' or 'gdrive'"),
     ({"path": "a", "url": "file:///etc/passwd", "sha256": TO_BE_FILLED}, "http(s)"),
     ({"path": "a", "url": "https://x/a", "sha256": TO_BE_FILLED, "sha": "typo"}, "unknown key")],
)
def test_malformed_sources_are_refused_naming_the_entry(tmp_path, entry, needle):
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"datasets": {"d": {"description": "", "licence": "", "layout": [], "files": [entry]}}}))
    with pytest.raises(ValueError) as ei:
        load_sources(p)
    assert needle in str(ei.value) and "datasets.d.files[0]" in str(ei.value)


# ---------------------------------------------------------------------------------------------- real sources (issue 20)


def _jpeg(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (24, 16), (seed * 40 % 256, 80, 120)).save(buf, "JPEG")
    return buf.getvalue()


def test_shipped_sources_pin_the_working_vlfeedback_zip_and_coco_url():
    """../shared/paper/DATA_SOURCES.md: VLFeedback replaced its zip at 21072e5; images.cocodataset.org fails TLS."""
    specs = load_sources()
    zipf = {f.path: f for f in specs["mdpo-10k"].files}["downloads/merged_images.zip"]
    assert (zipf.size, zipf.sha256) == (2910186386, "d484076f7fc2f986724c182ef39829a373b66080b70a85f23411d5ab1461e9eb")
    assert zipf.hub.revision != "9a18ebceacadef27e7287f4ca025bf52d0385346" and zipf.extract.strip_top_dir
    coco = {f.path: f for f in specs["objhal"].files}["downloads/annotations_trainval2014.zip"]
    assert coco.url == "https://s3.amazonaws.com/images.cocodataset.org/annotations/annotations_trainval2014.zip"
    assert (coco.size, coco.sha256) == (252872794, "031296bbc80c45a1d1f76bf9a90ead27e94e99ec629208449507a4917a3bf009")


def test_mdpo10k_fixed_zip_layout_and_the_three_img_path_forms_resolve(server, tmp_path, monkeypatch):
    """The shipped mdpo-10k entry against a loopback hub: the replaced zip's layout (merged_images/<id>.jpg)
    lands in images/, and records naming their image as images/<id>.jpg, <id>.jpg or data/images/<id>.jpg all
    resolve by basename (the check says how many, prepare accepts them); a missing one is a reject."""
    from lpoi.listgen.prepare import prepare_records

    spec = load_sources()["mdpo-10k"]
    archive = make_zip([(f"merged_images/{i}.jpg", _jpeg(i)) for i in range(3)])
    pairs = json.dumps([{"img_path": p, "prompt": f"q{i}", "chosen": "c", "rejected": "r"} for i, p in
                        enumerate(["images/0.jpg", "1.jpg", "data/images/2.jpg", "images/404.jpg"])]).encode()
    files = []
    for f in spec.files:
        body = archive if f.extract else pairs
        server.hub[f"/datasets/{f.hub.repo_id}/resolve/{f.hub.revision}/{f.hub.filename}"] = body
        files.append(dataclasses.replace(f, size=len(body), sha256=sha(body)))  # stand-ins for the 2.9 GB zip
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    dest = tmp_path / "mdpo-10k"
    rep = fetch("mdpo-10k", dest, sources={"mdpo-10k": dataclasses.replace(spec, files=tuple(files))}, progress=False)
    assert files_under(dest / "images") == ["0.jpg", "1.jpg", "2.jpg"]
    note = next(n for n in rep.notes if "records find their img_path" in n)
    assert "3/4 records" in note and "(2 of them by basename only)" in note and "'images/404.jpg'" in note
    out = list(prepare_records(dest / "sample_10k_llava.json", dest / "images"))
    assert [kind for kind, _ in out] == ["ok", "ok", "ok", "reject"] and out[3][1]["reason"] == "missing_image"
    assert [Path(r["image_path"]).name for kind, r in out[:3]] == ["0.jpg", "1.jpg", "2.jpg"]


def test_objhal_coco_annotations_layout_from_the_recorded_url_path(server, tmp_path):
    spec = load_sources()["objhal"]
    inst, caps = b'{"images": [], "annotations": []}', b'{"annotations": []}'
    archive = make_zip([("annotations/instances_val2014.json", inst), ("annotations/captions_val2014.json", caps),
                        ("annotations/instances_train2014.json", b"{}")])
    f = next(f for f in spec.files if f.extract)
    path = "/" + f.url.split("://", 1)[1].split("/", 1)[1]  # /images.cocodataset.org/annotations/...
    server.files[path] = archive
    only = dataclasses.replace(f, url=server.url + path, size=len(archive), sha256=sha(archive))
    dest = tmp_path / "objhal"
    fetch("objhal", dest, sources={"objhal": dataclasses.replace(spec, files=(only,))}, progress=False)
    assert (dest / "coco" / "instances_val2014.json").read_bytes() == inst
    assert (dest / "coco" / "captions_val2014.json").read_bytes() == caps


# ---------------------------------------------------------------------------------------------- the authors' Drive files


DRIVE_IDS = {"sample_10k_llava.json": "1AzziQDSRVz0c6YqTpPq30JKRccCkwTMc",  # official README, one by one
             "downloads/images.zip": "1BTmzMuCR40qxCevdmXN7vZ0b6LpjyWlb",
             "downloads/ours_cmask_until_list5.zip": "19Srx3NzFNedjmp26iqNK3sRr_nX9XSS_"}
ADAPTER_IDS = {"lpoi-official-idefics2-8b": "1t-_J9Dg-PF25YYtjCsB-U3VBd35gH4_q",
               "lpoi-official-llava-1.5-7b": "1NNp-giqNjPQhdpNPpJStNmCEkzkCXtPX",
               "lpoi-official-llava-1.5-13b": "1mqlSxxXiECTi84e3BfwbeWS-_nakEKc4"}


def test_lpoi_official_sources_are_the_readme_drive_files():
    specs = load_sources()
    assert {f.path: f.gdrive for f in specs["lpoi-official"].files} == DRIVE_IDS
    for name, fid in ADAPTER_IDS.items():
        assert specs[name].kind == "checkpoint" and [f.gdrive for f in specs[name].files] == [fid]


def test_lpoi_official_offline_names_each_file_its_drive_link_and_where_to_put_it(tmp_path):
    dest = tmp_path / "lpoi-official"
    r = subprocess.run([sys.executable, str(REPO / "stages" / "download.py"), "lpoi-official", "--offline",
                        "--dest", str(dest), "--no-progress"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    for path, fid in DRIVE_IDS.items():
        assert f"* {path}" in r.stderr and f"https://drive.google.com/file/d/{fid}/view" in r.stderr
        assert f"put it at: {dest / path}" in r.stderr
    assert "ours_cmask_until_list5/ours_cmask_until{25,50,75,100}/<img_path>" in r.stderr


def test_drive_file_without_gdown_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gdown", None)  # as on a machine without the [official] extra
    spec = load_sources()["lpoi-official"]
    only = {"lpoi-official": dataclasses.replace(spec, files=spec.files[:1], checks=())}
    with pytest.raises(DatasetUnavailable) as ei:
        fetch("lpoi-official", tmp_path / "d", sources=only, progress=False, offline=False)
    assert "pip install 'lpoi[official]'" in str(ei.value) and ei.value.missing[0]["reason"] == "missing_dependency"


def test_drive_file_fetched_with_gdown_pinned_on_first_download(server, tmp_path, monkeypatch):
    """gdown against a loopback server with Drive's /uc?id= interface: trust on first use, then pinned."""
    pytest.importorskip("gdown")
    body = json.dumps([{"img_path": "data/images/1.jpg", "prompt": "p", "chosen": "c", "rejected": "r"}]).encode()
    server.files["/uc"] = body
    monkeypatch.setenv("LPOI_GDRIVE_ENDPOINT", server.url)
    spec = load_sources()["lpoi-official"]
    only = {"lpoi-official": dataclasses.replace(spec, files=spec.files[:1], checks=())}
    dest = tmp_path / "d"
    rep = fetch("lpoi-official", dest, sources=only, progress=False, offline=False)
    assert (dest / "sample_10k_llava.json").read_bytes() == body and rep.files[0].status == "downloaded"
    assert any(sha(body) in n for n in rep.notes)  # the observed hash, to copy into sources.json
    assert json.loads((dest / LOCK_NAME).read_text())["files"]["sample_10k_llava.json"]["sha256"] == sha(body)
    n = len(server.log)
    assert fetch("lpoi-official", dest, sources=only, progress=False).files[0].status == "cached"
    assert len(server.log) == n
    (dest / "sample_10k_llava.json").write_bytes(body.replace(b'"p"', b'"P"'))
    with pytest.raises(ChecksumMismatch):
        fetch("lpoi-official", dest, sources=only, progress=False)


def test_official_checkpoint_zip_placed_by_hand_unpacks_into_adapter(tmp_path):
    archive = make_zip([("lpoi_llava7b/adapter_config.json", b'{"peft_type": "LORA"}'),
                        ("lpoi_llava7b/adapter_model.safetensors", b"weights")])
    dest = tmp_path / "lpoi-official-llava-1.5-7b"
    (dest / "downloads").mkdir(parents=True)
    (dest / "downloads" / "checkpoint.zip").write_bytes(archive)
    rep = fetch("lpoi-official-llava-1.5-7b", dest, progress=False, offline=True)
    assert files_under(dest / "adapter") == ["adapter_config.json", "adapter_model.safetensors"]
    assert rep.files[0].status == "placed"
