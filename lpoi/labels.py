"""One honest label for numbers that come from tiny random models.

Every metrics file a score stage, the list-generation report and the summary write carries
``random_model`` (:data:`RANDOM_MODEL_KEY`): ``true`` when a tiny random build (``tiny/...``, see
:mod:`lpoi.models.tiny`) produced some of the numbers in that file. Such numbers test that the
pipeline runs; they say nothing about LPOI.
"""

from __future__ import annotations

from collections.abc import Iterable

RANDOM_MODEL_KEY = "random_model"
TINY_PREFIX = "tiny/"


def is_random(name: str | None) -> bool:
    """A model name that :func:`lpoi.models.load_vlm` (and friends) build offline with random weights."""
    return isinstance(name, str) and name.startswith(TINY_PREFIX)


def model_names(p, parts: Iterable[str] = ("vlm", "listgen", "judge")) -> dict[str, str]:
    """The models behind a run's numbers, by role, from a :class:`lpoi.config.Params`.

    ``vlm``: the trained and evaluated model; ``listgen``: detector, segmenter, verifier (the base
    model unless ``verify.model``; none when verification is off); ``judge``: the local judge model
    (an HTTP judge is a hosted model, named by its endpoint elsewhere).
    """
    names: dict[str, str] = {}
    parts = set(parts)
    if "vlm" in parts:
        names["model"] = p.model.name
    if "listgen" in parts:
        names["detect"] = p.detect.model
        names["segment"] = p.segment.model
        if p.verify.enabled:
            names["verify"] = p.verify.model or p.model.name
    if "judge" in parts and p.judge.backend == "hf":
        names["judge"] = p.judge.model
    return names


def random_models(p, parts: Iterable[str] = ("vlm", "listgen", "judge")) -> list[str]:
    """Roles (``model``, ``detect``, ...) whose model is a tiny random build, in a fixed order."""
    return [role for role, name in model_names(p, parts).items() if is_random(name)]


def label(p, parts: Iterable[str] = ("vlm", "listgen", "judge")) -> dict[str, bool]:
    """``{"random_model": bool}`` for a metrics file whose numbers come from the models of ``parts``."""
    return {RANDOM_MODEL_KEY: bool(random_models(p, parts))}
