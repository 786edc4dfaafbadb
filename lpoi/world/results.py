"""The study's results as reported: ``metrics/world.json``, the Markdown table, the rewards and Pareto plots.

Nothing here decides anything. Every method gets the same columns in the order of ``world.study.methods``;
every interval is a paired bootstrap over test scenes and (base, seed) cells (:mod:`lpoi.world.stats`); the
base model is one deterministic model per base, so its cells repeat each base's answers for every seed (the
pairing with the trained cells stays exact: same base, same scenes).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from lpoi.config import Params
from lpoi.io import atomic_write_bytes

__all__ = ["METRICS", "contributions", "plot_rewards", "summarize", "world_metrics"]

METRICS = ("CHAIR", "Cover", "Hal", "Cog", "Accuracy", "partner_no", "present_yes")


def _order(cells: list[dict]) -> list[dict]:
    return sorted(cells, key=lambda r: (r["cell"]["base"], r["cell"]["seed"]))


def contributions(study: dict, p: Params, phase: str = "test") -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """``{method: {metric: (num, den)}}`` with arrays of shape (cells, scenes), cells in (base, seed) order and the
    same for every method (the base's answers repeated for each seed of its base)."""
    s = p.world.study
    cells = study[phase]
    methods = list(s.methods) if phase == "test" else list(s.also)
    base_by = {r["base"]: r["eval"]["contrib"] for r in study["bases"]["test"]}
    out: dict[str, dict] = {}
    keys = [(b, seed) for b in range(s.bases) for seed in (s.seeds if phase == "test" else s.also_seeds)]
    out["base"] = {k: (np.array([base_by[b][k][0] for b, _ in keys]), np.array([base_by[b][k][1] for b, _ in keys]))
                   for k in METRICS}
    for m in methods:
        mine = _order([r for r in cells if r["cell"]["method"] == m])
        if [(r["cell"]["base"], r["cell"]["seed"]) for r in mine] != keys:
            raise RuntimeError(f"study: {phase} cells of {m} are not one per (base, seed)")
        out[m] = {k: (np.array([r["eval"]["contrib"][k][0] for r in mine]),
                      np.array([r["eval"]["contrib"][k][1] for r in mine])) for k in METRICS}
    return out


def _ranking(study: dict, m: str, n_boot: int, seed: int) -> dict:
    from lpoi.world.stats import bootstrap_ci

    vals = [r["rewards"]["ranking_accuracy"] for r in _order(study["test"]) if r["cell"]["method"] == m]
    return bootstrap_ci(np.array(vals), n_boot=n_boot, seed=seed)


def _bootstrap(contrib: dict, ref: str, n_boot: int, seed: int) -> dict:
    """:func:`lpoi.world.stats.paired_bootstrap`, with the reference's difference to itself (exactly 0) kept too,
    so every method's block has the same keys."""
    from lpoi.world.stats import paired_bootstrap

    boot = paired_bootstrap(contrib, ref, n_boot=n_boot, seed=seed)
    boot["diff"][ref] = {k: {"mean": 0.0, "lo": 0.0, "hi": 0.0} for k in METRICS}
    return boot


def world_metrics(p: Params, study: dict) -> dict:
    """``{"world": ...}``: the schema of ``metrics/world.json`` (numbers only; see docs/miniature.md)."""
    s = p.world.study
    ref = s.reference_method
    seed = p.world.seed
    boot = _bootstrap(contributions(study, p), ref, s.bootstrap, seed)
    n = {"cells": s.bases * len(s.seeds), "bases": s.bases, "seeds": len(s.seeds), "scenes": p.world.n_test}
    base_val = next(r for r in study["bases"]["val"] if r["base"] == s.tune.base)["eval"]["metrics"]
    world: dict = {
        "design": {"bases": s.bases, "seeds_per_base": len(s.seeds), "cells": n["cells"], "test_scenes": p.world.n_test,
                   "val_scenes": p.world.n_val, "train_pairs": study["manifests"][f"pairs/{s.rejection}"],
                   "n_boot": s.bootstrap,
                   "configs_per_method": len(s.tune.lr) * len(s.tune.beta) * len(s.tune.epochs),
                   "max_drop": s.select.max_drop},
        "base": {"validation": {k: base_val[k] for k in METRICS}, "test": boot["base"], "vs_" + ref: boot["diff"]["base"],
                 "n": n},
    }
    for m in s.methods:
        sel = study["selected"][m]
        rewards = [r["rewards"] for r in study["test"] if r["cell"]["method"] == m]
        world[m] = {"selected": sel["config"], "validation": {k: sel["validation"][k] for k in METRICS},
                    "test": boot[m], "vs_" + ref: boot["diff"][m],
                    "heldout_ranking_accuracy": _ranking(study, m, s.bootstrap, seed),
                    "heldout_log_ratio": {f"vis_{v:g}": float(np.mean([r["log_ratio"][j] for r in rewards]))
                                          for j, v in enumerate(rewards[0]["visibility"])},
                    "n": n}
    if study["also"]:
        other_ref = ref if ref in s.also else "base"
        other = _bootstrap(contributions(study, p, "also"), other_ref, s.bootstrap, seed)
        world["insert" if s.rejection == "substitute" else "substitute"] = {
            m: {"test": other[m], "vs_" + other_ref: other["diff"][m]} for m in s.also}
    return {"world": world}


def summarize(p: Params, study: dict) -> dict:
    """What the stage keeps besides the metrics: per-cell numbers (no per-scene arrays) and the selections."""
    def slim(r: dict) -> dict:
        out = {k: v for k, v in r.items() if k != "eval"}
        out["metrics"] = r["eval"]["metrics"]
        return out

    return {"plan": study["plan"], "selected": study["selected"],
            "bases": {split: [{"base": r["base"], "metrics": r["eval"]["metrics"]} for r in rows]
                      for split, rows in study["bases"].items()},
            "tune": [slim(r) for r in study["tune"]], "test": [slim(r) for r in study["test"]],
            "also": [slim(r) for r in study["also"]]}


def plot_pareto(p: Params, study: dict, metrics: dict, path: str | Path) -> None:
    """Every validation configuration of every method (Cog and CHAIR against Cover) and the selected
    configurations' test means with their intervals (:func:`lpoi.world.stats.plot_pareto`)."""
    from lpoi.world.readme import METHOD_LABELS
    from lpoi.world.stats import plot_pareto as draw

    keys = ("Cover", "Cog", "CHAIR")
    points = {m: [{k: r["eval"]["metrics"][k] for k in keys} for r in study["tune"] if r["cell"]["method"] == m]
              for m in p.world.study.methods}
    points["base"] = [{k: r["eval"]["metrics"][k] for k in keys} for r in study["bases"]["val"]]
    world = metrics["world"]
    selected = {m: {k: world[m]["test"][k] for k in keys} for m in ["base", *p.world.study.methods]}
    draw(points, selected, path, labels=METHOD_LABELS)


def plot_rewards(p: Params, study: dict, path: str | Path) -> None:
    """Mean held-out log-ratio per list position (visibility 1 -> 0) per method, with the min-max over cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lpoi.world.readme import METHOD_LABELS as LABELS

    fig, ax = plt.subplots(figsize=(7.2, 4.6), dpi=110)
    for i, m in enumerate(p.world.study.methods):
        rows = [r["rewards"] for r in study["test"] if r["cell"]["method"] == m]
        vis = rows[0]["visibility"]
        a = np.array([r["log_ratio"] for r in rows])
        acc = np.mean([r["ranking_accuracy"] for r in rows])
        ax.errorbar(np.array(vis) + (i - 3.5) * 0.006, a.mean(0), yerr=[a.mean(0) - a.min(0), a.max(0) - a.mean(0)],
                    label=f"{LABELS.get(m, m)} (ranking acc {acc:.2f})", marker="o", ms=3, capsize=2, lw=1)
    ax.axhline(0.0, color="grey", lw=0.8, ls="--")
    ax.invert_xaxis()
    ax.set_xlabel("visibility of the hidden object in list image k")
    ax.set_ylabel("held-out  log π − log π_ref  (chosen answer)")
    s = p.world.study
    ax.set_title(f"Shapes world, test split: mean over {s.bases} bases x {len(s.seeds)} seeds (bars: min-max over cells)",
                 fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
