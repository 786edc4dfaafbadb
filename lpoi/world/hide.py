"""Lists that really change what the picture shows: an object erased (or drawn in) step by step.

The world knows every scene's layout, so it can draw the scene *without* an object: what the object
occluded shows through and no silhouette is left. :func:`hide_sequence` erases the object's visible
pixels progressively -- an eraser sweep along a direction drawn from the seed, so the erased sets are
nested -- and fills them per ``fill``:

* ``removal``: the pixels of the scene re-rendered without the object (at visibility 0 the image *is*
  that render);
* ``black``: (0, 0, 0), the paper's fill on real photos (the silhouette, i.e. the class here, stays);
* ``scramble``: the pixels of the render without the object, and as many pixels of the object's colour
  scattered uniformly at seeded positions around it (its drawing square grown by half its side, never over
  another object): the colour mass stays, the shape goes -- the fill that targets the partner shortcut
  (colour tells the pair, shape the member).

:func:`insert_sequence` is the mirror for "No" answers: an absent class drawn in on top, revealed by the
same kind of sweep. :func:`pixel_check` measures on the pixels what a list leaves of its object.

"Visibility" keeps meaning "how true the chosen answer still is": 1 at the original scene.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
from PIL import Image

from lpoi.world.scenes import COLOURS, PALETTES, Layout, Scene, partner, render, shape_mask

__all__ = ["FILLS", "critical_object", "hide_sequence", "insert_sequence", "pixel_check", "without"]

FILLS = ("removal", "black", "scramble")
_INSERT_TRIES = 200


def _check_visibilities(visibilities: Sequence[float]) -> list[float]:
    v = [float(x) for x in visibilities]
    if len(v) < 2 or v[0] != 1.0 or v[-1] != 0.0 or any(a < b for a, b in zip(v, v[1:])) or min(v) < 0:
        raise ValueError(f"visibilities must fall from 1 to 0 (non-increasing), got {list(visibilities)}")
    return v


def _item(scene: Scene, depth: int) -> tuple[str, str, int, int, int]:
    if not 0 <= depth < len(scene.layout.items):
        raise ValueError(f"scene {scene.id}: no object at depth {depth} (it has {len(scene.layout.items)})")
    return scene.layout.items[depth]


def without(scene: Scene, depth: int) -> np.ndarray:
    """Pixels of ``scene`` re-rendered without the object drawn at ``depth`` (H x W x 3 uint8)."""
    _item(scene, depth)
    items = scene.layout.items[:depth] + scene.layout.items[depth + 1:]
    return np.asarray(render(Layout(scene.layout.background, items), scene.image.size[0])[0])


def _sweep(mask: np.ndarray, rng: random.Random) -> np.ndarray:
    """Flat indices of ``mask``'s pixels in eraser order: by projection on a direction drawn from ``rng``."""
    theta = rng.uniform(0, 2 * math.pi)
    ys, xs = np.nonzero(mask)
    key = xs * math.cos(theta) + ys * math.sin(theta)
    order = np.lexsort((ys * mask.shape[1] + xs, key))  # ties broken by position: deterministic
    return (ys * mask.shape[1] + xs)[order]


def _counts(n: int, visibilities: list[float]) -> list[int]:
    """Pixels erased at each visibility (nested sets: non-decreasing, 0 at 1 and ``n`` at 0)."""
    return [n - round(v * n) for v in visibilities]


def _rng(seed, scene: Scene, what: str) -> random.Random:
    return random.Random(f"lpoi-world-hide:{seed}:{scene.id}:{what}")


def hide_sequence(scene: Scene, depth: int, visibilities: Sequence[float], fill: str, seed) -> list[Image.Image]:
    """Images of ``scene`` with the object at ``depth`` erased to each visibility (image 0: the scene itself)."""
    if fill not in FILLS:
        raise ValueError(f"unknown fill {fill!r}; known: {', '.join(FILLS)}")
    vis = _check_visibilities(visibilities)
    _, colour, x, y, s = _item(scene, depth)
    obj = next(o for o in scene.objects if o.depth == depth)
    orig = np.asarray(scene.image)
    h, w = orig.shape[:2]
    behind = without(scene, depth).reshape(-1, 3)
    rng = _rng(seed, scene, f"hide:{depth}")
    order = _sweep(obj.mask, rng)
    n = len(order)
    if fill == "scramble":
        # where the colour may go: uniformly anywhere in the object's drawing square grown by half its side (the
        # square alone is mostly the shape: a circle fills 79 % of it), on background or where the object was,
        # never over another object -- so the scattered colour says nothing of the shape
        m = s // 2
        free = np.zeros((h, w), dtype=bool)
        free[max(0, y - m):y + s + m, max(0, x - m):x + s + m] = True
        for o in scene.objects:
            if o.depth != depth:
                free &= ~o.mask
        rgb = np.array(COLOURS[colour], dtype=np.uint8)
        same = (behind == rgb).all(-1)  # flat: erasing these pixels takes no colour away, painting them adds none
        pool = np.flatnonzero(free.ravel() & ~same)
        targets = np.array(rng.sample(list(pool), len(pool)), dtype=np.int64)
    out = []
    for r in _counts(n, vis):
        img = orig.reshape(-1, 3).copy()
        erased = order[:r]
        if fill == "black":
            img[erased] = 0
        else:
            img[erased] = behind[erased]
        if fill == "scramble" and r:
            kept = np.zeros(h * w, dtype=bool)
            kept[order[r:]] = True
            lost = int((~same[erased]).sum())  # the colour mass erasing took away, put back scattered
            painted = targets[~kept[targets]][:lost]  # never where the object still shows
            img[painted] = rgb
        out.append(Image.fromarray(img.reshape(h, w, 3), "RGB"))
    out[0] = scene.image.copy()  # byte-identical to the scene
    return out


