"""Builders of damaged and odd input files, and the bad-input corpus shared by the prepare unit tests
(``tests/listgen/test_prepare.py``) and the whole-pipeline run (``tests/test_bad_inputs.py``).

Every file is generated here (seeded), nothing is downloaded. Each corpus case is ``(record, outcome)``
with outcome the expected prepare reject reason or ``"ok"``.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["bad_crc_png", "bomb_png", "broken_zlib_png", "build_corpus", "corrupt_jpeg", "exif_rotated_jpeg",
           "png_chunks", "rec", "rgb", "scene"]


def rgb(path: Path, w: int = 32, h: int = 24, color=(10, 120, 200), fmt: str | None = None, **kw) -> Path:
    Image.new("RGB", (w, h), color).save(path, format=fmt, **kw)
    return path


def scene(w: int, h: int, seed: int = 0) -> Image.Image:
    """A background with a red rectangle and a little noise: something for a detector to find."""
    rng = np.random.default_rng(seed)
    a = np.empty((h, w, 3), np.uint8)
    a[:] = (40, 120, 200)
    a[h // 4 : 3 * h // 4 + 1, w // 4 : 3 * w // 4 + 1] = (220, 30, 30)
    return Image.fromarray(np.clip(a.astype(int) + rng.integers(0, 20, a.shape), 0, 255).astype(np.uint8))


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_chunks(raw: bytes) -> list[tuple[bytes, int, int]]:
    """``(tag, offset of the length field, data length)`` of every chunk of a PNG file."""
    out, i = [], 8
    while i + 8 <= len(raw):
        n = int.from_bytes(raw[i : i + 4], "big")
        out.append((raw[i + 4 : i + 8], i, n))
        i += 12 + n
    return out


def bomb_png(path: Path, w: int, h: int) -> Path:
    """A PNG whose header declares w x h RGB pixels but carries almost no data (cheap bomb)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + _chunk(b"IEND", b""))
    return path


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def bad_crc_png(path: Path, seed: int = 1) -> Path:
    """A PNG with one bit flipped inside its IDAT data and the old CRC kept: the stored checksum no longer
    matches. The deflate stream around the bit may still decode (to wrong pixels)."""
    raw = bytearray(_png_bytes(scene(32, 24, seed)))
    tag, off, n = next(c for c in png_chunks(bytes(raw)) if c[0] == b"IDAT")
    raw[off + 8 + n - 6] ^= 0x01  # inside the last deflate block, before the adler32
    path.write_bytes(bytes(raw))
    return path


