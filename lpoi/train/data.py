"""The lists manifest as training data: validated rows, deterministic data order, mDPO's crop.

Every row problem is an error that names the row (its id, or its line when the id itself is bad):
a missing image, a list length that differs from the others, K below what the method needs, a
duplicate id. Training never drops a row silently -- the lists stage already recorded its rejects,
so a bad row here means the manifest and its images disagree and the run must stop.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lpoi.io import ImageRejected, UnsafePathError, load_image, read_jsonl, safe_join

__all__ = [
    "ListSample",
    "ManifestError",
    "load_lists",
    "load_sample_image",
    "mdpo_random_crop",
    "random_crop_box",
    "step_sample_indices",
    "steps_per_epoch",
    "write_synthetic_lists",
]


class ManifestError(ValueError):
    """A lists-manifest row that cannot be trained on; the message names the row."""


@dataclass(frozen=True)
class ListSample:
    """One manifest row: the question, both answers and the K list images (index 0 = original)."""

    id: str
    prompt: str
    chosen: str
    rejected: str
    images: tuple[Path, ...]
    digest: str
    """Hash of the text and image paths: the reference log-probs of a row are valid only for this."""

    @property
    def k(self) -> int:
        return len(self.images)


def _row_digest(prompt: str, chosen: str, rejected: str, images: Sequence[str]) -> str:
    blob = json.dumps([prompt, chosen, rejected, list(images)], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def load_lists(lists_path: str | Path, *, min_k: int = 2, check_images: bool = True) -> list[ListSample]:
    """Read and validate ``lists.jsonl``; image paths are relative to the manifest's folder.

    Args:
        lists_path: the lists manifest (DESIGN.md contract).
        min_k: the smallest list length the caller can use (2 for ``lpoi``/``mdpo``, 1 for ``dpo``).
        check_images: check that every image file exists (decoding happens when a batch is built).

    Raises:
        ManifestError: naming the row -- missing field, empty text, unsafe or missing image, a list
            length different from the first row's, K < ``min_k``, a duplicate id; or an empty manifest.
    """
    lists_path = Path(lists_path)
    root = lists_path.parent
    samples: list[ListSample] = []
    seen: dict[str, int] = {}
    k_first: tuple[str, int] | None = None
    for lineno, row in enumerate(read_jsonl(lists_path), 1):
        rid = row.get("id")
        if not isinstance(rid, (str, int)) or isinstance(rid, bool) or str(rid) == "":
            raise ManifestError(f"{lists_path}: row {lineno} has no usable 'id' (got {rid!r})")
        rid = str(rid)
        where = f"{lists_path}: row id {rid!r} (line {lineno})"
        if rid in seen:
            raise ManifestError(f"{where}: duplicate id, first seen on line {seen[rid]}")
        seen[rid] = lineno
        for key in ("prompt", "chosen", "rejected"):
            v = row.get(key)
            if not isinstance(v, str) or not v.strip():
                raise ManifestError(f"{where}: field {key!r} must be a non-empty string, got {v!r}")
        imgs = row.get("images")
        if not isinstance(imgs, list) or not imgs or not all(isinstance(p, str) and p for p in imgs):
            raise ManifestError(f"{where}: 'images' must be a non-empty list of paths, got {imgs!r}")
        if k_first is None:
            k_first = (rid, len(imgs))
        elif len(imgs) != k_first[1]:
            raise ManifestError(
                f"{where}: wrong list length {len(imgs)}; row {k_first[0]!r} has {k_first[1]} images and "
                "all rows must have the same K"
            )
        if len(imgs) < min_k:
            raise ManifestError(f"{where}: the list has {len(imgs)} image(s), this method needs K >= {min_k}")
        paths = []
        for rel in imgs:
            try:
                p = safe_join(root, rel)
            except UnsafePathError as e:
                raise ManifestError(f"{where}: unsafe image path: {e}") from None
            if check_images and not p.is_file():
                raise ManifestError(f"{where}: missing image {rel!r} (looked for {p})")
            paths.append(p)
        samples.append(
            ListSample(
                rid,
                row["prompt"],
                row["chosen"],
                row["rejected"],
                tuple(paths),
                _row_digest(row["prompt"], row["chosen"], row["rejected"], imgs),
            )
        )
    if not samples:
        raise ManifestError(f"{lists_path}: the lists manifest is empty; nothing to train on")
    return samples


def load_sample_image(sample: ListSample, k: int):
    """List image ``k`` of ``sample`` as RGB; a bad file is an error naming the sample."""
    try:
        return load_image(sample.images[k])
    except ImageRejected as e:
        raise ManifestError(f"sample {sample.id!r}: image {k} ({sample.images[k]}) unusable: {e}") from None


def random_crop_box(
    width: int,
    height: int,
    key: str,
    scale: tuple[float, float] = (0.01, 0.2),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of mDPO's crop, sampled like torchvision's ``RandomResizedCrop``.

    Area share uniform in ``scale``, aspect ratio log-uniform in ``ratio``, 10 tries, then the whole
    image (torchvision falls back to a centre crop of the clamped ratio; with ``scale <= 0.2`` the
    tries essentially never all fail). Seeded by ``key`` (a string), so it is reproducible anywhere.
    """
    rng = random.Random(key)
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw = round(math.sqrt(target * aspect))
        ch = round(math.sqrt(target / aspect))
        if 0 < cw <= width and 0 < ch <= height:
            x0, y0 = rng.randint(0, width - cw), rng.randint(0, height - ch)
            return x0, y0, x0 + cw, y0 + ch
    return 0, 0, width, height


