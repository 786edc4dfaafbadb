"""The lists' pixels: an erased object really leaves the picture (removal), black keeps its silhouette, scramble its
colour; an inserted partner really appears; the hidden object is chosen by the documented rule."""

import numpy as np
import pytest

from lpoi.config import WorldParams
from lpoi.world.dataset import scenes
from lpoi.world.hide import critical_object, hide_sequence, insert_sequence, pixel_check, without
from lpoi.world.lists import visibilities
from lpoi.world.scenes import COLOURS, PALETTES, Layout, render, scene_from_layout

BG = (236, 236, 230)
VIS = visibilities(5)


def _scene(*items):
    return scene_from_layout("hand-00000", Layout(BG, tuple(items)), 64)


# a big orange square behind, a red circle over part of it, a green star apart
OCCLUDED = _scene(("square", "orange", 10, 10, 24), ("circle", "red", 22, 22, 16), ("star", "green", 40, 2, 20))
CIRCLE = 1  # depth of the circle


def _count(img, colour):
    return int((np.asarray(img) == COLOURS[colour]).all(-1).sum())


def _is(img, colour):
    return (np.asarray(img) == COLOURS[colour]).all(-1)


def test_removal_leaves_nothing_of_the_object_and_reveals_what_it_hid():
    imgs = hide_sequence(OCCLUDED, CIRCLE, VIS, "removal", seed=0)
    assert len(imgs) == 5 and imgs[0].tobytes() == OCCLUDED.image.tobytes()
    square_alone = np.asarray(render(Layout(BG, (OCCLUDED.layout.items[0], OCCLUDED.layout.items[2])), 64)[0])
    assert (np.asarray(imgs[-1]) == square_alone).all()  # the scene drawn without the circle, exactly
    assert _count(imgs[-1], "red") == 0
    assert _count(imgs[-1], "orange") > _count(imgs[0], "orange")  # the occluded square shows through
    circle = OCCLUDED.objects[[o.depth for o in OCCLUDED.objects].index(CIRCLE)].mask
    erased = [(np.asarray(im) != np.asarray(imgs[0])).any(-1) for im in imgs]
    assert all(not (a & ~b).any() for a, b in zip(erased, erased[1:]))  # nested: an eraser sweep
    assert all(not (e & ~circle).any() for e in erased)  # nothing outside the object changes
    reds = [_count(im, "red") for im in imgs]
    assert reds == sorted(reds, reverse=True) and reds[0] > reds[2] > reds[-1] == 0
    check = pixel_check(OCCLUDED, CIRCLE, imgs, fill="removal")
    assert check["object_pixels_left"] == 0 and check["equals_without"] and check["monotone"]
    assert check["silhouette_pixels"] == 0 and check["colour_share"] == 0 and check["first_is_scene"]


def test_black_keeps_the_silhouette_and_loses_the_colour():
    imgs = hide_sequence(OCCLUDED, CIRCLE, VIS, "black", seed=0)
    circle = next(o for o in OCCLUDED.objects if o.depth == CIRCLE).mask
    black = (np.asarray(imgs[-1]) == 0).all(-1)
    assert (black == circle).all() and _count(imgs[-1], "red") == 0
    check = pixel_check(OCCLUDED, CIRCLE, imgs, fill="black")
    assert check["silhouette_pixels"] == int(circle.sum()) and not check["equals_without"] and check["monotone"]


