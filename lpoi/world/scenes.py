"""The shapes world: procedurally drawn scenes with known objects, boxes, masks and co-occurrence.

A scene holds 1-6 coloured shapes of eight classes on a plain light background. Classes come in
**partner pairs** -- (circle, square), (triangle, star), (heart, cross), (diamond, ring) -- and a scene is
built pair by pair: an *anchor* class is drawn, and its partner joins it with probability
``p_partner`` (0.75 by default). So a model that leans on co-occurrence rather than on the pixels
names the partner when only the anchor is there: the miniature of "a fork is usually next to a plate".
Partners also share a two-colour palette (:data:`PALETTES`): colour tells which *pair* is in the
picture, only the shape tells which member -- the easy cue and the prior agree on the partner, and only
a model that has learnt the shapes can say it is not there.

Objects are drawn in a random order at random positions and sizes, so later ones occlude earlier
ones; a layout is kept only when every object keeps at least ``min_visible`` of its own area. Each
object's **visible** mask (its pixels minus those of objects drawn over it) and the tight box of that
mask are ground truth; the scene keeps its :class:`Layout`, so it can be re-drawn with an object removed
or added (:mod:`lpoi.world.hide`). Captions list the objects in the canonical class order
above ("A red circle, a blue square and a green star."), so the partner of an anchor is always the
next word a language prior would propose.

Everything is a pure function of ``(seed, split, index)``: the same call gives the same pixels.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "CLASSES",
    "COLOURS",
    "PAIRS",
    "PALETTES",
    "REJECTIONS",
    "Layout",
    "Scene",
    "WorldObject",
    "caption",
    "hallucinated_caption",
    "make_scene",
    "partner",
    "rle_decode",
    "rle_encode",
    "render",
    "scene_from_layout",
    "shape_mask",
]

PAIRS: tuple[tuple[str, str], ...] = (("circle", "square"), ("triangle", "star"), ("heart", "cross"),
                                      ("diamond", "ring"))
CLASSES: tuple[str, ...] = tuple(c for pair in PAIRS for c in pair)
"""Canonical order: captions list objects in this order, partners next to each other."""
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40), "orange": (240, 140, 25), "yellow": (225, 200, 20), "green": (40, 160, 60),
    "cyan": (30, 175, 195), "blue": (40, 70, 215), "purple": (130, 55, 185), "pink": (235, 110, 175),
}
PALETTES: dict[str, tuple[str, str]] = {
    c: pal for pair, pal in zip(PAIRS, (("red", "orange"), ("yellow", "green"), ("cyan", "blue"), ("purple", "pink")))
    for c in pair
}
"""Colours a class is drawn in: shared by partners."""
BACKGROUNDS = ((236, 236, 230), (222, 228, 238), (230, 238, 222), (242, 232, 222))
_ANCHOR_WEIGHTS = (0.45, 0.4, 0.15)  # 1, 2 or 3 partner pairs started per scene
_LAYOUT_TRIES = 200


def partner(cls: str) -> str:
    """The class a co-occurrence prior expects next to ``cls``."""
    for a, b in PAIRS:
        if cls == a:
            return b
        if cls == b:
            return a
    raise ValueError(f"unknown class {cls!r}; known: {', '.join(CLASSES)}")


# ---------------------------------------------------------------------------------------------- drawing


def _polygon(d: ImageDraw.ImageDraw, pts) -> None:
    d.polygon([(float(x), float(y)) for x, y in pts], fill=255)


def _star_points(x: float, y: float, s: float) -> list[tuple[float, float]]:
    cx, cy, r_out, r_in = x + s / 2, y + s / 2, s / 2, s / 5
    return [(cx + (r_out if k % 2 == 0 else r_in) * math.sin(k * math.pi / 5),
             cy - (r_out if k % 2 == 0 else r_in) * math.cos(k * math.pi / 5)) for k in range(10)]


def _draw_shape(d: ImageDraw.ImageDraw, cls: str, x: int, y: int, s: int) -> None:
    """Class ``cls`` inside the square ``[x, x+s) x [y, y+s)`` of an 'L' canvas, filled with 255."""
    e = s - 1
    if cls == "circle":
        d.ellipse([x, y, x + e, y + e], fill=255)
    elif cls == "square":
        m = round(s * 0.08)
        d.rectangle([x + m, y + m, x + e - m, y + e - m], fill=255)
    elif cls == "triangle":
        _polygon(d, [(x + s / 2, y), (x + e, y + e), (x, y + e)])
    elif cls == "star":
        _polygon(d, _star_points(x, y, s))
    elif cls == "heart":
        r = s / 4
        d.ellipse([x, y + s * 0.05, x + 2 * r, y + s * 0.05 + 2 * r], fill=255)
        d.ellipse([x + e - 2 * r, y + s * 0.05, x + e, y + s * 0.05 + 2 * r], fill=255)
        _polygon(d, [(x + s * 0.02, y + s * 0.38), (x + e - s * 0.02, y + s * 0.38), (x + s / 2, y + e)])
    elif cls == "cross":
        t = max(2, round(s / 3))
        a = (s - t) // 2
        d.rectangle([x + a, y, x + a + t - 1, y + e], fill=255)
        d.rectangle([x, y + a, x + e, y + a + t - 1], fill=255)
    elif cls == "diamond":
        _polygon(d, [(x + s / 2, y), (x + e, y + s / 2), (x + s / 2, y + e), (x, y + s / 2)])
    elif cls == "ring":
        t = max(2, round(s / 4))
        d.ellipse([x, y, x + e, y + e], fill=255)
        d.ellipse([x + t, y + t, x + e - t, y + e - t], fill=0)
    else:
        raise ValueError(f"unknown class {cls!r}")


def shape_mask(cls: str, x: int, y: int, s: int, size: int) -> np.ndarray:
    """Boolean ``(size, size)`` mask of one shape drawn on an empty canvas."""
    canvas = Image.new("L", (size, size), 0)
    _draw_shape(ImageDraw.Draw(canvas), cls, x, y, s)
    return np.asarray(canvas) > 127


# ---------------------------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class WorldObject:
    """One drawn object: class, colour, its visible mask and that mask's tight box."""

    cls: str
    colour: str
    box: tuple[int, int, int, int]
    """``[x0, y0, x1, y1]`` of the visible pixels, x1/y1 exclusive (pixel edges)."""
    mask: np.ndarray
    """Visible pixels (bool, H x W): the shape minus whatever was drawn over it."""
    visible: float
    """Visible share of the shape's own area (>= ``min_visible``)."""
    depth: int
    """Draw order (0 = drawn first, i.e. furthest back)."""

    @property
    def phrase(self) -> str:
        return f"{self.colour} {self.cls}"


