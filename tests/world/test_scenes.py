"""The shapes world's generator: determinism, ground truth that matches the pixels, co-occurrence."""

import random

import numpy as np
import pytest

from lpoi.world.scenes import (
    CLASSES,
    COLOURS,
    PALETTES,
    PAIRS,
    caption,
    hallucinated_caption,
    make_scene,
    partner,
    rle_decode,
    rle_encode,
    sample_classes,
)


def test_same_seed_same_pixels_and_splits_differ():
    a, b = make_scene(0, "train", 7), make_scene(0, "train", 7)
    assert a.image.tobytes() == b.image.tobytes()
    assert [(o.cls, o.box) for o in a.objects] == [(o.cls, o.box) for o in b.objects]
    others = [make_scene(0, "test", 7), make_scene(1, "train", 7), make_scene(0, "train", 8)]
    assert all(o.image.tobytes() != a.image.tobytes() for o in others)


@pytest.mark.parametrize("index", range(40))
def test_masks_boxes_and_colours_are_the_drawn_pixels(index):
    s = make_scene(3, "train", index)
    px = np.asarray(s.image)
    covered = np.zeros(px.shape[:2], dtype=bool)
    for o in s.objects:
        assert o.mask.any() and o.visible >= 0.6 - 1e-9
        assert (px[o.mask] == COLOURS[o.colour]).all()  # every visible pixel has the object's colour
        assert o.colour in PALETTES[o.cls]
        ys, xs = np.nonzero(o.mask)
        assert o.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # tight box, exclusive end
        assert not (covered & o.mask).any()  # visible masks never overlap
        covered |= o.mask
    bg = px[~covered]
    assert (bg == bg[0]).all()  # what no object covers is plain background
    assert len(set(s.classes)) == len(s.classes) and s.classes == sorted(s.classes, key=CLASSES.index)


def test_occlusion_happens():
    scenes = [make_scene(0, "train", i) for i in range(200)]
    assert any(o.visible < 1 for s in scenes for o in s.objects)


def test_cooccurrence_matches_the_generating_model():
    # A selected pair shows its first class with prob 1/2 + p/2 and both with prob p, so
    # P(partner present | class present) = p / (1/2 + p/2) = 2p / (1 + p)  (0.857 for p = 0.75).
    rng = random.Random(0)
    for p in (0.75, 0.3):
        draws = [sample_classes(rng, p) for _ in range(6000)]
        with_x = [d for d in draws if "circle" in d]
        share = sum("square" in d for d in with_x) / len(with_x)
        assert share == pytest.approx(2 * p / (1 + p), abs=0.03)
    assert all(partner(partner(c)) == c for c in CLASSES) and {partner("ring")} == {"diamond"}
    assert {c for pair in PAIRS for c in pair} == set(CLASSES)


def test_captions_and_the_hallucinated_rejected_answer():
    s = make_scene(0, "train", 2)
    text = caption(s.objects)
    assert text.startswith(("A ", "An ")) and text.endswith(".")
    for o in s.objects:
        assert f"{o.colour} {o.cls}" in text
    found = 0
    for i in range(300):
        s = make_scene(0, "train", i)
        rejected, added = hallucinated_caption(s, random.Random(i))
        assert added not in s.classes
        if s.absent_partners():
            assert added in s.absent_partners()  # the co-occurrence hallucination is preferred
            found += 1
        named = [w.strip(",.") for w in rejected.split() if w.strip(",.") in CLASSES]
        assert named == sorted(s.classes + [added], key=CLASSES.index)  # canonical order, one extra object
    assert found > 50


@pytest.mark.parametrize("mask", [
    np.zeros((3, 4), bool), np.ones((3, 4), bool), np.eye(4, dtype=bool),
    np.array([[1, 1, 0], [0, 0, 1]], bool),
])
def test_rle_round_trip(mask):
    rle = rle_encode(mask)
    assert rle["size"] == list(mask.shape) and sum(rle["counts"]) == mask.size
    assert (rle_decode(rle) == mask).all()


def test_rle_known_runs_and_bad_input():
    assert rle_encode(np.array([[1, 1, 0], [0, 0, 1]], bool))["counts"] == [0, 2, 3, 1]
    with pytest.raises(ValueError, match="sum to 5"):
        rle_decode({"size": [2, 3], "counts": [2, 3]})


def _named(text):
    return [w.strip(",.") for w in text.split() if w.strip(",.") in CLASSES]


def test_length_matched_and_inserted_rejections():
    with_partner = 0
    for i in range(300):
        s = make_scene(0, "train", i)
        chosen = caption(s.objects)
        ins, added = hallucinated_caption(s, random.Random(f"r{i}"), "insert")
        sub, added_sub = hallucinated_caption(s, random.Random(f"r{i}"), "substitute")
        assert added_sub == added and added not in s.classes  # both modes hallucinate the same class
        assert ins != chosen and sub != chosen
        assert len(_named(ins)) == len(s.objects) + 1 and added in _named(ins)
        assert len(_named(sub)) == len(s.objects) and len(sub.split()) == len(chosen.split())  # same length
        assert added in _named(sub) and _named(sub) == sorted(_named(sub), key=CLASSES.index)
        gone = set(s.classes) - set(_named(sub))
        assert len(gone) == 1
        if s.absent_partners():
            with_partner += 1
            assert added in s.absent_partners()
            anchor = partner(added)
            # the partner replaces another object, so its anchor stays -- unless the anchor is alone
            assert (anchor in _named(sub)) == (len(s.objects) > 1)
    assert with_partner > 50
    with pytest.raises(ValueError, match="unknown rejection mode 'swap'"):
        hallucinated_caption(make_scene(0, "train", 0), random.Random(0), "swap")


def test_scene_keeps_a_layout_that_redraws_it():
    from lpoi.world.scenes import render, scene_from_layout

    s = make_scene(0, "train", 5)
    assert [s.layout.items[o.depth][0] for o in s.objects] == s.classes
    assert render(s.layout, 64)[0].tobytes() == s.image.tobytes()
    again = scene_from_layout(s.id, s.layout, 64)
    assert again.image.tobytes() == s.image.tobytes() and [o.box for o in again.objects] == [o.box for o in s.objects]
