"""Tests describe a run as flat keywords (``lr=3e-3, live_dir=...``); this maps them onto what the recipe
takes -- the validated config sections and ``TrainPaths`` -- through ``lpoi.config.validate``, so a bad
value fails exactly as it would in ``params.yaml``."""

from __future__ import annotations

from lpoi.config import validate
from lpoi.train.recipe import TrainPaths, train

PATHS = {"lists_path": "lists", "reference_path": "reference", "out_dir": "out", "live_dir": "live",
         "checkpoint_dir": "checkpoints"}
HOOKS = ("progress", "callback", "keep_checkpoints")
MAX_LENGTH = 512  # = the reference files the tests make (run_reference(..., max_length=MAX_LENGTH))


def split(kw: dict) -> dict:
    """``{"train", "model", "reference", "paths", "hooks"}`` from flat keywords."""
    kw = dict(kw)
    paths = {new: str(kw.pop(old)) for old, new in PATHS.items() if kw.get(old) is not None}
    for old in PATHS:
        kw.pop(old, None)
    hooks = {k: kw.pop(k) for k in HOOKS if k in kw}
    model = {"name": kw.pop("model_name"), **({"max_pixels": kw.pop("max_pixels")} if "max_pixels" in kw else {})}
    reference = {"max_length": kw.pop("max_length", MAX_LENGTH),
                 **{k: kw.pop(k) for k in ("tokenization", "max_prompt_length") if k in kw}}
    return {"train": kw, "model": model, "reference": reference, "paths": paths, "hooks": hooks}


def run_train(**kw) -> dict:
    job = split(kw)
    p = validate({k: job[k] for k in ("train", "model", "reference")})
    return train(p.train, p.model, p.reference, TrainPaths(**job["paths"]), **job["hooks"])