def broken_zlib_png(path: Path, seed: int = 2) -> Path:
    """A PNG whose IDAT data is damaged and whose CRC was recomputed to match: only the deflate decoder
    can tell (Pillow: "broken data stream")."""
    raw = bytearray(_png_bytes(scene(32, 24, seed)))
    tag, off, n = next(c for c in png_chunks(bytes(raw)) if c[0] == b"IDAT")
    data = bytearray(raw[off + 8 : off + 8 + n])
    data[n // 2] ^= 0x10
    raw[off + 8 : off + 12 + n] = bytes(data) + struct.pack(">I", zlib.crc32(b"IDAT" + bytes(data)) & 0xFFFFFFFF)
    path.write_bytes(bytes(raw))
    return path


def corrupt_jpeg(path: Path, seed: int = 0, gap: bool = False) -> Path:
    """A 64x64 JPEG damaged in the middle of its entropy-coded data; Pillow decodes it without a word
    (garbage from there on), libjpeg warns "Corrupt JPEG data: ...".

    Default: 48 random bytes (none 0xFF, so the marker structure is intact) written over the middle. Only
    about half of such overwrites make libjpeg warn (measured: 47 of 100 seeds; the rest decode to valid,
    wrong codes that no decoder can tell); seed 0 is one that warns ("bad Huffman code").
    ``gap=True``: 200 bytes cut out of the middle instead (a lost block); warned for 20 of 20 seeds
    ("premature end of data segment")."""
    buf = io.BytesIO()
    scene(64, 64, seed).save(buf, "JPEG", quality=90)
    raw = bytearray(buf.getvalue())
    sos = raw.find(b"\xff\xda")
    start = sos + 2 + int.from_bytes(raw[sos + 2 : sos + 4], "big")
    mid = start + (len(raw) - start) // 2
    if gap:
        del raw[mid : mid + 200]
    else:
        raw[mid : mid + 48] = bytes(np.random.default_rng(seed).integers(0, 0xFF, 48, dtype=np.uint8))
    path.write_bytes(bytes(raw))
    return path


def exif_rotated_jpeg(path: Path) -> Path:
    """40x20 stored pixels: left half red, right half blue; EXIF Orientation 6 (display = rotate 90 CW)."""
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = (220, 20, 20)
    a[:, 20:] = (20, 20, 220)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


def rec(img: str, prompt: str = "What is there?", chosen: str = "A cup.", rejected: str = "A dog.", **extra):
    return {"img_path": img, "prompt": prompt, "chosen": chosen, "rejected": rejected, **extra}


def build_corpus(tmp_path: Path, scene_size: tuple[int, int] = (32, 24), budget: bool = False):
    """Images under ``tmp_path/images`` and the cases ``[(record, outcome)]``: one or more per prepare
    reject reason, every pixel mode that must be converted, texts and shapes at the limits of the
    default :class:`lpoi.config.PrepareParams`. ``budget``: outcomes for a run with the stage's
    :class:`~lpoi.listgen.prepare.PromptBudget` (tiny/idefics2, max_length 512). Returns
    ``(images_root, cases)``."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    w, h = scene_size
    scene(w, h, 10).save(root / "ok.jpg", "JPEG", quality=95)
    scene(w, h, 11).save(root / "sub" / "ok.png")
    scene(w, h, 12).save(root / "ok3.png")
    scene(w, h, 13).save(root / "dup_a.png")
    scene(w, h, 14).save(root / "dup_b.png")
    scene(w, h, 15).save(root / "ph.png")
    scene(w, h, 16).save(root / "long.png")
    scene(w, h, 17).save(root / "uni.png")
    scene(w, h, 18).save(root / "txt.png")
    scene(w, h, 19).save(root / "txt2.png")
    buf = io.BytesIO()  # truncated JPEG: first half of a noisy JPEG
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "garbage.jpg").write_bytes(b"this is not an image at all" * 4)
    corrupt_jpeg(root / "corrupt.jpg")
    corrupt_jpeg(root / "gap.jpg", seed=5, gap=True)
    bad_crc_png(root / "crc.png")
    broken_zlib_png(root / "zlib.png")
    rgb(root / "tiny.png", w=4, h=4)
    bomb_png(root / "bomb.png", 8000, 8000)  # 64 MP > 50 MP, below PIL's own 89 MP warning
    scene(2000, 8).save(root / "strip.png")  # 250:1 - the detector's processor fails on it
    scene(8, 2000).save(root / "tall.png")
    scene(160, 8).save(root / "wide20.png")  # 20:1, the default limit: accepted
    scene(8, 8).save(root / "min8.png")  # exactly min_side
    rgb(outside / "secret.png")
    os.symlink(outside / "secret.png", root / "link.png")
    rgb(outside / "up.png")
    Image.new("CMYK", (w, h), (40, 80, 120, 60)).save(root / "cmyk.jpg", "JPEG", quality=100)
    Image.fromarray(np.full((h, w), 32768, np.uint16)).save(root / "g16.png")  # 16-bit grayscale
    pal = Image.new("P", (w, h), 1)
    pal.putpalette([0, 0, 0, 200, 100, 50] + [0] * (254 * 3))
    pal.save(root / "pal.png")
    Image.new("LA", (w, h), (100, 128)).save(root / "la.png")
    Image.new("RGBA", (w, h), (200, 0, 0, 0)).save(root / "rgba.png")
    Image.new("L", (w, h), 77).save(root / "gray.png")
    exif_rotated_jpeg(root / "rot.jpg")

    cases = [
        (rec("ok.jpg", id=7), "ok"),
        (rec("./sub//ok.png", id="b"), "ok"),
        ([1, 2, 3], "not_an_object"),
        ({"img_path": "ok3.png", "prompt": "q", "rejected": "r", "id": "m1"}, "missing_field"),
        (rec("ok3.png", chosen=5, id="m2"), "bad_type"),
        (rec("ok3.png", id=["x"]), "bad_type"),
        (rec("ok3.png", prompt="   ", id="m3"), "empty_field"),
        (rec("ok3.png", prompt="<image>\n", id="m4"), "empty_field"),  # nothing but a placeholder
        (rec("../outside/up.png", id="m5"), "unsafe_path"),
        (rec(str(outside / "up.png")), "unsafe_path"),
        (rec("link.png"), "unsafe_path"),
        (rec("nope.png", id="m6"), "missing_image"),
        (rec("truncated.jpg"), "truncated_image"),
        (rec("garbage.jpg"), "unreadable_image"),
        (rec("corrupt.jpg", id="m7"), "corrupt_image"),
        (rec("gap.jpg"), "corrupt_image"),
        (rec("zlib.png"), "corrupt_image"),
        (rec("crc.png", id="m8"), "bad_checksum"),
        (rec("tiny.png"), "too_small"),
        (rec("bomb.png"), "too_large"),
        (rec("strip.png", id="m9"), "extreme_aspect_ratio"),
        (rec("tall.png"), "extreme_aspect_ratio"),
        (rec("long.png", prompt="Why? " * 200_000, id="m10"), "text_too_long"),  # 1 MB prompt
        (rec("long.png", rejected="no " * 3000), "text_too_long"),  # 9000 characters
        (rec("ok3.png", chosen="A dog.", id="m11"), "no_preference"),
        (rec("ok3.png", chosen="  A  dog.\n", rejected="A dog."), "no_preference"),
        (rec("dup_a.png", id="dup"), "ok"),
        (rec("dup_b.png", id="dup"), "duplicate_id"),
        (rec("ok3.png", chosen="Three."), "ok"),
        (rec("ok3.png", chosen="Three."), "duplicate_record"),
        # placeholders removed: the same record as the one above, so a duplicate once cleaned
        (rec("ok3.png", prompt="<image>\nWhat is there?", chosen="Three."), "duplicate_record"),
        (rec("ok3.png", prompt="What\u200b is there?", chosen="Thre\u00ade."), "duplicate_record"),  # ZWSP, soft hyphen
        (rec("ph.png", prompt="<image>\nWhat is on the <Image> table?", chosen="A red <image> cup.",
             id="ph"), "ok"),
        # answers just under max_answer_chars (reference truncates them); a prompt of ~370 tiny tokens
        (rec("long.png", prompt="Describe the scene. " * 50, chosen="A red box on a table. " * 363,
             rejected="A green ball on a chair. " * 320, id="at-the-limits"), "ok"),
        # 2000 characters: within max_prompt_chars, but ~720 tiny tokens > reference.max_length 512
        (rec("long.png", prompt="Describe the scene. " * 100, id="many-tokens"),
         "prompt_too_long" if budget else "ok"),
        (rec("uni.png", prompt="Wie heißt das Ding? 🍎 هذا <fake_token_around_image></s>", chosen="Ein Würfel.",
             id="a/../../b" + "x" * 200), "ok"),  # unicode, other special tokens, an id unfit for a file name
        (rec("wide20.png", id="wide"), "ok"),
        (rec("min8.png"), "ok"),
        (rec("cmyk.jpg"), "ok"),
        (rec("g16.png"), "ok"),
        (rec("pal.png"), "ok"),
        (rec("la.png"), "ok"),
        (rec("rgba.png"), "ok"),
        (rec("gray.png"), "ok"),
        (rec("rot.jpg"), "ok"),
        # invisible and normalisation-only text (issue 19): texts in NFC, format characters (Cf) removed,
        # before any comparison. A placeholder split by a zero-width space is still a placeholder.
        (rec("txt.png", prompt="<ima\u200bge>\nWhat is\u00a0there?", chosen="Cafe\u0301 au lait\u200b.",
             rejected="A dog\ufeff.", id="inv\u200bisible"), "ok"),
        (rec("txt2.png", id="\ufeffinvisible"), "duplicate_id"),  # the same id once normalised
        (rec("txt.png", id="caf\u00e9"), "ok"),
        (rec("txt2.png", id="cafe\u0301"), "duplicate_id"),  # NFD of the id above
        (rec("txt.png", chosen="A dog.\u200b", id="zw-pair"), "no_preference"),
        (rec("txt.png", chosen="\ufeffA\u2060 d\u00adog.", id="bom-pair"), "no_preference"),
        (rec("txt.png", chosen="Caf\u00e9.", rejected="Cafe\u0301.", id="nfd-pair"), "no_preference"),
        (rec("txt.png", chosen="\u200b\u200c\u200d\u2060\ufeff", id="zw-only"), "empty_field"),
        (rec("txt.png", rejected="\u0301 \u0308\u20dd\ufe0f", id="marks-only"), "empty_field"),
        (rec("txt.png", prompt="\u200b<image>\u200b"), "empty_field"),
        (rec("txt.png", id="\u200b\u2060"), "empty_field"),
        (rec("txt.png", rejected="A\x00dog.", id="nul"), "control_character"),
        (rec("txt.png", prompt="What is\x1b[31m there?"), "control_character"),
        (rec("txt.png", chosen="A cup.\x85", id="nel"), "control_character"),
        (rec("txt.png", id="bell\x07"), "control_character"),
        # lone surrogates: JSON's "\ud800" escape decodes to one, which cannot be written as UTF-8
        (rec("txt.png", chosen="A cup \ud800.", id="lone-surrogate"), "invalid_unicode"),
        (rec("txt.png", id="sur\udc80"), "invalid_unicode"),
        (rec("txt\ud800.png"), "invalid_unicode"),
    ]
    return root, cases
