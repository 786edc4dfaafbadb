"""Image lists: exact hidden fractions, monotone visibility, original preserved, highlight, bbox vs sam,
L = 2..7, blend values, fills, deterministic PNGs, build_lists resume and worker parity."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lpoi.listgen.interpolate import (
    ListBuildError,
    box_mask,
    build_lists,
    hidden_fraction,
    iter_build_lists,
    load_mask,
    make_list,
    save_list,
    save_mask,
    visibility,
)

H, W = 60, 80


def _image(seed: int = 0, lo: int = 1, hi: int = 250) -> Image.Image:
    """Random RGB with no channel at 0 and none at 255: black fill always changes a pixel, no pixel is red."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(lo, hi, (H, W, 3), dtype=np.uint8))


def _disk(cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _changed(a, b) -> np.ndarray:
    return (np.asarray(a) != np.asarray(b)).any(axis=-1)


def _round_half_up(q: Fraction) -> int:
    return math.floor(q + Fraction(1, 2))


BOX_WIDE = [10.0, 15.0, 70.0, 45.0]  # 60 x 30: longer axis x
BOX_TALL = [25.0, 5.0, 45.0, 58.0]  # 20 x 53: longer axis y
SAM_WIDE = _disk(40, 30, 14)  # inside BOX_WIDE


def test_box_mask_by_hand():
    """Box [2.5, 3, 10, 7.2] touches columns 2..9 (8) and rows 3..7 (5): 40 pixels."""
    m = box_mask([2.5, 3, 10, 7.2], 20, 20)
    assert m.sum() == 40
    assert (
        m[3:8, 2:10].all()
        and not m[:3].any()
        and not m[8:].any()
        and not m[:, :2].any()
        and not m[:, 10:].any()
    )
    assert box_mask([-5, -5, 3, 2], 10, 10).sum() == 3 * 2  # clipped
    assert box_mask([5, 5, 5, 9], 10, 10).sum() == 0  # zero width


@pytest.mark.parametrize("size", [2, 3, 4, 5, 6, 7])
@pytest.mark.parametrize("kind", ["bbox", "sam"])
@pytest.mark.parametrize("box", [BOX_WIDE, BOX_TALL], ids=["wide", "tall"])
def test_progressive_exact_fractions_monotone_and_confined(size, kind, box):
    img = _image(size)
    region = box_mask(box, H, W) if kind == "bbox" else (SAM_WIDE if box is BOX_WIDE else _disk(35, 30, 9))
    n = int(region.sum())
    images = make_list(img, region, box, size=size)
    assert len(images) == size
    assert np.array_equal(np.asarray(images[0]), np.asarray(img))  # the original, exactly
    along_x = (box[2] - box[0]) >= (box[3] - box[1])
    prev = np.zeros((H, W), bool)
    for k, im in enumerate(images):
        assert im.mode == "RGB" and im.size == (W, H)
        ch = _changed(img, im)
        assert not (ch & ~region).any()  # nothing outside the region changes
        want = _round_half_up(Fraction(k * n, size - 1))
        assert ch.sum() == want, (k, ch.sum(), want)
        assert (np.asarray(im)[ch] == 0).all()  # black fill
        assert hidden_fraction(img, im, region) == pytest.approx(want / n)
        assert (prev & ~ch).sum() == 0  # monotone: once hidden, stays hidden
        prev = ch
        # hidden pixels come first along the longer axis (ties: the other axis, low first)
        ys, xs = np.nonzero(region)
        main, other = (xs, ys) if along_x else (ys, xs)
        hid = ch[ys, xs]
        if 0 < hid.sum() < n:
            key = main * 10_000 + other
            assert key[hid].max() < key[~hid].min()
    assert _changed(img, images[-1]).sum() == n  # fully hidden


def test_bbox_vs_sam_regions():
    """With the SAM disk, box pixels outside the disk keep their values; with bbox every box pixel is hidden."""
    img = _image(1)
    sam = make_list(img, SAM_WIDE, BOX_WIDE, size=5)[-1]
    bbox_region = box_mask(BOX_WIDE, H, W)
    bbox = make_list(img, bbox_region, BOX_WIDE, size=5)[-1]
    assert np.array_equal(_changed(img, sam), SAM_WIDE)
    assert np.array_equal(_changed(img, bbox), bbox_region)
    assert (bbox_region & ~SAM_WIDE).sum() > 0


@pytest.mark.parametrize("size", [2, 3, 4, 5, 7])
def test_blend_values_exact(size):
    """Region pixel k = round_half_up(((L-1-k) * x + k * fill) / (L-1)); fill = mean colour outside."""
    img = _image(3)
    arr = np.asarray(img).astype(int)
    region = SAM_WIDE
    images = make_list(img, region, BOX_WIDE, size=size, mode="blend", fill="mean")
    outside = arr[~region]
    fill = [_round_half_up(Fraction(int(outside[:, c].sum()), len(outside))) for c in range(3)]
    ys, xs = np.nonzero(region)
    sample = list(zip(ys[::37], xs[::37]))
    prev_dist = np.zeros(len(ys))
    for k, im in enumerate(images):
        out = np.asarray(im).astype(int)
        assert np.array_equal(out[~region], arr[~region])
        for y, x in sample:
            for c in range(3):
                want = _round_half_up(Fraction((size - 1 - k) * int(arr[y, x, c]) + k * fill[c], size - 1))
                assert out[y, x, c] == want
        dist = np.abs(out[ys, xs] - np.asarray(fill)).sum(axis=1)
        assert (dist <= prev_dist).all() or k == 0  # monotone: every pixel moves towards the fill
        prev_dist = dist
    assert (np.asarray(images[-1])[region] == fill).all()


def test_blend_tie_rounding():
    """x = 3, fill = 0, L = 7, k = 1: 5 * 3 / 6 = 2.5 exactly -> 3 (half up)."""
    img = Image.new("RGB", (10, 10), (3, 3, 3))
    region = np.zeros((10, 10), bool)
    region[2:5, 2:5] = True
    images = make_list(img, region, [2, 2, 5, 5], size=7, mode="blend", fill="black")
    assert (np.asarray(images[1])[region] == 3).all()
    assert (np.asarray(images[3])[region] == 2).all()  # 3 * 3/6 = 1.5 -> 2


def test_mean_fill_excludes_region():
    """Left half (outside) colour A, object colour B: the mean fill is A, not a mix with B."""
    a = np.zeros((H, W, 3), np.uint8)
    a[:] = (10, 20, 30)
    region = box_mask(BOX_WIDE, H, W)
    a[region] = (240, 240, 240)
    images = make_list(Image.fromarray(a), region, BOX_WIDE, size=3, fill="mean")
    assert (np.asarray(images[-1])[region] == (10, 20, 30)).all()


@pytest.mark.parametrize("sigma", [None, 3.0, 40.0])
def test_blur_fill_uses_surroundings_only(sigma):
    """Constant surroundings: the normalised blur of the outside is that constant, whatever the object."""
    a = np.zeros((H, W, 3), np.uint8)
    a[:] = (10, 200, 90)
    a[SAM_WIDE] = (250, 0, 250)
    images = make_list(Image.fromarray(a), SAM_WIDE, BOX_WIDE, size=5, fill="blur", blur_sigma=sigma)
    assert (np.asarray(images[-1])[SAM_WIDE] == (10, 200, 90)).all()


def test_blur_fill_is_convex_and_smooth():
    """Fill values lie within the per-channel range of the surroundings (a weighted average of them)."""
    yy, xx = np.mgrid[0:H, 0:W]
    a = np.stack([xx * 3, yy * 4, np.full_like(xx, 50)], -1).astype(np.uint8)
    img = Image.fromarray(a)
    region = box_mask(BOX_WIDE, H, W)
    last = np.asarray(make_list(img, region, BOX_WIDE, size=2, fill="blur")[-1]).astype(int)
    out = a[~region].astype(int)
    assert (last[region] >= out.min(axis=0)).all() and (last[region] <= out.max(axis=0)).all()
    assert (last[~region] == a[~region]).all()


def _ellipse_level(box, x, y):
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    ax, ay = (x1 - x0) / 2 * math.sqrt(2), (y1 - y0) / 2 * math.sqrt(2)
    return np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)


