"""``metrics/summary.json``: the headline numbers of a run, the one file DVC compares between runs.

≤ 25 numeric keys (no strings, paths, hashes or timings), nested by benchmark so ``dvc exp show``
columns read ``amber.CHAIR``, ``train.loss``, ... :data:`ROWS` is the single definition of what goes
in, where it comes from and which direction is better; the report's results table is drawn from it.
A value the run did not produce (e.g. verify disabled) is ``null``, never a made-up 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from lpoi.config import BENCHES
from lpoi.labels import RANDOM_MODEL_KEY


class Row(NamedTuple):
    key: str  # dotted key in summary.json
    group: str  # benchmark / part of the run, as the report's table names it
    name: str  # metric name as papers print it
    better: str  # "↓", "↑" or "" (a count)
    source: tuple[str, ...]  # path inside the source file (first element: which file)
    digits: int  # rounding in summary.json


ROWS: tuple[Row, ...] = (
    Row("amber.CHAIR", "AMBER", "CHAIR", "↓", ("amber", "generative", "CHAIR"), 1),
    Row("amber.Cover", "AMBER", "Cover", "↑", ("amber", "generative", "Cover"), 1),
    Row("amber.Hal", "AMBER", "Hal", "↓", ("amber", "generative", "Hal"), 1),
    Row("amber.Cog", "AMBER", "Cog", "↓", ("amber", "generative", "Cog"), 1),
    Row("amber.Accuracy", "AMBER", "Accuracy (yes/no)", "↑", ("amber", "discriminative", "overall", "Accuracy"), 1),
    Row("amber.F1", "AMBER", "F1 (yes/no)", "↑", ("amber", "discriminative", "overall", "F1"), 1),
    Row("amber.score", "AMBER", "AMBER score", "↑", ("amber", "amber_score"), 2),
    Row("objhal.CHAIRs", "Object HalBench", "CHAIRs", "↓", ("objhal", "CHAIRs"), 1),
    Row("objhal.CHAIRi", "Object HalBench", "CHAIRi", "↓", ("objhal", "CHAIRi"), 1),
    Row("mmhal.score", "MMHal-Bench", "score (0–6)", "↑", ("mmhal", "score"), 2),
    Row("mmhal.hallucination_rate", "MMHal-Bench", "hallucination rate", "↓", ("mmhal", "hallucination_rate"), 2),
    Row("train.loss", "Training", "final loss", "↓", ("train", "loss"), 4),
    Row("train.ranking_accuracy", "Training", "ranking accuracy", "↑", ("train", "ranking_accuracy"), 3),
    Row("train.margin", "Training", "reward margin (chosen − rejected)", "↑", ("train", "margin"), 4),
    Row("lists.lists", "Lists", "lists built", "", ("listgen", "lists_out"), 0),
    Row("lists.reject_rate", "Lists", "records rejected", "↓", ("listgen", "_reject_rate"), 3),
    Row("lists.detection_rate", "Lists", "object detected", "↑", ("listgen", "detection_rate"), 3),
    Row("lists.sam_mask_rate", "Lists", "SAM mask", "↑", ("listgen", "sam_mask_rate"), 3),
    Row("lists.verify_pass_rate", "Lists", "verified hard negative", "↑", ("listgen", "verify_pass_rate"), 3),
    Row("errors.generation", "Errors", "generation errors (all benchmarks)", "↓", ("_errors", "generation"), 0),
    Row("errors.judge", "Errors", "judge / extraction errors", "↓", ("_errors", "judge"), 0),
)


def _dig(d: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(d, Mapping):
            return None
        d = d.get(part)
    return d


def _number(x: Any, digits: int) -> float | int | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return int(x) if digits == 0 else round(float(x), digits)


def _errors(sources: Mapping[str, Any]) -> dict[str, int]:
    gen = sum(int(_dig(sources, (b, "n_generation_errors")) or 0) for b in BENCHES)
    judge = int(_dig(sources, ("mmhal", "n_judge_errors")) or 0) + int(_dig(sources, ("objhal", "n_extract_errors")) or 0)
    return {"generation": gen, "judge": judge}


def build_summary(sources: Mapping[str, Any], random_model: bool) -> dict[str, Any]:
    """The summary from the run's files: ``sources`` = ``{"amber": <amber.json>, "objhal": ..., "mmhal":
    ..., "train": <train metrics.json>, "listgen": <listgen.json>}`` (a missing file: ``None``)."""
    listgen = dict(sources.get("listgen") or {})
    n_in = listgen.get("records_in")
    listgen["_reject_rate"] = listgen.get("rejects_total", 0) / n_in if n_in else None
    full = {**sources, "listgen": listgen, "_errors": _errors(sources)}
    out: dict[str, Any] = {RANDOM_MODEL_KEY: bool(random_model)}
    for row in ROWS:
        section, name = row.key.split(".")
        out.setdefault(section, {})[name] = _number(_dig(full, row.source), row.digits)
    return out


def flat(summary: Mapping[str, Any]) -> dict[str, Any]:
    """``{"amber.CHAIR": 91.7, ...}`` (the column names ``dvc exp show`` prints)."""
    out: dict[str, Any] = {}
    for k, v in summary.items():
        if isinstance(v, Mapping):
            out.update({f"{k}.{kk}": vv for kk, vv in flat(v).items()})
        else:
            out[k] = v
    return out
