"""``metrics/summary.json``: the headline numbers of a run, the one file DVC compares between runs.

≤ 25 numeric keys (no strings, paths, hashes or timings), nested by benchmark so ``dvc exp show``
columns read ``amber.CHAIR``, ``train.loss``, ... :data:`ROWS` is the single definition of what goes
in, where it comes from and which direction is better (:func:`direction`); the report's results table
is drawn from it. When the miniature ran, its means follow under ``world.<method>.<metric>``
(:data:`WORLD_METRICS`); otherwise there is no ``world`` key, so ``dvc exp show`` has no column for it.
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
    unit: str = ""  # "%": a rate in [0, 1] that the report shows as a percentage (summary.json keeps the rate)


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
    Row("lists.reject_rate", "Lists", "share of records rejected", "↓", ("listgen", "_reject_rate"), 3, "%"),
    Row("lists.detection_rate", "Lists", "samples with an object detected", "↑", ("listgen", "detection_rate"), 3, "%"),
    Row("lists.sam_mask_rate", "Lists", "objects masked by SAM", "↑", ("listgen", "sam_mask_rate"), 3, "%"),
    Row("lists.verify_pass_rate", "Lists", "objects verified critical", "↑", ("listgen", "verify_pass_rate"), 3, "%"),
    Row("errors.generation", "Errors", "generation errors (all benchmarks)", "↓", ("_errors", "generation"), 0),
    Row("errors.judge", "Errors", "judge / extraction errors", "↓", ("_errors", "judge"), 0),
)


WORLD_METRICS = ("Cover", "Cog")
"""Per method of the miniature's study (``world=shapes``), the test means copied into the summary as
``world.<method>.<metric>`` (2 x 9 columns); the intervals, the other metrics, the selected configurations and
the differences to LPOI stay in ``metrics/world.json`` and ``metrics/world.md``."""


def direction(key: str) -> str:
    """``"↓"``, ``"↑"`` or ``""`` (a count) for a flat summary key (``amber.CHAIR``, ``world.lpoi.Cover``):
    the one table of which way is better (:data:`ROWS`; the world's AMBER metrics as AMBER's)."""
    for row in ROWS:
        if row.key == key:
            return row.better
    parts = key.split(".")
    if parts[0] == "world" and len(parts) == 3:
        if parts[2] == "heldout_ranking_accuracy":
            return "↑"
        return next((r.better for r in ROWS if r.key == f"amber.{parts[2]}"), "")
    return ""


def world_summary(world: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The study's test means by method from ``metrics/world.json`` (``{"world": {method: {"test": {metric:
    {"mean", "lo", "hi"}}}}}``); None when it did not run (``world: none`` writes ``{}``), so the summary then
    has no ``world`` key at all. Keys that are not methods (``design``, the other rejection's block) are skipped."""
    methods = _dig(world, ("world",))
    if not isinstance(methods, Mapping) or not methods:
        return None
    out: dict[str, Any] = {}
    for method, values in methods.items():
        test = values.get("test") if isinstance(values, Mapping) else None
        if not isinstance(test, Mapping) or not isinstance(test.get("Cog"), Mapping):
            continue
        out[str(method)] = {name: _number(_dig(test, (name, "mean")), 3) for name in WORLD_METRICS}
    return out or None


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
    ..., "train": <train metrics.json>, "listgen": <listgen.json>, "world": <world.json>}`` (a missing
    file: ``None``). ``world`` keys appear only when the miniature ran (:func:`world_summary`)."""
    listgen = dict(sources.get("listgen") or {})
    n_in = listgen.get("records_in")
    listgen["_reject_rate"] = listgen.get("rejects_total", 0) / n_in if n_in else None
    full = {**sources, "listgen": listgen, "_errors": _errors(sources)}
    out: dict[str, Any] = {RANDOM_MODEL_KEY: bool(random_model)}
    for row in ROWS:
        section, name = row.key.split(".")
        out.setdefault(section, {})[name] = _number(_dig(full, row.source), row.digits)
    world = world_summary(sources.get("world"))
    if world:
        out["world"] = world
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