def test_highlight_only_from_k1_and_only_the_ellipse():
    """The ellipse through the box corners (semi-axes = half sides * sqrt 2): changed pixels outside the
    region are pure red and lie on it (normalised radius within its stroke width of 1)."""
    img = _image(4)  # channel values < 250: no pure red pixel to begin with
    region = SAM_WIDE
    box = [25.0, 16.0, 55.0, 44.0]
    images = make_list(img, region, box, size=5, highlight=True)
    assert np.array_equal(np.asarray(images[0]), np.asarray(img))
    for im in images[1:]:
        arr = np.asarray(im)
        red = (arr == (255, 0, 0)).all(axis=-1)
        assert red.sum() > 50
        ch = _changed(img, im)
        outside = ch & ~region
        assert (red | ~outside).all()  # every change outside the region is red
        ys, xs = np.nonzero(outside)
        lvl = _ellipse_level(box, xs + 0.5, ys + 0.5)
        stroke = 2 / min(box[2] - box[0], box[3] - box[1])  # width 2 px, relative to the smaller semi-axis
        assert (lvl <= 1 + 0.1).all() and (lvl >= 1 - stroke * 2.5).all()
    plain = make_list(img, region, box, size=5, highlight=False)
    for hi, lo in zip(images[1:], plain[1:]):
        assert not np.array_equal(np.asarray(hi), np.asarray(lo))


