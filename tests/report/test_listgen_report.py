"""Contact sheet geometry/content/determinism and the listgen metrics aggregation (hand-computed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lpoi.report.listgen import (
    CELL_IN,
    DPI,
    HEADER_IN,
    LABEL_IN,
    SheetRow,
    _row_label,
    _visibility_headers,
    contact_sheet,
    contact_sheet_size,
    listgen_metrics,
)


def _list(folder: Path, stem: str, w: int, h: int, n: int = 5) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        p = folder / f"{stem}_{k}.png"
        Image.new("RGB", (w, h), (0, 0, 40 * k + 40)).save(p)
        paths.append(p)
    return paths


def _cell(r: int, c: int) -> tuple[slice, slice]:
    """Pixel rows/columns of cell (r, c): 0.04 in margins inside CELL_IN squares, right of the labels."""
    x0 = round((LABEL_IN + c * CELL_IN + 0.04) * DPI)
    y0 = round((HEADER_IN + r * CELL_IN + 0.04) * DPI)
    n = round((CELL_IN - 0.08) * DPI)
    return slice(y0 + 2, y0 + n - 2), slice(x0 + 2, x0 + n - 2)


def _green(a):
    return (a[..., 1] > 150) & (a[..., 0] < 80) & (a[..., 2] < 80)


def test_contact_sheet_layout_labels_content_and_determinism(tmp_path):
    """3 samples x 5 positions. Size: (LABEL_IN + 5 CELL_IN) x (HEADER_IN + 3 CELL_IN) inches at DPI.
    Each cell shows its list image (flat blue 40k+40, square, so it fills the cell); the object's box is
    green on column 0 only; the header band and the label column hold text (dark pixels) for every
    row; the PNG bytes are the same on a second run."""
    rows = [
        SheetRow(_list(tmp_path / "l", "a", 64, 64), [1.0, 0.75, 0.5, 0.25, 0.0], [16, 16, 48, 48], "red car", "a",
                 "chosen_first", True),
        SheetRow(_list(tmp_path / "l", "b", 64, 64), None, None, "dog", "b", "random", None),
        SheetRow(_list(tmp_path / "l", "c", 64, 64), None, [8, 8, 56, 56], "a very long phrase " * 6, "c", "question",
                 False),
    ]
    out = tmp_path / "sheet.png"
    w, h = contact_sheet(rows, out)
    assert (w, h) == contact_sheet_size(3, 5) == (round((LABEL_IN + 5 * CELL_IN) * DPI),
                                                  round((HEADER_IN + 3 * CELL_IN) * DPI))
    with Image.open(out) as im:
        assert im.size == (w, h)
        a = np.asarray(im.convert("RGB")).astype(int)
    for r in range(3):
        for k in range(5):
            ys, xs = _cell(r, k)
            cy, cx = (ys.start + ys.stop) // 2, (xs.start + xs.stop) // 2
            assert tuple(a[cy, cx]) == (0, 0, 40 * k + 40), (r, k)
            if k == 0 and r != 1:
                assert _green(a[ys, xs]).sum() > 30, r
            else:
                assert not _green(a[ys, xs]).any(), (r, k)  # the box only on the original, only with a box
        label = a[round((HEADER_IN + r * CELL_IN) * DPI): round((HEADER_IN + (r + 1) * CELL_IN) * DPI),
                  : round(LABEL_IN * DPI) - 4]
        assert (label.sum(axis=-1) < 200).sum() > 100, r  # text in the label column
    header = a[round(0.45 * DPI): round(HEADER_IN * DPI), round(LABEL_IN * DPI):]
    for k in range(5):  # a column header ("100 % visible", "75 %", ...) above every column
        band = header[:, round(k * CELL_IN * DPI): round((k + 1) * CELL_IN * DPI)]
        assert (band.sum(axis=-1) < 200).sum() > 20, k
    contact_sheet(rows, tmp_path / "again.png")
    assert out.read_bytes() == (tmp_path / "again.png").read_bytes()


def test_row_labels_and_headers():
    row = SheetRow([], None, None, "a very long phrase about an orange circle near the house", "s1", "question", False)
    assert _row_label(row).splitlines() == ["s1", "“a very long phrase", "about an orange circle …",
                                            "source: question", "verified: no"]
    assert _row_label(row._replace(verified=None, source=None)).splitlines()[-2:] == ["source: ?", "verified: not checked"]
    assert _visibility_headers([row._replace(visibility=[1.0, 0.5, 0.0], images=[1, 2, 3])], 3) == \
        ["100 % visible", "50 %", "0 %"]
    assert _visibility_headers([], 5) == ["100 % visible", "75 %", "50 %", "25 %", "0 %"]


def test_contact_sheet_max_rows_empty_and_missing(tmp_path):
    rows = [SheetRow(_list(tmp_path / "l", f"s{i}", 20, 20, n=3), None, [1, 1, 5, 5], "cup", f"s{i}") for i in range(20)]
    assert contact_sheet(rows, tmp_path / "s.png", max_rows=16) == contact_sheet_size(16, 3)
    with Image.open(tmp_path / "s.png") as im:
        assert im.size == contact_sheet_size(16, 3)
    assert contact_sheet([], tmp_path / "e.png") == contact_sheet_size(1, 1)
    assert (tmp_path / "e.png").is_file()
    with pytest.raises(FileNotFoundError, match="s_missing"):
        contact_sheet([SheetRow([tmp_path / "s_missing.png"], None, None, "x", "s_missing")], tmp_path / "m.png")


def test_prepare_summary_line():
    from lpoi.listgen.prepare import prepare_summary_line

    summary = {"records_in": 26, "records_out": 24, "rejects_by_reason": {"unsafe_path": 1, "duplicate_record": 1}}
    assert prepare_summary_line(summary, "data/prepared/rejects.jsonl") == (
        "prepare: kept 24 of 26 records; rejected 2 (duplicate_record 1, unsafe_path 1), "
        "see data/prepared/rejects.jsonl")
    assert prepare_summary_line({"records_in": 3, "records_out": 3}, "r") == "prepare: kept 3 of 3 records"


def test_listgen_metrics_hand_computed():
    """4 detect rows with 3 + 2 + 1 + 0 candidates; objects found for 3 (one random): detection 3/4.
    Verify: 2 true, 1 false, 1 null -> pass rate 2/3; tries 1 + 3 + 2 = 6 over 3 rows -> 2.
    Lists: areas 0.1 and 0.3 (one manifest-style, one entry-style) + 1 error -> mean 0.2.
    No timings: metrics are deterministic results."""
    prepared = {"records_in": 6, "records_out": 4, "rejects_by_reason": {"too_small": 1, "duplicate_id": 1}}
    detect = [
        {
            "candidates": [{"source": "chosen_first"}, {"source": "question"}, {"source": "chosen_rest"}],
            "object": {"source": "chosen_first"},
        },
        {
            "candidates": [{"source": "chosen_first"}, {"source": "chosen_first"}],
            "object": {"source": "chosen_first"},
        },
        {"candidates": [{"source": "question"}], "object": None},
        {"candidates": [], "object": {"source": "random"}},
    ]
    segment = [{"mask": "sam"}, {"mask": "sam"}, {"mask": "bbox"}, {"mask": None}]
    verify = [
        {"verified": True, "tries": 1},
        {"verified": False, "tries": 3},
        {"verified": True, "tries": 2},
        {"verified": None},
    ]
    lists = [
        {"object": {"mask_area": 0.1}},
        {"mask_area": 0.3},
        {"id": "x", "error": {"reason": "empty_region"}},
    ]
    m = listgen_metrics(prepared, iter(detect), iter(segment), iter(verify), iter(lists))
    assert m["records_in"] == 6 and m["records_out"] == 4
    assert m["rejects"] == {"duplicate_id": 1, "too_small": 1} and m["rejects_total"] == 2
    assert m["candidates"] == {"chosen_first": 3, "chosen_rest": 1, "question": 2}
    assert m["candidates_per_sample"] == pytest.approx(6 / 4)
    assert m["object_source"] == {"chosen_first": 2, "random": 1}
    assert m["detection_rate"] == pytest.approx(0.75)
    assert m["sam_mask_rate"] == pytest.approx(0.5)
    assert m["verify_pass_rate"] == pytest.approx(2 / 3)
    assert m["verify_mean_tries"] == pytest.approx(2.0)
    assert m["lists_out"] == 2 and m["lists_errors"] == 1
    assert m["mean_hidden_area_fraction"] == pytest.approx(0.2)
    assert not {"samples_per_s", "seconds"} & m.keys()


def test_listgen_metrics_empty_is_null_not_zero():
    m = listgen_metrics({}, [], [], [{"verified": None}], [])
    assert m["detection_rate"] is None and m["verify_pass_rate"] is None
    assert m["mean_hidden_area_fraction"] is None and m["lists_out"] == 0
