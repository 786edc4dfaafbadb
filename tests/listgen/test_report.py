"""Contact sheet geometry/content/determinism and the listgen metrics aggregation (hand-computed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lpoi.listgen.report import contact_sheet, listgen_metrics


def _list(folder: Path, stem: str, w: int, h: int, n: int = 5) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        p = folder / f"{stem}_{k}.png"
        Image.new("RGB", (w, h), (0, 0, 40 * k + 40)).save(p)
        paths.append(p)
    return paths


def test_contact_sheet_size_content_and_determinism(tmp_path):
    """3 samples x 5 positions, thumb 96, 4 px padding: width 4 + 5 * (96 + 4) = 504, height 4 + 3 * 100 = 304.
    Sample 0 is 192 x 96 -> scaled by 1/2 to 96 x 48, centred: rows (96 - 48) // 2 = 24 .. 71 of its cell."""
    rows = [
        (_list(tmp_path / "l", "a", 192, 96), [20, 10, 100, 80], "red car", "a"),
        (_list(tmp_path / "l", "b", 50, 100), None, "dog", "b"),
        (_list(tmp_path / "l", "c", 64, 64), [0, 0, 64, 64], "a very long phrase that cannot fit", "c"),
    ]
    out = tmp_path / "sheet.png"
    assert contact_sheet(rows, out, thumb=96) == (504, 304)
    with Image.open(out) as im:
        assert im.size == (504, 304)
        a = np.asarray(im.convert("RGB")).astype(int)
    # column k of row 0 shows list image k (flat blue 40k+40); x = 80 of the cell is right of the box
    for k in range(5):
        left, top = 4 + k * 100, 4
        assert tuple(a[top + 60, left + 80]) == (0, 0, 40 * k + 40)
        assert tuple(a[top + 20, left + 80]) == (255, 255, 255)  # letterbox above the image (rows 24..71)
        assert tuple(a[top + 24, left + 80]) == (0, 0, 40 * k + 40)
        assert tuple(a[top + 71, left + 80]) == (0, 0, 40 * k + 40)
        assert tuple(a[top + 72, left + 80]) == (255, 255, 255)
    # the box [20, 10, 100, 80] scaled by 1/2 -> x 10..50, y 5..40 inside the image at (4, 4 + 24)
    green = (a == (0, 255, 0)).all(axis=-1)
    assert green[4 + 24 + 5 : 4 + 24 + 40, 4 + 10].sum() > 20  # left edge of the box
    assert not green[:, 104:].any()  # box only on column 0
    # the label band (black) at the top of column 0
    assert (a[5, 6:90] == 0).all(axis=-1).sum() > 40
    again = tmp_path / "sheet2.png"
    contact_sheet(rows, again, thumb=96)
    assert out.read_bytes() == again.read_bytes()


def test_contact_sheet_max_rows_and_empty(tmp_path):
    rows = [(_list(tmp_path / "l", f"s{i}", 20, 20, n=3), [1, 1, 5, 5], "cup", f"s{i}") for i in range(20)]
    # 16 rows x 3 columns, thumb 32: 4 + 3 * 36 = 112 wide, 4 + 16 * 36 = 580 high
    assert contact_sheet(rows, tmp_path / "s.png", thumb=32, max_rows=16) == (112, 580)
    with Image.open(tmp_path / "s.png") as im:
        assert im.size == (112, 580)
    assert contact_sheet([], tmp_path / "e.png", thumb=32) == (40, 40)
    assert (tmp_path / "e.png").is_file()
    with pytest.raises(FileNotFoundError, match="s_missing"):
        contact_sheet([([tmp_path / "s_missing.png"], None, "x", "s_missing")], tmp_path / "m.png")


def test_listgen_metrics_hand_computed():
    """4 detect rows with 3 + 2 + 1 + 0 candidates; objects found for 3 (one random): detection 3/4.
    Verify: 2 true, 1 false, 1 null -> pass rate 2/3; tries 1 + 3 + 2 = 6 over 3 rows -> 2.
    Lists: areas 0.1 and 0.3 (one manifest-style, one entry-style) + 1 error -> mean 0.2.
    Timings: detect 8 samples in 2 s -> 4/s; verify 0 s -> null."""
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
    timings = {"detect": {"n": 8, "seconds": 2.0}, "verify": {"n": 4, "seconds": 0.0}}
    m = listgen_metrics(prepared, iter(detect), iter(segment), iter(verify), iter(lists), timings)
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
    assert m["samples_per_s"] == {"detect": pytest.approx(4.0), "verify": None}


def test_listgen_metrics_empty_is_null_not_zero():
    m = listgen_metrics({}, [], [], [{"verified": None}], [], {})
    assert m["detection_rate"] is None and m["verify_pass_rate"] is None
    assert m["mean_hidden_area_fraction"] is None and m["lists_out"] == 0