def test_visibility_and_validation():
    assert visibility(5) == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert visibility(2) == [1.0, 0.0]
    img = _image()
    with pytest.raises(ValueError, match="lists.size"):
        make_list(img, SAM_WIDE, BOX_WIDE, size=1)
    with pytest.raises(ValueError, match="lists.size"):
        make_list(img, SAM_WIDE, BOX_WIDE, size=True)
    with pytest.raises(ValueError, match="lists.mode"):
        make_list(img, SAM_WIDE, BOX_WIDE, mode="zigzag")
    with pytest.raises(ValueError, match="lists.fill"):
        make_list(img, SAM_WIDE, BOX_WIDE, fill="pink")
    with pytest.raises(ListBuildError, match="empty_region"):
        make_list(img, np.zeros((H, W), bool), BOX_WIDE)
    with pytest.raises(ListBuildError, match="bad_mask"):
        make_list(img, np.ones((H, W + 1), bool), BOX_WIDE)


def test_save_list_deterministic_lossless(tmp_path):
    img = _image(5)
    lists = [make_list(img, SAM_WIDE, BOX_WIDE, size=5, fill="blur", highlight=True) for _ in range(2)]
    p1 = save_list(lists[0], tmp_path / "a", "s1")
    p2 = save_list(lists[1], tmp_path / "b", "s1")
    assert [p.name for p in p1] == [f"s1_{k}.png" for k in range(5)]
    assert [p.read_bytes() for p in p1] == [p.read_bytes() for p in p2]
    for p, im in zip(p1, lists[0]):
        with Image.open(p) as back:
            assert back.mode == "RGB" and np.array_equal(np.asarray(back), np.asarray(im))
            assert not back.info.get("exif") and "icc_profile" not in back.info
    with pytest.raises(ValueError, match="unsafe"):
        save_list(lists[0], tmp_path, "../x")


def test_mask_png_roundtrip(tmp_path):
    save_mask(SAM_WIDE, tmp_path / "m.png")
    with Image.open(tmp_path / "m.png") as im:
        assert im.mode == "L"
        assert set(np.unique(np.asarray(im)).tolist()) == {0, 255}
    assert np.array_equal(load_mask(tmp_path / "m.png"), SAM_WIDE)


# ---------------------------------------------------------------------------------------------- build_lists


