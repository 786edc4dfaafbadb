"""The grid's results as reported: mean +- std over seeds per method, a Markdown table, the rewards plot.

Nothing here decides anything: the table lists every method with the same columns, in a fixed order
(base, DPO, mDPO, LPOI), and the std is the sample standard deviation over seeds (ddof = 1). The base is
one deterministic model, so it has no std.
"""

from __future__ import annotations

import io
import statistics
from pathlib import Path

from lpoi.io import atomic_write_bytes

__all__ = ["COLUMNS", "METHOD_LABELS", "metrics_view", "plot_rewards", "summarize", "table_markdown"]

COLUMNS = (  # (key, label with the direction of "better")
    ("CHAIR", "CHAIR ↓"), ("Cover", "Cover ↑"), ("Hal", "Hal ↓"), ("Cog", "Cog ↓"),
    ("Accuracy", "yes/no Acc ↑"), ("F1", "yes/no F1 ↑"),
)
METHOD_LABELS = {"base": "base (pretrained)", "dpo": "DPO", "mdpo": "mDPO", "lpoi": "LPOI"}


def _metrics(amber: dict) -> dict[str, float]:
    out = dict(amber["generative"])
    out.update({k: amber["discriminative"]["overall"][k] for k in ("Accuracy", "F1")})
    return {k: float(out[k]) for k, _ in COLUMNS}


def _stat(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def summarize(grid: dict) -> dict:
    """``{"methods": {name: {metric: {"mean", "std", "n", "values"}}}, "rewards": {name: {...}},
    "training": {name: {"loss_first10", "loss_last10"}}}`` from :func:`lpoi.world.grid.run_grid`'s result."""
    methods: dict[str, dict] = {"base": {k: _stat([v]) for k, v in _metrics(grid["base"]["amber"]).items()}}
    rewards, training = {}, {}
    order = list(dict.fromkeys(c["method"] for c in grid["cells"]))
    for m in order:
        cells = sorted((c for c in grid["cells"] if c["method"] == m), key=lambda c: c["seed"])
        per = [_metrics(c["amber"]) for c in cells]
        methods[m] = {k: _stat([p[k] for p in per]) for k, _ in COLUMNS}
        k = len(cells[0]["rewards"]["reward"])
        rewards[m] = {
            "visibility": cells[0]["rewards"]["visibility"],
            "reward": [_stat([c["rewards"]["reward"][j] for c in cells]) for j in range(k)],
            "rejected": _stat([c["rewards"]["rejected"] for c in cells]),
            "ranking_accuracy": _stat([c["rewards"]["ranking_accuracy"] for c in cells]),
            "reward_accuracy": _stat([c["rewards"]["reward_accuracy"] for c in cells]),
        }
        training[m] = {"loss_first10": _stat([c["train"]["loss_first10"] for c in cells]),
                       "loss_last10": _stat([c["train"]["loss_last10"] for c in cells])}
    return {"methods": methods, "rewards": rewards, "training": training,
            "seeds": sorted({c["seed"] for c in grid["cells"]})}


def metrics_view(summary: dict) -> dict:
    """The numbers of the table for ``metrics/world.json``: means and stds only, under ``world`` so that no key
    can be mistaken for the pipeline's own (``world.lpoi.CHAIR.mean``); the report copies the means into
    ``metrics/summary.json`` when the world ran."""
    out: dict = {}
    for m, stats in summary["methods"].items():
        out[m] = {k: (s["mean"] if s["n"] == 1 else {"mean": s["mean"], "std": s["std"]}) for k, s in stats.items()}
    for m, r in summary["rewards"].items():
        out[m]["heldout_reward"] = {f"vis_{v:g}": s["mean"] for v, s in zip(r["visibility"], r["reward"])}
        out[m]["heldout_ranking_accuracy"] = r["ranking_accuracy"]["mean"]
    return {"world": out}


def _fmt(s: dict) -> str:
    return f"{s['mean']:.1f}" if s["n"] == 1 else f"{s['mean']:.1f} ± {s['std']:.1f}"


def table_markdown(summary: dict) -> str:
    """The comparison table (values in percent, as AMBER prints them) and the held-out list rewards."""
    seeds = summary["seeds"]
    head = "| model | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for m, stats in summary["methods"].items():
        lines.append(f"| {METHOD_LABELS.get(m, m)} | " + " | ".join(_fmt(stats[k]) for k, _ in COLUMNS) + " |")
    lines.append("")
    lines.append(f"Mean ± sample std over seeds {seeds} (base: one model). AMBER-format benchmark of the world, "
                 "scored by the project's AMBER scorer (exact word matching).")
    if summary["rewards"]:
        vis = next(iter(summary["rewards"].values()))["visibility"]
        lines += ["", "Held-out list rewards β·(log π − log π_ref) of the chosen answer by visibility of the hidden "
                  "object, and the share of adjacent list pairs ranked by visibility:", "",
                  "| model | " + " | ".join(f"vis {v:g}" for v in vis) + " | rejected | ranking acc |",
                  "|" + "---|" * (len(vis) + 3)]
        for m, r in summary["rewards"].items():
            cells = [f"{s['mean']:.3f} ± {s['std']:.3f}" for s in r["reward"]]
            ra = r["ranking_accuracy"]
            lines.append(f"| {METHOD_LABELS.get(m, m)} | " + " | ".join(cells)
                         + f" | {r['rejected']['mean']:.3f} ± {r['rejected']['std']:.3f} | "
                           f"{ra['mean']:.2f} ± {ra['std']:.2f} |")
    return "\n".join(lines) + "\n"


def plot_rewards(summary: dict, path: str | Path) -> None:
    """Mean held-out reward per list position (visibility 1 -> 0) per method, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    styles = {"dpo": ("tab:blue", "o"), "mdpo": ("tab:orange", "s"), "lpoi": ("tab:green", "^")}
    for m, r in summary["rewards"].items():
        colour, marker = styles.get(m, (None, "x"))
        ax.errorbar(r["visibility"], [s["mean"] for s in r["reward"]], yerr=[s["std"] for s in r["reward"]],
                    label=f"{METHOD_LABELS.get(m, m)} (ranking acc {r['ranking_accuracy']['mean']:.2f})",
                    color=colour, marker=marker, capsize=3)
    ax.axhline(0.0, color="grey", lw=0.8, ls="--")
    ax.invert_xaxis()
    ax.set_xlabel("visibility of the hidden object in list image k")
    ax.set_ylabel("held-out reward  β·(log π − log π_ref)")
    ax.set_title(f"Shapes world: list-position rewards (mean ± std over seeds {summary['seeds']})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
