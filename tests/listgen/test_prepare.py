"""prepare: a bad-input corpus with one case per reject reason, the pixel-mode conversions, the reject ratio."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lpoi.listgen.prepare import RejectRatioExceeded, prepare_records, run_prepare, safe_stem

# ---------------------------------------------------------------------------------------------- fixtures


def _rgb(path: Path, w: int = 32, h: int = 24, color=(10, 120, 200), fmt: str | None = None, **kw) -> Path:
    Image.new("RGB", (w, h), color).save(path, format=fmt, **kw)
    return path


def _bomb_png(path: Path, w: int, h: int) -> Path:
    """A PNG whose header declares w x h RGB pixels but carries almost no data (cheap bomb)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    path.write_bytes(data)
    return path


def _exif_rotated_jpeg(path: Path) -> Path:
    """40x20 stored pixels: left half red, right half blue; EXIF Orientation 6 (display = rotate 90 CW)."""
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = (220, 20, 20)
    a[:, 20:] = (20, 20, 220)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


def _rec(img: str, prompt: str = "What is there?", chosen: str = "A cup.", rejected: str = "A dog.", **extra):
    return {"img_path": img, "prompt": prompt, "chosen": chosen, "rejected": rejected, **extra}


@pytest.fixture()
def corpus(tmp_path: Path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()

    _rgb(root / "ok.jpg", fmt="JPEG", quality=95)
    _rgb(root / "sub" / "ok.png", color=(1, 2, 3))
    _rgb(root / "ok3.png", color=(50, 60, 70))
    _rgb(root / "dup_a.png", color=(5, 5, 5))
    _rgb(root / "dup_b.png", color=(6, 6, 6))
    # truncated JPEG: first half of a noisy JPEG
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "garbage.jpg").write_bytes(b"this is not an image at all" * 4)
    _rgb(root / "tiny.png", w=4, h=4)
    _bomb_png(root / "bomb.png", 8000, 8000)  # 64 MP > 50 MP, below PIL's own 89 MP warning
    _rgb(outside / "secret.png")
    os.symlink(outside / "secret.png", root / "link.png")
    _rgb(outside / "up.png")
    # modes that must be converted
    Image.new("CMYK", (16, 16), (40, 80, 120, 60)).save(root / "cmyk.jpg", "JPEG", quality=100)
    Image.fromarray(np.full((16, 16), 32768, np.uint16)).save(root / "g16.png")  # 16-bit grayscale
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 0, 0, 200, 100, 50] + [0] * (254 * 3))
    pal.save(root / "pal.png")
    Image.new("LA", (16, 16), (100, 128)).save(root / "la.png")
    Image.new("RGBA", (16, 16), (200, 0, 0, 0)).save(root / "rgba.png")
    Image.new("L", (16, 16), 77).save(root / "gray.png")
    _exif_rotated_jpeg(root / "rot.jpg")

    cases = [  # (record, expected outcome: reason or "ok")
        (_rec("ok.jpg", id=7), "ok"),
        (_rec("./sub//ok.png", id="b"), "ok"),
        ([1, 2, 3], "not_an_object"),
        ({"img_path": "ok3.png", "prompt": "q", "rejected": "r"}, "missing_field"),
        (_rec("ok3.png", chosen=5), "bad_type"),
        (_rec("ok3.png", id=["x"]), "bad_type"),
        (_rec("ok3.png", prompt="   "), "empty_field"),
        (_rec("../outside/up.png"), "unsafe_path"),
        (_rec(str(outside / "up.png")), "unsafe_path"),
        (_rec("link.png"), "unsafe_path"),
        (_rec("nope.png"), "missing_image"),
        (_rec("truncated.jpg"), "truncated_image"),
        (_rec("garbage.jpg"), "unreadable_image"),
        (_rec("tiny.png"), "too_small"),
        (_rec("bomb.png"), "too_large"),
        (_rec("dup_a.png", id="dup"), "ok"),
        (_rec("dup_b.png", id="dup"), "duplicate_id"),
        (_rec("ok3.png", chosen="Three."), "ok"),
        (_rec("ok3.png", chosen="Three."), "duplicate_record"),
        (_rec("cmyk.jpg"), "ok"),
        (_rec("g16.png"), "ok"),
        (_rec("pal.png"), "ok"),
        (_rec("la.png"), "ok"),
        (_rec("rgba.png"), "ok"),
        (_rec("gray.png"), "ok"),
        (_rec("rot.jpg"), "ok"),
    ]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r, _ in cases))
    return tmp_path, root, pairs, cases