def mdpo_random_crop(image, key: str):
    """mDPO's corrupted image: a random crop keeping 1-20 % of the area, resized back to full size.

    mDPO (Wang et al. 2024, Sec. 3) corrupts the image by "randomly cropping 0-20 % of the original";
    its released Bunny model does it with ``torchvision.transforms.v2.RandomResizedCrop(size=image size,
    scale=(0.01, 0.2))`` on the preprocessed tensor (``crop_images`` in ``modeling_bunny_phi.py``). This
    is the same sampler (:func:`random_crop_box`) on the PIL image, before the processor, seeded by
    ``key`` so a resumed or distributed run crops identically.
    """
    from PIL import Image

    box = random_crop_box(image.size[0], image.size[1], key)
    return image.crop(box).resize(image.size, Image.BILINEAR)


def write_synthetic_lists(
    folder: str | Path, *, n_samples: int = 8, k: int = 5, size: tuple[int, int] = (48, 40), seed: int = 0
) -> Path:
    """A small lists manifest with real hidden-object lists, for tests and benchmarks.

    Each sample draws a coloured square on a noise background; list image j blackens the first
    ``j / (k - 1)`` of the square's rows (the paper's progressive hiding along one axis), so image
    ``k - 1`` has the object fully hidden. Chosen answers name the square's colour, rejected answers
    another colour and shape. Image sizes vary per sample (``size`` +- 25 %) to exercise padding.
    Returns the manifest path (``folder/lists.jsonl``).
    """
    import numpy as np
    from PIL import Image

    colours = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 220, 30)}
    names = list(colours)
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_samples):
        w = int(size[0] * rng.uniform(0.75, 1.25))
        h = int(size[1] * rng.uniform(0.75, 1.25))
        base = rng.integers(60, 200, (h, w, 3), dtype=np.uint8)
        colour = names[i % len(names)]
        side = max(4, min(w, h) // 2)
        x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        base[y0 : y0 + side, x0 : x0 + side] = colours[colour]
        rels = []
        for j in range(k):
            img = base.copy()
            hidden = round(side * j / (k - 1)) if k > 1 else 0
            img[y0 : y0 + hidden, x0 : x0 + side] = 0
            rel = f"images/s{i:03d}_{j}.png"
            Image.fromarray(img).save(folder / rel)
            rels.append(rel)
        other = names[(i + 1) % len(names)]
        rows.append(
            {
                "id": f"s{i:03d}",
                "prompt": "What is in the picture?" if i % 2 == 0 else "Describe this image.",
                "chosen": f"A {colour} square." + (" It is in the middle." if i % 3 == 0 else ""),
                "rejected": f"A {other} circle.",
                "images": rels,
                "visibility": [1 - j / (k - 1) for j in range(k)] if k > 1 else [1.0],
                "object": {
                    "phrase": f"{colour} square",
                    "source": "synthetic",
                    "box": [x0, y0, x0 + side, y0 + side],
                },
                "verified": None,
            }
        )
    path = folder / "lists.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------------------------------- data order


def steps_per_epoch(n_samples: int, global_batch: int) -> int:
    """Optimizer steps per epoch: ``ceil(n / global_batch)`` (the last batch wraps around, see below)."""
    return max(1, math.ceil(n_samples / global_batch))


def step_sample_indices(step: int, *, n_samples: int, global_batch: int, seed: int) -> list[int]:
    """Dataset indices of optimizer step ``step`` (0-based), for all processes and micro-steps together.

    Each epoch is a permutation drawn from ``seed + epoch``, so the order depends only on the seed and
    the step -- a resumed run recomputes it instead of replaying a data loader. When ``global_batch``
    does not divide the dataset, the epoch's last batch is filled from the start of the same
    permutation (what ``DistributedSampler`` does), so every step sees a full global batch and no row
    is dropped.
    """
    import torch

    spe = steps_per_epoch(n_samples, global_batch)
    epoch, pos = divmod(step, spe)
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch)
    perm = torch.randperm(n_samples, generator=g).tolist()
    need = spe * global_batch
    padded = (perm * (need // n_samples + 1))[:need]
    return padded[pos * global_batch : (pos + 1) * global_batch]
