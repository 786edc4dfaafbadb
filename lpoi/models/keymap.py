"""State-dict plumbing shared by the original-package adapters (:mod:`lpoi.models.sam`,
:mod:`lpoi.models.groundingdino`): safe checkpoint reading, card detection, checked key renaming.

The key mappings themselves live next to each model; this module only applies one and refuses to
load a partial result. A rename that misses a key, or leaves a source tensor unused, is an error
naming the keys — a half-loaded model would run and silently give wrong masks or boxes.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

__all__ = ["UnsafeCheckpoint", "apply_rules", "check_keys", "is_card", "place", "read_state_dict"]


class UnsafeCheckpoint(RuntimeError):
    """A checkpoint that would need arbitrary unpickling (or holds something other than tensors)."""


def read_state_dict(path: str | os.PathLike, *, unwrap: str | None = None) -> dict:
    """Tensors of a ``.safetensors`` file, or of a ``.pth``/``.pt``/``.bin`` file read with
    ``torch.load(weights_only=True)`` — never a full unpickle. ``unwrap``: the key holding the
    state dict in training checkpoints (Grounding DINO's ``{"model": ...}``); ``module.`` prefixes
    (DataParallel) are dropped."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise UnsafeCheckpoint(
                f"{path}: refused to load: it needs objects beyond tensors and plain containers "
                f"(torch.load weights_only=True said: {first[:200]}). Only load checkpoints you trust; "
                f"convert this one to safetensors on a machine where you vetted it") from None
    if unwrap and isinstance(sd, Mapping) and unwrap in sd and isinstance(sd[unwrap], Mapping):
        sd = sd[unwrap]
    if not isinstance(sd, Mapping):
        raise UnsafeCheckpoint(f"{path}: expected a mapping of tensors, got {type(sd).__name__}")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UnsafeCheckpoint(f"{path}: {len(bad)} entries are not tensors (e.g. {bad[:3]}); "
                               f"expected a plain state dict" + (f" under {unwrap!r}" if unwrap else ""))
    return {k.removeprefix("module."): v for k, v in sd.items()}


def is_card(path: str | os.PathLike, fmt: str) -> bool:
    """Whether ``path`` holds original-format weights: a checkpoint file, or a card folder whose
    ``card.json`` names ``fmt``."""
    import json

    p = Path(path)
    if p.is_file():
        return p.suffix in (".pth", ".pt", ".safetensors")
    card = p / "card.json"
    return card.is_file() and json.loads(card.read_text()).get("format") == fmt


def place(model, dtype=None, device: str | None = None):
    """``model`` cast to ``dtype`` (if given), moved to ``device`` (if given), in eval mode."""
    if dtype is not None:
        model.to(dtype)
    if device:
        model.to(device)
    return model.eval()


def apply_rules(key: str, rules: Iterable[tuple[str, str]]) -> str:
    """Apply ``(regex, replacement)`` rules in order, each at most where it matches."""
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def check_keys(mapped: Iterable[str], target: Iterable[str], what: str, *,
               may_miss: Callable[[str], bool] = lambda k: False) -> None:
    """Raise unless ``mapped`` covers every ``target`` key (except those ``may_miss`` allows: tensors the
    target model has but never reads) and names no key the target lacks."""
    mapped, target = set(mapped), set(target)
    missing = sorted(k for k in target - mapped if not may_miss(k))
    extra = sorted(mapped - target)
    if missing or extra:
        raise KeyError(f"{what}: key mapping incomplete: {len(missing)} target keys not filled "
                       f"{missing[:4]}, {len(extra)} mapped keys unknown to the target {extra[:4]}")