def _run(tmp_path: Path, root: Path, pairs: Path, ratio: float = 1.0):
    out = tmp_path / "out"
    summary = run_prepare(
        pairs, root, out / "prepared.jsonl", out / "rejects.jsonl", ratio, out_dir_images=out / "img"
    )
    prepared = [json.loads(x) for x in (out / "prepared.jsonl").read_text().splitlines()]
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    return summary, prepared, rejects


# ---------------------------------------------------------------------------------------------- tests


def test_each_bad_case_rejected_with_its_reason_others_processed(corpus):
    tmp_path, root, pairs, cases = corpus
    summary, prepared, rejects = _run(tmp_path, root, pairs)
    expected_rejects = {i: want for i, (_, want) in enumerate(cases) if want != "ok"}
    assert {r["index"]: r["reason"] for r in rejects} == expected_rejects
    assert all(r["detail"] for r in rejects)
    n_ok = sum(want == "ok" for _, want in cases)
    assert len(prepared) == n_ok
    assert summary["records_in"] == len(cases) and summary["records_out"] == n_ok
    assert summary["rejected"] == len(expected_rejects)
    want_counts: dict[str, int] = {}
    for reason in expected_rejects.values():
        want_counts[reason] = want_counts.get(reason, 0) + 1
    assert summary["rejects_by_reason"] == want_counts
    # ids of rejects: known where the record got that far
    by_index = {r["index"]: r for r in rejects}
    assert by_index[16]["id"] == "dup" and by_index[2]["id"] is None


def test_ids_paths_and_content_hash(corpus):
    tmp_path, root, pairs, _ = corpus
    _, prepared, _ = _run(tmp_path, root, pairs)
    by_image = {p["image"]: p for p in prepared}
    assert by_image["ok.jpg"]["id"] == "7"  # integer id string-ified
    assert by_image["sub/ok.png"]["id"] == "b"  # "./sub//ok.png" normalised
    # plain RGB sources are not copied
    assert by_image["ok.jpg"]["normalised"] is False
    assert Path(by_image["ok.jpg"]["image_path"]) == root / "ok.jpg"
    # derived id = sha256(image_sha256 \0 prompt \0 chosen \0 rejected \0)[:16], computed here by hand
    row = by_image["ok3.png"]
    img_sha = hashlib.sha256((root / "ok3.png").read_bytes()).hexdigest()
    assert row["image_sha256"] == img_sha
    want = hashlib.sha256(f"{img_sha}\0What is there?\0Three.\0A dog.\0".encode()).hexdigest()[:16]
    assert row["id"] == want
    assert (row["width"], row["height"]) == (32, 24)
    assert len({p["id"] for p in prepared}) == len(prepared)


def _pixels(row) -> np.ndarray:
    with Image.open(row["image_path"]) as im:
        assert im.mode == "RGB"
        return np.asarray(im).astype(int)


def test_mode_conversions_are_normalised_copies(corpus):
    tmp_path, root, pairs, _ = corpus
    _, prepared, _ = _run(tmp_path, root, pairs)
    by_image = {p["image"]: p for p in prepared}
    for name in ("cmyk.jpg", "g16.png", "pal.png", "la.png", "rgba.png", "gray.png", "rot.jpg"):
        row = by_image[name]
        assert row["normalised"] is True, name
        assert Path(row["image_path"]).parent == tmp_path / "out" / "img"
        assert Path(row["image_path"]).name == f"{safe_stem(row['id'])}.png"
    # CMYK -> RGB: r = (255-c)(255-k)/255 etc. (JPEG of a flat colour: within a few levels)
    c, m, y, k = 40, 80, 120, 60
    want = [(255 - v) * (255 - k) / 255 for v in (c, m, y)]
    assert np.abs(_pixels(by_image["cmyk.jpg"]) - want).max() <= 4
    # 16-bit 32768 -> 32768 / 65535 * 255 = 127.5 -> 128 (or 127)
    assert np.abs(_pixels(by_image["g16.png"]) - 127.5).max() <= 1
    # palette index 1 -> its palette colour
    assert (_pixels(by_image["pal.png"]) == (200, 100, 50)).all()
    # LA (L=100, alpha=128) on white: 100*128/255 + 255*(127/255) = 177.2
    assert np.abs(_pixels(by_image["la.png"]) - (100 * 128 + 255 * 127) / 255).max() <= 1
    # fully transparent red on white -> white
    assert (_pixels(by_image["rgba.png"]) == 255).all()
    assert (_pixels(by_image["gray.png"]) == 77).all()