def insert_sequence(scene: Scene, cls: str, visibilities: Sequence[float], seed, *, sides: tuple[int, int] = (14, 24),
                    min_visible: float = 0.6) -> list[Image.Image]:
    """Images of ``scene`` with the absent class ``cls`` drawn in on top, revealed as visibility falls.

    Colour from ``cls``'s palette, side and position drawn like the generator's; placements that would leave an
    object of the scene under ``min_visible`` of its area are redrawn. At visibility 0 ``cls`` is fully drawn.
    """
    if cls in scene.classes:
        raise ValueError(f"scene {scene.id}: {cls!r} is present; insert_sequence draws an absent class")
    vis = _check_visibilities(visibilities)
    rng = _rng(seed, scene, f"insert:{cls}")
    size = scene.image.size[0]
    colour = rng.choice(PALETTES[cls])
    for _ in range(_INSERT_TRIES):
        side = rng.randint(*sides)
        x, y = rng.randint(0, size - side), rng.randint(0, size - side)
        layout = Layout(scene.layout.background, scene.layout.items + ((cls, colour, x, y, side),))
        drawn, _, shares = render(layout, size)
        if min(shares[:-1], default=1.0) >= min_visible:
            break
    else:
        raise ValueError(f"scene {scene.id}: no placement of a {cls} keeps {min_visible:.0%} of every object "
                         f"visible in {_INSERT_TRIES} tries")
    mask = shape_mask(cls, x, y, side, size)
    order = _sweep(mask, rng)
    orig = np.asarray(scene.image).reshape(-1, 3)
    full = np.asarray(drawn).reshape(-1, 3)
    out = []
    for r in _counts(len(order), vis):
        img = orig.copy()
        img[order[:r]] = full[order[:r]]
        out.append(Image.fromarray(img.reshape(size, size, 3), "RGB"))
    out[0] = scene.image.copy()
    return out


def critical_object(scene: Scene, rejected_cls: str | None) -> tuple[int, str]:
    """(depth of the object the lists hide, why it was chosen).

    ``partner_present``: the first object (caption order) whose partner is present too -- hiding it leaves
    exactly "anchor present, partner absent", the co-occurrence hallucination the world is about;
    ``anchor_of_rejected``: else the present anchor of the class the rejected answer adds;
    ``first_named``: else the first object of the caption.
    """
    if not scene.objects:
        raise ValueError(f"scene {scene.id} has no object to hide")
    present = set(scene.classes)
    for o in scene.objects:
        if partner(o.cls) in present:
            return o.depth, "partner_present"
    if rejected_cls is not None and partner(rejected_cls) in present:
        return next(o.depth for o in scene.objects if o.cls == partner(rejected_cls)), "anchor_of_rejected"
    return scene.objects[0].depth, "first_named"


def pixel_check(scene: Scene, depth: int | None, images: Sequence[Image.Image], *, fill: str = "removal",
                inserted: str | None = None) -> dict:
    """What a list leaves of its object, on the pixels.

    For a hiding list (``depth``, erased with ``fill``): ``object_pixels`` (its visible mask's size);
    ``object_pixels_left`` -- mask pixels that at visibility 0 still show the object (unchanged, and not what
    the render without it shows there); ``silhouette_pixels`` -- mask pixels that differ from the render without
    the object (the shape's footprint is still visible: black keeps all of them); ``colour_share`` -- the
    object's colour mass left (pixels of its colour beyond the render-without's, over the object's pixel count:
    scramble keeps ~1); ``equals_without``; ``monotone`` -- the object's pixels left never grow along the list
    and, for removal and black, the images' changes from image 0 are nested (scramble moves its colour about).
    For an inserting list (``inserted``): ``class_pixels`` drawn at visibility 0 and ``monotone`` (nested
    changes). Both: ``first_is_scene``.
    """
    first = np.asarray(images[0])
    last = np.asarray(images[-1])
    arrays = [np.asarray(im) for im in images]
    changed = [(a != first).any(-1) for a in arrays]
    nested = all(not (a & ~b).any() for a, b in zip(changed, changed[1:]))
    out = {"first_is_scene": bool((first == np.asarray(scene.image)).all())}
    if inserted is not None:
        out.update({"class_pixels": int(changed[-1].sum()), "monotone": bool(nested)})
        return out
    obj = next(o for o in scene.objects if o.depth == depth)
    behind = without(scene, depth)
    rgb = np.array(COLOURS[obj.colour], dtype=np.uint8)
    differs = (first != behind).any(-1) & obj.mask  # where the object makes a difference at all
    left = [int(((a == first).all(-1) & differs).sum()) for a in arrays]
    colour_mass = lambda a: int((a == rgb).all(-1).sum())  # noqa: E731
    out.update({
        "object_pixels": int(obj.mask.sum()),
        "object_pixels_left": left[-1],
        "silhouette_pixels": int(((last != behind).any(-1) & obj.mask).sum()),
        "colour_share": round((colour_mass(last) - colour_mass(behind)) / max(1, int(obj.mask.sum())), 4),
        "equals_without": bool((last == behind).all()),
        "monotone": all(a >= b for a, b in zip(left, left[1:])) and (nested or fill == "scramble"),
    })
    return out
