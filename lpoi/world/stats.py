"""The miniature's statistics: per-scene contributions of every metric, the paired bootstrap over (base, seed)
cells and test scenes, the pre-registered selection rule, and the Pareto plot of the whole sweep.

Every metric reported with an interval is a *ratio of sums* (AMBER's CHAIR, Cover, Hal, Cog and yes/no
Accuracy are; so are the world's ``partner_no`` and ``present_yes``), so one run is summarised by a numerator
and a denominator per test scene, and any resample of scenes is two dot products. AMBER's yes/no F1 is not a
ratio of sums (it is a harmonic mean of two rounded ratios), so it has no interval here.

Pure numpy (and matplotlib for the plot); nothing here knows where files live.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lpoi.config import WorldSelectParams
from lpoi.io import atomic_write_bytes

__all__ = [
    "GENERATIVE_METRICS",
    "METRICS",
    "bootstrap_ci",
    "item_contributions",
    "paired_bootstrap",
    "pareto_front",
    "plot_pareto",
    "ratio",
    "select",
    "select_entries",
]

GENERATIVE_METRICS = ("CHAIR", "Cover", "Hal", "Cog")
METRICS = GENERATIVE_METRICS + ("Accuracy", "partner_no", "present_yes")
QUESTION_KINDS = ("present", "absent_partner", "absent_other")
LEVEL = 0.95
_CHUNK = 1000  # resamples drawn at once: part of the random stream's definition, do not change


# ============================================================================ per-scene contributions


def _int_id(key: Any, where: str) -> int:
    try:
        i = int(key)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: id {key!r} is not an integer") from None
    if isinstance(key, bool) or (isinstance(key, float) and key != i):
        raise ValueError(f"{where}: id {key!r} is not an integer")
    return i


def item_contributions(details_rows: Sequence[Mapping], annotations: Mapping | Sequence,
                       questions: Mapping, *, scene_ids: Sequence[str] | None = None
                       ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{metric: (num, den)}``, float arrays over the test scenes, from the AMBER scorer's per-item rows
    (``score(..., details=...)`` / ``score_file(..., details_path=...)``), such that
    ``100 * num.sum() / den.sum()`` is the scorer's value without its 0.001 denominators and rounding.

    Scenes: generative item ``i`` (AMBER id ``i``, 1..n) describes scene ``i - 1``; n is the number of
    generative annotations. A yes/no item's scene is ``questions[id]["scene"]``: an int is that 0-based
    position, a string is looked up in ``scene_ids`` (the scene ids in generative order).
    ``questions[id]["kind"]`` is ``present``, ``absent_partner`` or ``absent_other``.

    Per scene: CHAIR = hallucinated mentions / vocabulary mentions; Cover = covered truth words / truth words
    (duplicates count, as in the scorer); Cog = covered hallucination words / hallucination words; Hal =
    [any hallucinated mention] / 1; Accuracy = correct yes/no answers / yes/no questions; partner_no = "No"
    answers / questions about an absent partner; present_yes = "Yes" answers / questions about a present class.
    A scene whose description is missing from the rows (a generation error the scorer left out) adds 0 / 0.
    """
    ann = _annotations_by_id(annotations)
    gen_ids = sorted(i for i, a in ann.items() if a.get("type") == "generative")
    n = len(gen_ids)
    if gen_ids != list(range(1, n + 1)):
        raise ValueError(f"annotations: generative ids must be 1..{n} (one per scene, in order), got {gen_ids[:5]}...")
    pos = None if scene_ids is None else {s: k for k, s in enumerate(scene_ids)}
    if pos is not None and len(pos) != n:
        raise ValueError(f"scene_ids: {len(scene_ids)} ids ({len(pos)} distinct) for {n} generative items")
    qs = {_int_id(k, "questions"): v for k, v in questions.items()}
    out = {m: (np.zeros(n), np.zeros(n)) for m in METRICS}

    def add(metric: str, scene: int, num: float, den: float) -> None:
        out[metric][0][scene] += num
        out[metric][1][scene] += den

    seen: set[int] = set()
    for k, row in enumerate(details_rows, 1):
        where = f"details row {k}"
        if not isinstance(row, Mapping) or "id" not in row:
            raise ValueError(f"{where}: expected an object with an 'id', got {row!r}")
        i = _int_id(row["id"], where)
        if i in seen:
            raise ValueError(f"{where}: id {i} appears twice")
        seen.add(i)
        a = ann.get(i)
        if a is None:
            raise ValueError(f"{where}: id {i} is not in the annotations")
        if a.get("type") == "generative":
            try:
                nouns, hal = row["nouns"], row["hallucinated"]
                truth_cov, hallu_cov = row["truth_covered"], row["hallu_covered"]
            except KeyError as e:
                raise ValueError(f"{where} (id {i}): generative row has no {e.args[0]!r}") from None
            s = i - 1
            add("CHAIR", s, len(hal), len(nouns))
            add("Cover", s, len(truth_cov), len(a["truth"]))
            add("Cog", s, len(hallu_cov), len(a["hallu"]))
            add("Hal", s, float(len(hal) > 0), 1.0)
            continue
        if "answer" not in row or "correct" not in row:
            raise ValueError(f"{where} (id {i}): yes/no row needs 'answer' and 'correct'")
        q = qs.get(i)
        if not isinstance(q, Mapping) or "scene" not in q or q.get("kind") not in QUESTION_KINDS:
            raise ValueError(f"questions: id {i} needs 'scene' and 'kind' in {QUESTION_KINDS}, got {q!r}")
        s = _scene_index(q["scene"], pos, n, i)
        add("Accuracy", s, float(bool(row["correct"])), 1.0)
        if q["kind"] == "absent_partner":
            add("partner_no", s, float(row["answer"] == "No"), 1.0)
        elif q["kind"] == "present":
            add("present_yes", s, float(row["answer"] == "Yes"), 1.0)
    return out


