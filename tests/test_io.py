"""lpoi.io: file modes of atomic writes, JSONL errors that name file and line, resumable-append policy,
image damage told apart (truncated, corrupt, bad checksum)."""

from __future__ import annotations

import io
import json
import os
import stat

import pytest
from badfiles import bad_crc_png, broken_zlib_png, corrupt_jpeg, scene
from PIL import Image

from lpoi.io import (
    CorruptLineError,
    ImageRejected,
    InputError,
    JsonlAppender,
    atomic_open,
    atomic_write_json,
    check_image_integrity,
    load_image,
    read_json,
    read_jsonl,
)

# ---------------------------------------------------------------------------------------------- modes


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_get_the_mode_a_plain_open_would(tmp_path, umask):
    old = os.umask(umask)
    try:
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
        atomic_write_json(tmp_path / "atomic.json", {"a": 1})
        with atomic_open(tmp_path / "text.txt") as f:
            f.write("y")
    finally:
        os.umask(old)
    want = stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode)
    assert want == 0o666 & ~umask
    for name in ("atomic.json", "text.txt"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == want, name


def test_atomic_rewrite_keeps_an_existing_files_mode(tmp_path):
    path = tmp_path / "m.json"
    atomic_write_json(path, {"v": 1})
    os.chmod(path, 0o640)
    atomic_write_json(path, {"v": 2})  # as open(path, "w") would: the file keeps its permissions
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640 and json.loads(path.read_text()) == {"v": 2}


# ---------------------------------------------------------------------------------------------- JSONL


def _truncated_line_file(tmp_path):
    """Line 2 is cut mid-object but ends with a newline, then a good line 3."""
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "a", "v": 1}\n{"id": "b", "v"\n{"id": "c", "v": 3}\n')
    return path


def test_read_jsonl_names_file_and_line(tmp_path):
    path = _truncated_line_file(tmp_path)
    with pytest.raises(CorruptLineError, match=r"rows\.jsonl:2: invalid JSON \(truncated or corrupt line\)") as e:
        list(read_jsonl(path))
    assert e.value.lineno == 2 and e.value.path == path and isinstance(e.value, ValueError)
    path.write_text('{"id": "a"}\n[1, 2]\n')
    with pytest.raises(CorruptLineError, match=r"rows\.jsonl:2: expected a JSON object, got list"):
        list(read_jsonl(path))
    path.write_bytes(b'{"id": "a"}\n{"id": "caf\xe9"}\n')
    with pytest.raises(CorruptLineError, match=r"rows\.jsonl:2: not UTF-8 text \(byte 0xe9"):
        list(read_jsonl(path))


def test_appender_cuts_a_partial_last_line_and_resumes(tmp_path):
    """The trace of a kill (a last line without its newline) is dropped and recomputed."""
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}\n{"id": "c", "v": [1, 2')
    with JsonlAppender(path) as out:
        assert out.done == {"a", "b"}
        out.write({"id": "c", "v": [1, 2]})
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b", "c"]


def test_appender_refuses_a_corrupt_complete_line(tmp_path):
    """A broken line *with* its newline cannot come from a kill (edit, two writers): a clear error naming
    file and line, and the file is left as it was (nothing truncated, nothing appended)."""
    path = _truncated_line_file(tmp_path)
    before = path.read_bytes()
    with pytest.raises(CorruptLineError, match=r"rows\.jsonl:2: invalid JSON"):
        JsonlAppender(path)
    path.write_bytes(before + b'{"id": "d", "v": 4')  # also a partial tail: still nothing touched
    before = path.read_bytes()
    with pytest.raises(CorruptLineError, match=r"rows\.jsonl:2"):
        JsonlAppender(path)
    assert path.read_bytes() == before


def test_reference_reader_names_file_and_line(tmp_path):
    from lpoi.train.reference import _read

    path = tmp_path / "reference.jsonl"
    path.write_text('{"meta": {"k": 5}}\n{"id": "a", "list": [1.0, 2.0\n')
    with pytest.raises(CorruptLineError, match=r"reference\.jsonl:2: invalid JSON"):
        _read(path)


def test_read_json_error_names_file(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"a": 1,\n "b": }')
    with pytest.raises(InputError, match=r"x\.json: invalid JSON at line 2 column 7"):
        read_json(path)


# ---------------------------------------------------------------------------------------------- images


def test_truncated_png_is_truncated(tmp_path):
    buf = io.BytesIO()
    scene(64, 64).save(buf, "PNG")
    (tmp_path / "t.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageRejected) as e:
        load_image(tmp_path / "t.png")
    assert e.value.reason == "truncated"


def test_png_checksum_mismatch_is_its_own_reason(tmp_path):
    with pytest.raises(ImageRejected) as e:
        load_image(bad_crc_png(tmp_path / "crc.png"))
    assert e.value.reason == "bad_checksum" and "checksum" in e.value.detail
    # a CRC that matches damaged deflate data: only the decoder sees it
    with pytest.raises(ImageRejected) as e:
        load_image(broken_zlib_png(tmp_path / "zlib.png"))
    assert e.value.reason == "corrupt" and "broken data stream" in e.value.detail


@pytest.mark.parametrize("gap", [False, True])
def test_jpeg_corruption_pillow_lets_through_is_caught(tmp_path, gap, capfd):
    path = corrupt_jpeg(tmp_path / "c.jpg", gap=gap)
    img = load_image(path)  # Pillow decodes it without a word ...
    assert img.size == (64, 64)
    with pytest.raises(ImageRejected) as e:  # ... libjpeg's warning is what tells
        check_image_integrity(path)
    assert e.value.reason == "corrupt" and "Corrupt JPEG data" in e.value.detail
    assert "Corrupt JPEG data" not in capfd.readouterr().err  # captured, not printed


def test_integrity_check_passes_clean_images_silently(tmp_path, capfd):
    for name, kw in (("a.jpg", {"quality": 90}), ("p.jpg", {"progressive": True}), ("a.png", {})):
        scene(80, 60).save(tmp_path / name, **kw)
        check_image_integrity(tmp_path / name)
    Image.new("CMYK", (16, 16), (1, 2, 3, 4)).save(tmp_path / "cmyk.jpg", quality=100)
    check_image_integrity(tmp_path / "cmyk.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    check_image_integrity(tmp_path / "junk.jpg")  # not an image at all: load_image's business
    assert capfd.readouterr().err == ""