@dataclass(frozen=True)
class Layout:
    """What a scene is made of, before drawing: ``(cls, colour, x, y, side)`` in draw order."""

    background: tuple[int, int, int]
    items: tuple[tuple[str, str, int, int, int], ...]


@dataclass(frozen=True)
class Scene:
    id: str
    image: Image.Image
    objects: tuple[WorldObject, ...]
    """In canonical class order (the caption's order)."""
    layout: Layout
    """What was drawn (item ``i`` is the object of ``depth == i``): re-render it with an item removed or added."""

    @property
    def classes(self) -> list[str]:
        return [o.cls for o in self.objects]

    def absent(self) -> list[str]:
        return [c for c in CLASSES if c not in self.classes]

    def absent_partners(self) -> list[str]:
        """Classes missing although their partner is present: what a co-occurrence prior hallucinates."""
        present = set(self.classes)
        return [c for c in CLASSES if c not in present and partner(c) in present]


def sample_classes(rng: random.Random, p_partner: float) -> list[str]:
    """The co-occurrence model: 1-3 pairs start with an anchor; each partner joins with ``p_partner``."""
    n_pairs = rng.choices((1, 2, 3), weights=_ANCHOR_WEIGHTS)[0]
    out = []
    for i in rng.sample(range(len(PAIRS)), n_pairs):
        a, b = PAIRS[i] if rng.random() < 0.5 else PAIRS[i][::-1]
        out.append(a)
        if rng.random() < p_partner:
            out.append(b)
    return out


def _place(rng: random.Random, classes: list[str], size: int, sides: tuple[int, int],
           min_visible: float) -> list[tuple[str, int, int, int]] | None:
    """Random positions and sides, drawn in ``classes`` order; None if an object would be hidden too much."""
    placed, full, visible = [], [], []
    for cls in classes:
        s = rng.randint(*sides)
        x, y = rng.randint(0, size - s), rng.randint(0, size - s)
        m = shape_mask(cls, x, y, s, size)
        for i in range(len(visible)):
            visible[i] = visible[i] & ~m
            if visible[i].sum() < min_visible * full[i].sum():
                return None
        placed.append((cls, x, y, s))
        full.append(m)
        visible.append(m.copy())
    return placed


def sample_layout(rng: random.Random, *, size: int, sides: tuple[int, int], p_partner: float,
                  min_visible: float) -> Layout:
    classes = sample_classes(rng, p_partner)
    rng.shuffle(classes)  # draw order: who occludes whom
    background = rng.choice(BACKGROUNDS)
    colours = [rng.choice(PALETTES[c]) for c in classes]
    for _ in range(_LAYOUT_TRIES):
        placed = _place(rng, classes, size, sides, min_visible)
        if placed is not None:
            return Layout(background, tuple((c, col, x, y, s) for (c, x, y, s), col in zip(placed, colours)))
    raise RuntimeError(f"no layout of {classes} keeps {min_visible:.0%} of every object visible in "
                       f"{_LAYOUT_TRIES} tries on a {size}px canvas; lower world.max_side or world.min_visible")