def test_exif_orientation_applied(corpus):
    """Orientation 6 shows the stored 40x20 image rotated 90 degrees clockwise: 20 wide, 40 high, and the
    stored left half (red) ends up on top."""
    tmp_path, root, pairs, _ = corpus
    _, prepared, _ = _run(tmp_path, root, pairs)
    row = next(p for p in prepared if p["image"] == "rot.jpg")
    assert (row["width"], row["height"]) == (20, 40)
    px = _pixels(row)
    assert px.shape == (40, 20, 3)
    top, bottom = px[2:18].mean(axis=(0, 1)), px[22:38].mean(axis=(0, 1))
    assert top[0] > 150 and top[2] < 80  # red
    assert bottom[2] > 150 and bottom[0] < 80  # blue


def test_normalised_copy_is_deterministic(corpus):
    tmp_path, root, pairs, _ = corpus
    _, prepared, _ = _run(tmp_path, root, pairs)
    first = {p["image_path"]: Path(p["image_path"]).read_bytes() for p in prepared if p["normalised"]}
    prep1 = (tmp_path / "out" / "prepared.jsonl").read_bytes()
    _run(tmp_path, root, pairs)
    assert {k: Path(k).read_bytes() for k in first} == first
    assert (tmp_path / "out" / "prepared.jsonl").read_bytes() == prep1


def test_json_list_input_same_result(corpus):
    tmp_path, root, pairs, cases = corpus
    as_list = tmp_path / "pairs.json"
    as_list.write_text(json.dumps([r for r, _ in cases], indent=1))
    a = list(prepare_records(pairs, root))
    b = list(prepare_records(as_list, root))
    assert a == b
    assert sum(kind == "reject" for kind, _ in a) == sum(want != "ok" for _, want in cases)


def test_reject_ratio_error_after_writing_both_files(corpus):
    tmp_path, root, pairs, cases = corpus
    n_rej = sum(want != "ok" for _, want in cases)
    ratio = n_rej / len(cases)
    with pytest.raises(RejectRatioExceeded, match=r"max_reject_ratio.*duplicate_id|duplicate_id.*rejects"):
        _run(tmp_path, root, pairs, ratio=ratio - 0.01)
    out = tmp_path / "out"
    assert len((out / "rejects.jsonl").read_text().splitlines()) == n_rej
    assert len((out / "prepared.jsonl").read_text().splitlines()) == len(cases) - n_rej
    summary, _, _ = _run(tmp_path, root, pairs, ratio=ratio)  # exactly at the limit: allowed
    assert summary["reject_ratio"] == pytest.approx(ratio)


def test_bad_params_and_empty_input(tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="max_reject_ratio"):
        run_prepare(empty, root, tmp_path / "p.jsonl", tmp_path / "r.jsonl", 1.5)
    with pytest.raises(ValueError, match="no records"):
        run_prepare(empty, root, tmp_path / "p.jsonl", tmp_path / "r.jsonl", 0.5)
    with pytest.raises(FileNotFoundError, match="images root"):
        list(prepare_records(empty, tmp_path / "missing"))


def test_safe_stem():
    assert safe_stem("abc-1.2_x") == "abc-1.2_x"
    for bad in ("../x", "a/b", ".hidden", "", "x" * 200, "a b"):
        s = safe_stem(bad)
        assert s.startswith("id-") and len(s) == 19 and "/" not in s
    assert safe_stem("a/b") != safe_stem("a/c")