@pytest.fixture()
def tasks(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    out = []
    for i in range(6):
        _image(10 + i).save(src / f"{i}.png")
        mask_path = None
        if i % 2 == 0:
            mask_path = str(tmp_path / "masks" / f"{i}.png")
            save_mask(_disk(30 + i, 30, 10), mask_path)
        out.append(
            {
                "id": f"s{i}",
                "image_path": str(src / f"{i}.png"),
                "box": [15 + i, 15, 50 + i, 45],
                "mask_path": mask_path,
            }
        )
    return out


def _read_all(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_build_lists_entries(tasks, tmp_path):
    params = {"size": 5, "mode": "progressive", "fill": "black", "highlight": True, "mask_kind": "sam"}
    stats: dict[str, int] = {}
    entries = build_lists(tasks, tmp_path / "lists", stats=stats, **params)
    assert [e["id"] for e in entries] == [t["id"] for t in tasks]
    assert stats == {"built": 6, "resumed": 0, "errors": 0}
    for t, e in zip(tasks, entries):
        assert e["visibility"] == [1.0, 0.75, 0.5, 0.25, 0.0]
        assert len(e["images"]) == 5 and all(Path(p).is_file() for p in e["images"])
        if t["mask_path"]:
            assert e["mask"] == "sam"
            n = int(load_mask(t["mask_path"]).sum())
        else:  # no SAM mask for this sample: the box, recorded as such
            assert e["mask"] == "bbox"
            x0, y0, x1, y1 = t["box"]
            n = (x1 - x0) * (y1 - y0)
        assert e["region_pixels"] == n and e["mask_area"] == pytest.approx(n / (H * W))
        with Image.open(e["images"][0]) as im0, Image.open(t["image_path"]) as orig:
            assert np.array_equal(np.asarray(im0), np.asarray(orig))


def test_build_lists_resume_skips_existing(tasks, tmp_path):
    params = {"size": 4, "fill": "mean", "mask_kind": "bbox"}
    ref = build_lists(tasks, tmp_path / "ref", **params)
    ref_files = _read_all(tmp_path / "ref")
    # "interrupted" run: sample s1 finished (but with marker content), s2 only half written
    out = tmp_path / "out"
    out.mkdir()
    marker = {}
    for k in range(4):
        Image.new("RGB", (W, H), (k, 0, 0)).save(out / f"s1_{k}.png")
        marker[f"s1_{k}.png"] = (out / f"s1_{k}.png").read_bytes()
    (out / "s2_0.png").write_bytes(ref_files["s2_0.png"])
    stats: dict[str, int] = {}
    entries = build_lists(tasks, out, stats=stats, **params)
    assert stats == {"built": 5, "resumed": 1, "errors": 0}
    files = _read_all(out)
    for name, data in marker.items():
        assert files[name] == data  # skipped: not rewritten
    assert {k: v for k, v in files.items() if not k.startswith("s1_")} == {
        k: v for k, v in ref_files.items() if not k.startswith("s1_")
    }
    strip = [{k: v for k, v in e.items() if k != "images"} for e in entries]
    assert strip == [{k: v for k, v in e.items() if k != "images"} for e in ref]


def test_build_lists_workers_match_in_process(tasks, tmp_path):
    params = {"size": 5, "mode": "blend", "fill": "blur", "highlight": True, "mask_kind": "sam"}
    e0 = build_lists(tasks, tmp_path / "w0", num_workers=0, **params)
    e2 = list(iter_build_lists(tasks, tmp_path / "w2", num_workers=2, chunk=2, **params))
    assert _read_all(tmp_path / "w0") == _read_all(tmp_path / "w2")
    assert len(_read_all(tmp_path / "w0")) == 30

    def rel(entries, folder):
        return [
            {**e, "images": [Path(p).relative_to(folder).as_posix() for p in e["images"]]} for e in entries
        ]

    assert rel(e0, tmp_path / "w0") == rel(e2, tmp_path / "w2")


def test_build_lists_error_entries(tmp_path):
    img = tmp_path / "a.png"
    _image().save(img)
    save_mask(np.ones((H + 1, W), bool), tmp_path / "wrong.png")
    tasks = [
        {"id": "ok", "image_path": str(img), "box": BOX_WIDE, "mask_path": None},
        {"id": "noimg", "image_path": str(tmp_path / "nope.png"), "box": BOX_WIDE, "mask_path": None},
        {"id": "nomask", "image_path": str(img), "box": BOX_WIDE, "mask_path": str(tmp_path / "gone.png")},
        {"id": "shape", "image_path": str(img), "box": BOX_WIDE, "mask_path": str(tmp_path / "wrong.png")},
        {"id": "empty", "image_path": str(img), "box": [5, 5, 5, 20], "mask_path": None},
        {"id": "badbox", "image_path": str(img), "box": [1, 2, 3], "mask_path": None},
        {"id": "a/../b", "image_path": str(img), "box": BOX_WIDE, "mask_path": None},
    ]
    stats: dict[str, int] = {}
    entries = build_lists(tasks, tmp_path / "out", mask_kind="sam", stats=stats)
    reasons = [e.get("error", {}).get("reason") for e in entries]
    assert reasons == [None, "image_missing", "missing_mask", "bad_mask", "empty_region", "bad_box", None]
    assert stats == {"built": 2, "resumed": 0, "errors": 5}
    # an id that is not a plain file name becomes a hashed stem inside the output folder
    assert all(
        Path(p).parent == tmp_path / "out" and Path(p).name.startswith("id-") for p in entries[-1]["images"]
    )