def render(layout: Layout, size: int) -> tuple[Image.Image, list[np.ndarray], list[float]]:
    """Pixels of ``layout`` and each item's visible mask and visible share (items in draw order)."""
    img = np.empty((size, size, 3), dtype=np.uint8)
    img[:] = layout.background
    full = [shape_mask(c, x, y, s, size) for c, _, x, y, s in layout.items]
    visible = []
    for i, (m, (_, colour, *_)) in enumerate(zip(full, layout.items)):
        img[m] = COLOURS[colour]
        v = m.copy()
        for later in full[i + 1:]:
            v &= ~later
        visible.append(v)
    shares = [float(v.sum()) / max(1, int(m.sum())) for v, m in zip(visible, full)]
    return Image.fromarray(img, "RGB"), visible, shares


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def make_scene(seed: int, split: str, index: int, *, size: int = 64, sides: tuple[int, int] = (14, 24),
               p_partner: float = 0.75, min_visible: float = 0.6) -> Scene:
    """Scene ``index`` of ``split`` (deterministic in ``(seed, split, index)``; splits never share a scene)."""
    rng = random.Random(f"lpoi-world:{seed}:{split}:{index}")
    layout = sample_layout(rng, size=size, sides=sides, p_partner=p_partner, min_visible=min_visible)
    return scene_from_layout(f"{split}-{index:05d}", layout, size)


def scene_from_layout(scene_id: str, layout: Layout, size: int) -> Scene:
    """The scene ``layout`` draws (what :func:`make_scene` returns for the layout it sampled)."""
    image, masks, shares = render(layout, size)
    objs = [WorldObject(c, col, _tight_box(m), m, share, depth)
            for depth, ((c, col, *_), m, share) in enumerate(zip(layout.items, masks, shares))]
    objs.sort(key=lambda o: CLASSES.index(o.cls))
    return Scene(scene_id, image, tuple(objs), layout)


# ---------------------------------------------------------------------------------------------- captions


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _join(phrases: list[str]) -> str:
    items = [f"{_article(p)} {p}" for p in phrases]
    text = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return text[0].upper() + text[1:] + "."


def caption(objects) -> str:
    """"A red circle, a blue square and a green star." -- objects in canonical class order."""
    return _join([o.phrase for o in sorted(objects, key=lambda o: CLASSES.index(o.cls))])


REJECTIONS = ("insert", "substitute")


def hallucinated_caption(scene: Scene, rng: random.Random, mode: str = "insert") -> tuple[str, str]:
    """A rejected answer: the scene's caption made false by one absent class, and that class.

    The class is an absent partner of a present object when there is one (the co-occurrence
    hallucination), else any absent class; its colour is drawn from its palette. ``insert`` names it on
    top of the caption (one object more); ``substitute`` names it *instead of* a present object, so the
    rejected answer has as many objects and words as the chosen one and "say less" cannot win: the
    replaced object is any present one other than the added partner's anchor (the anchor itself when it
    is alone). Both modes draw the class and its colour first, so an rng seeded alike per scene gives
    both modes the same hallucinated object.
    """
    if mode not in REJECTIONS:
        raise ValueError(f"unknown rejection mode {mode!r}; known: {', '.join(REJECTIONS)}")
    partners = scene.absent_partners()
    cls = rng.choice(partners or scene.absent())
    added = (cls, f"{rng.choice(PALETTES[cls])} {cls}")
    kept = [(o.cls, o.phrase) for o in scene.objects]
    if mode == "substitute":
        anchor = partner(cls) if partners else None
        others = [i for i, (c, _) in enumerate(kept) if c != anchor]
        del kept[rng.choice(others) if others else 0]
    phrases = sorted(kept + [added], key=lambda t: CLASSES.index(t[0]))
    return _join([p for _, p in phrases]), cls


# ---------------------------------------------------------------------------------------------- masks as text


def rle_encode(mask: np.ndarray) -> dict:
    """Row-major run lengths, starting with a run of False: ``{"size": [h, w], "counts": [...]}``."""
    flat = np.asarray(mask, dtype=bool).ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def rle_decode(rle: dict) -> np.ndarray:
    h, w = rle["size"]
    counts = rle["counts"]
    if sum(counts) != h * w:
        raise ValueError(f"run lengths sum to {sum(counts)}, expected {h}x{w}={h * w}")
    vals = np.arange(len(counts)) % 2 == 1
    return np.repeat(vals, counts).reshape(h, w)