def _annotations_by_id(annotations: Mapping | Sequence) -> dict[int, Mapping]:
    if isinstance(annotations, Mapping):
        return {_int_id(k, "annotations"): v for k, v in annotations.items()}
    out = {}
    for k, a in enumerate(annotations):
        if not isinstance(a, Mapping) or "id" not in a:
            raise ValueError(f"annotations: entry {k} has no 'id'")
        out[_int_id(a["id"], f"annotations entry {k}")] = a
    return out


def _scene_index(scene: Any, pos: dict | None, n: int, qid: int) -> int:
    if isinstance(scene, int) and not isinstance(scene, bool):
        if not 0 <= scene < n:
            raise ValueError(f"questions: id {qid}: scene {scene} is outside 0..{n - 1}")
        return scene
    if pos is None:
        raise ValueError(f"questions: id {qid}: scene {scene!r} is not a position; pass scene_ids to map scene ids")
    if scene not in pos:
        raise ValueError(f"questions: id {qid}: scene {scene!r} is not in scene_ids")
    return pos[scene]


def ratio(num: np.ndarray, den: np.ndarray) -> float:
    """``100 * sum(num) / sum(den)`` (nan when the denominator is 0)."""
    d = float(np.sum(den))
    return 100.0 * float(np.sum(num)) / d if d > 0 else math.nan


# ============================================================================ paired bootstrap


def _interval(point: float, samples: np.ndarray) -> dict[str, float]:
    ok = samples[np.isfinite(samples)]
    if ok.size == 0 or not math.isfinite(point):
        return {"mean": point, "lo": math.nan, "hi": math.nan}
    alpha = (1 - LEVEL) / 2
    lo, hi = np.percentile(ok, [100 * alpha, 100 * (1 - alpha)])
    return {"mean": float(point), "lo": float(lo), "hi": float(hi)}