def test_scramble_keeps_the_colour_count_and_destroys_the_shape():
    imgs = hide_sequence(OCCLUDED, CIRCLE, VIS, "scramble", seed=0)
    circle = next(o for o in OCCLUDED.objects if o.depth == CIRCLE).mask
    assert imgs[0].tobytes() == OCCLUDED.image.tobytes()
    assert [_count(im, "red") for im in imgs] == [int(circle.sum())] * 5  # the colour mass stays at every step
    red = _is(imgs[-1], "red")
    assert (red & circle).sum() < 0.5 * circle.sum()  # most of the colour is off the shape
    _, _, x, y, s = OCCLUDED.layout.items[CIRCLE]
    ys, xs = np.nonzero(red)
    lo, hi = (x - s // 2, y - s // 2), (x + s + s // 2, y + s + s // 2)
    assert xs.min() >= lo[0] and xs.max() < hi[0] and ys.min() >= lo[1] and ys.max() < hi[1]  # around the object
    assert not (red & _is(OCCLUDED.image, "green")).any()  # never painted over another object
    check = pixel_check(OCCLUDED, CIRCLE, imgs, fill="scramble")
    assert check["colour_share"] == 1.0 and check["monotone"] and check["object_pixels_left"] == (red & circle).sum()


@pytest.mark.parametrize("fill", ["removal", "black", "scramble"])
def test_every_generated_list_on_the_pixels(fill):
    world = WorldParams(name="shapes", n_pretrain=1, n_pairs=60, n_val=1, n_test=1)
    for s in scenes(world, "pairs"):
        depth, _ = critical_object(s, None)
        imgs = hide_sequence(s, depth, VIS, fill, seed=3)
        c = pixel_check(s, depth, imgs, fill=fill)
        assert c["first_is_scene"] and c["monotone"], (s.id, c)
        if fill == "removal":
            assert c["equals_without"] and c["object_pixels_left"] == 0, (s.id, c)
        if fill == "black":
            assert c["silhouette_pixels"] == c["object_pixels"] and c["object_pixels_left"] == 0, (s.id, c)
    assert hide_sequence(s, depth, VIS, fill, seed=3)[2].tobytes() == imgs[2].tobytes()  # deterministic


def test_insert_draws_the_absent_class_progressively():
    scene = _scene(("circle", "red", 4, 4, 16))
    imgs = insert_sequence(scene, "square", VIS, seed=0)
    assert imgs[0].tobytes() == scene.image.tobytes()
    changed = [(np.asarray(im) != np.asarray(scene.image)).any(-1) for im in imgs]
    assert all(not (a & ~b).any() for a, b in zip(changed, changed[1:])) and changed[-1].sum() > changed[2].sum() > 0
    palette = {COLOURS[c] for c in PALETTES["square"]}
    drawn = {tuple(p) for p in np.asarray(imgs[-1])[changed[-1]]}
    assert len(drawn) == 1 and drawn <= palette  # one object in the partner palette
    assert _count(imgs[-1], "red") >= 0.6 * _count(scene.image, "red")  # the circle stays visible
    c = pixel_check(scene, None, imgs, inserted="square")
    assert c["monotone"] and c["class_pixels"] == changed[-1].sum()
    with pytest.raises(ValueError, match="'circle' is present"):
        insert_sequence(scene, "circle", VIS, seed=0)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="fall from 1 to 0"):
        hide_sequence(OCCLUDED, CIRCLE, [1.0, 0.5], "removal", seed=0)
    with pytest.raises(ValueError, match="unknown fill 'blur'"):
        hide_sequence(OCCLUDED, CIRCLE, VIS, "blur", seed=0)
    with pytest.raises(ValueError, match="no object at depth 7"):
        without(OCCLUDED, 7)


def test_critical_object_rule():
    both = _scene(("triangle", "green", 2, 2, 14), ("square", "orange", 30, 30, 14), ("circle", "red", 2, 40, 14))
    # circle and square are partners, both present: hide the first of them (caption order), whatever is rejected
    assert critical_object(both, "star") == (2, "partner_present")
    lonely = _scene(("triangle", "green", 2, 2, 14), ("circle", "red", 30, 30, 14))
    assert critical_object(lonely, "square") == (1, "anchor_of_rejected")  # the anchor of the added partner
    assert critical_object(lonely, "star") == (0, "anchor_of_rejected")
    assert critical_object(lonely, "heart") == (1, "first_named")  # caption order: circle before triangle