def _cell_mean(num: np.ndarray, den: np.ndarray, wc: np.ndarray | None, ws: np.ndarray | None) -> np.ndarray:
    """Mean over cells of 100 * num/den summed over scenes; with weights: one value per resample.

    ``ws`` (scenes, B) are scene counts and ``wc`` (B, cells) cell counts of the resamples. The counts and the
    metric tallies are integers, so the sums are exact whatever the BLAS: a seed gives the same bits anywhere.
    """
    if ws is None:
        n, d = num.sum(axis=1)[:, None], den.sum(axis=1)[:, None]  # (cells, 1)
        wc = np.ones((1, num.shape[0]))
    else:
        n, d = num @ ws, den @ ws  # (cells, B)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(d > 0, 100.0 * n / np.where(d > 0, d, 1.0), 0.0)
    w = wc.T * (d > 0)  # a cell with no item of the metric in a resample does not count
    tot = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, (w * r).sum(axis=0) / np.where(tot > 0, tot, 1.0), np.nan)


def paired_bootstrap(contrib: Mapping[str, Mapping[str, tuple]], reference: str, n_boot: int = 1000,
                     seed: int = 0) -> dict:
    """Percentile 95 % intervals for every method and metric, and for every difference to ``reference``.

    ``contrib[method][metric] = (num, den)``, arrays of shape (cells, scenes); the cells are the (base, seed)
    runs in the same order for every method and the scenes the same test scenes, so the methods are paired.
    One value = mean over cells of 100 * sum(num) / sum(den) over scenes ("mean": that value on the data).
    Each resample draws the cells and the scenes with replacement, the same draws for every method and metric,
    so ``diff[method][metric]`` (method - reference) gets a paired interval. Returns
    ``{method: {metric: {"mean", "lo", "hi"}}, "diff": {method: {metric: {...}}}}``.
    """
    if reference not in contrib:
        raise ValueError(f"bootstrap: reference method {reference!r} is not among {list(contrib)}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"bootstrap: n_boot must be a positive int, got {n_boot!r}")
    if "diff" in contrib:
        raise ValueError("bootstrap: 'diff' is reserved and cannot be a method name")
    metrics = list(contrib[reference])
    shape = None
    arrays: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for m, per in contrib.items():
        if list(per) != metrics:
            raise ValueError(f"bootstrap: method {m!r} has metrics {list(per)}, {reference!r} has {metrics}")
        arrays[m] = {}
        for k, pair in per.items():
            num, den = (np.asarray(x, dtype=np.float64) for x in pair)
            if num.ndim != 2 or num.shape != den.shape:
                raise ValueError(f"bootstrap: {m}.{k}: num and den must be (cells, scenes) arrays of one shape, "
                                 f"got {num.shape} and {den.shape}")
            shape = shape or num.shape
            if num.shape != shape:
                raise ValueError(f"bootstrap: {m}.{k} has shape {num.shape}, others {shape}: methods must be paired")
            if not (np.isfinite(num).all() and np.isfinite(den).all()) or (den < 0).any():
                raise ValueError(f"bootstrap: {m}.{k} has non-finite or negative values")
            arrays[m][k] = (num, den)
    cells, scenes = shape
    rng = np.random.default_rng(seed)
    point = {m: {k: float(_cell_mean(n, d, None, None)[0]) for k, (n, d) in per.items()} for m, per in arrays.items()}
    parts: dict[str, dict[str, list[np.ndarray]]] = {m: {k: [] for k in metrics} for m in arrays}
    for start in range(0, n_boot, _CHUNK):  # bounded memory at any n_boot; the chunk size is fixed, so is the stream
        b = min(_CHUNK, n_boot - start)
        wc = rng.multinomial(cells, np.full(cells, 1.0 / cells), size=b).astype(np.float64)  # (b, cells)
        ws = rng.multinomial(scenes, np.full(scenes, 1.0 / scenes), size=b).T.astype(np.float64)  # (scenes, b)
        for m, per in arrays.items():
            for k, (n, d) in per.items():
                parts[m][k].append(_cell_mean(n, d, wc, ws))
    boot = {m: {k: np.concatenate(v) for k, v in per.items()} for m, per in parts.items()}
    out: dict = {m: {k: _interval(point[m][k], boot[m][k]) for k in metrics} for m in arrays}
    out["diff"] = {m: {k: _interval(point[m][k] - point[reference][k], boot[m][k] - boot[reference][k])
                       for k in metrics} for m in arrays if m != reference}
    return out


def bootstrap_ci(values: Sequence[float], n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Mean of per-cell scalars (e.g. held-out ranking accuracy) with a percentile 95 % interval over cells."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0 or not np.isfinite(v).all():
        raise ValueError(f"bootstrap_ci: expected a non-empty list of finite numbers, got {values!r}")
    rng = np.random.default_rng(seed)
    w = rng.multinomial(v.size, np.full(v.size, 1.0 / v.size), size=n_boot)
    return _interval(float(v.mean()), (w @ v) / v.size)


# ============================================================================ selection rule


def _number(d: Mapping, key: str, where: str) -> float:
    if not isinstance(d, Mapping) or key not in d:
        raise ValueError(f"{where} has no {key!r}")
    x = d[key]
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ValueError(f"{where}.{key} must be a finite number, got {x!r}")
    return float(x)


def select(configs: Sequence[Mapping], val_metrics: Sequence[Mapping], base_val: Mapping,
           rule: WorldSelectParams) -> tuple[int, str]:
    """The configuration :class:`~lpoi.config.WorldSelectParams` picks from VALIDATION numbers only:
    the lowest ``rule.minimize`` among those with ``rule.keep >= base - rule.max_drop``; when none passes, the
    highest ``rule.keep``; ties go to the earlier configuration. Returns (index, a one-line reason)."""
    if len(configs) != len(val_metrics):
        raise ValueError(f"select: {len(configs)} configurations but {len(val_metrics)} validation results")
    if not configs:
        raise ValueError("select: no configurations to choose from")
    floor = _number(base_val, rule.keep, "select: base validation") - rule.max_drop
    keep = [_number(v, rule.keep, f"select: configuration {i} validation") for i, v in enumerate(val_metrics)]
    low = [_number(v, rule.minimize, f"select: configuration {i} validation") for i, v in enumerate(val_metrics)]
    passing = [i for i in range(len(keep)) if keep[i] >= floor]
    if passing:
        best = min(passing, key=lambda i: (low[i], i))
        return best, (f"lowest validation {rule.minimize} ({low[best]:.1f}) among {len(passing)} of {len(keep)} "
                      f"configurations with {rule.keep} >= {floor:.1f} (base - {rule.max_drop:g}): {dict(configs[best])}")
    best = max(range(len(keep)), key=lambda i: (keep[i], -i))
    return best, (f"no configuration kept validation {rule.keep} >= {floor:.1f} (base - {rule.max_drop:g}): "
                  f"highest {rule.keep} ({keep[best]:.1f}): {dict(configs[best])}")


def select_entries(entries: Sequence[Mapping], base: Mapping, rule: WorldSelectParams) -> tuple[int, str]:
    """:func:`select` on result entries ``{"config", "validation", ...}`` (any ``test`` key is never read),
    against ``base["validation"]``."""
    for i, e in enumerate(entries):
        if not isinstance(e, Mapping) or "config" not in e or "validation" not in e:
            raise ValueError(f"select: entry {i} needs 'config' and 'validation'")
    if not isinstance(base, Mapping) or "validation" not in base:
        raise ValueError("select: the base needs 'validation'")
    return select([e["config"] for e in entries], [e["validation"] for e in entries], base["validation"], rule)


# ============================================================================ Pareto plot


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (cover, y) points no other point dominates (higher or equal cover AND lower or equal y, one strictly),
    sorted by cover."""
    pts = sorted({(float(x), float(y)) for x, y in points if math.isfinite(x) and math.isfinite(y)},
                 key=lambda p: (-p[0], p[1]))
    front, best_y = [], math.inf
    for x, y in pts:  # by decreasing cover: a point is on the front when it beats every higher-cover y
        if y < best_y:
            front.append((x, y))
            best_y = y
    return sorted(front)


def _get_stat(stats: Mapping, key: str, method: str) -> Mapping:
    if not isinstance(stats, Mapping) or not isinstance(stats.get(key), Mapping):
        raise ValueError(f"plot_pareto: selected[{method!r}] has no {key!r} interval")  # noqa: TRY004 - bad input
    return stats[key]


def _ci(s: Mapping) -> tuple[float, float, float]:
    where = "plot_pareto: an interval"
    return tuple(_number(s, k, where) for k in ("mean", "lo", "hi"))


def plot_pareto(points: Mapping[str, Sequence[Mapping]], selected: Mapping[str, Mapping], path: str | Path,
                labels: Mapping[str, str] | None = None) -> None:
    """Cog vs Cover and CHAIR vs Cover: every validation configuration of every method (small markers,
    ``points[method] = [{"Cover", "Cog", "CHAIR"}, ...]``; ``points["base"]``: the base's validation numbers),
    the selected configurations' test means with 95 % intervals (big markers, ``selected[method][metric] =
    {"mean", "lo", "hi"}``; ``selected["base"]`` drawn as a star), and the Pareto front of all validation
    points (lower y and higher Cover better). Same input, same PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = labels or {}
    methods = list(dict.fromkeys([m for m in points if m != "base"] + [m for m in selected if m != "base"]))
    cmap = plt.get_cmap("tab10")
    colour = {m: cmap(i % 10) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), dpi=100)
    for ax, y in zip(axes, ("Cog", "CHAIR")):
        every = []
        for m, pts in points.items():
            xs = [_number(p, "Cover", f"plot_pareto: points[{m!r}]") for p in pts]
            ys = [_number(p, y, f"plot_pareto: points[{m!r}]") for p in pts]
            every += list(zip(xs, ys))
            if m == "base":
                ax.scatter(xs, ys, marker="*", s=60, color="black", alpha=0.5, zorder=3)
            else:
                ax.scatter(xs, ys, marker="o", s=14, color=colour[m], alpha=0.45, zorder=2)
        front = pareto_front(every)
        if front:
            ax.step([p[0] for p in front], [p[1] for p in front], where="pre", color="grey", lw=1, ls="--",
                    zorder=1, label="Pareto front (validation)")
        for m, stats in selected.items():
            cx = _ci(_get_stat(stats, "Cover", m))
            cy = _ci(_get_stat(stats, y, m))
            # a percentile interval need not contain the point value: never a negative bar
            xerr = [[max(0.0, cx[0] - cx[1])], [max(0.0, cx[2] - cx[0])]]
            yerr = [[max(0.0, cy[0] - cy[1])], [max(0.0, cy[2] - cy[0])]]
            cx, cy = {"mean": cx[0]}, {"mean": cy[0]}
            base = m == "base"
            ax.errorbar([cx["mean"]], [cy["mean"]], xerr=xerr, yerr=yerr, fmt="*" if base else "o",
                        ms=16 if base else 8, color="black" if base else colour[m], mec="black", capsize=3,
                        zorder=4, label=f"{labels.get(m, m)} (test)")
        ax.set_xlabel("Cover ↑ (%)")
        ax.set_ylabel(f"{y} ↓ (%)")
        ax.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="center right", fontsize=8, frameon=False)
    fig.suptitle("Shapes world: small = validation configurations, big = selected configuration on test "
                 "(95 % intervals), star = base", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.8, 0.95))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
