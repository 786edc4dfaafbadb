"""The report's figures (matplotlib, PNG, registered as DVC image plots so ``dvc plots diff`` shows runs
side by side offline): training losses, reward per list position, the AMBER breakdown.

Every figure is written with deterministic bytes (Agg backend, no PNG timestamp) and atomically.
Curves are ``{name: [(step, value), ...]}``, as :func:`read_curves` reads dvclive's TSVs.
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import Any

from lpoi.io import atomic_write_bytes

DPI = 100
Curves = dict[str, list[tuple[float, float]]]
LOSS_PARTS = ("loss_dpo", "loss_list", "loss_anchor")  # the terms of the total, in the paper's order
_REWARD_K = re.compile(r"^reward_(\d+)$")


def read_curves(folder: str | os.PathLike) -> Curves:
    """Every ``<name>.tsv`` (``step<TAB><name>``, dvclive's plot files) in ``folder``; missing folder → {}."""
    curves: Curves = {}
    folder = Path(folder)
    if not folder.is_dir():
        return curves
    for path in sorted(folder.glob("*.tsv")):
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        points = []
        for r in rows:
            try:
                points.append((float(r["step"]), float(r[path.stem])))
            except (KeyError, TypeError, ValueError):
                continue  # a header-only file or a foreign column layout: nothing to plot
        if points:
            curves[path.stem] = points
    return curves


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save_png(fig, out_path: str | os.PathLike, dpi: float = DPI) -> None:
    """``fig`` as a PNG with deterministic bytes (no Software/timestamp text), written atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    atomic_write_bytes(out_path, buf.getvalue())


def _nothing(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _plot(ax, points, **kw) -> None:
    xs, ys = zip(*points)
    ax.plot(xs, ys, **kw)


def _finish_curves(fig, ax, drawn: bool, ylabel: str, title: str, out_path) -> None:
    if drawn:
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="best")
    ax.set_title(title, fontsize=10)
    save_png(fig, out_path)


def training_losses(curves: Curves, out_path: str | os.PathLike, title: str = "") -> None:
    """The total loss and its terms (DPO, list, anchor) against the optimizer step, on one figure."""
    fig = _figure(6.4, 3.6)
    ax = fig.add_subplot()
    present = [n for n in ("loss", *LOSS_PARTS) if n in curves]
    if not present:
        _nothing(ax, "no loss curves logged")
    styles = {"loss": {"color": "black", "linewidth": 2.2}, "loss_dpo": {"color": "tab:blue"},
              "loss_list": {"color": "tab:orange"}, "loss_anchor": {"color": "tab:green", "linestyle": "--"}}
    names = {"loss": "total", "loss_dpo": "DPO (text)", "loss_list": "list (Plackett–Luce)",
             "loss_anchor": "anchor"}
    for n in present:
        _plot(ax, curves[n], label=names[n], **styles[n])
    _finish_curves(fig, ax, bool(present), "loss", title or "Training loss and its terms", out_path)


def reward_positions(curves: Curves, out_path: str | os.PathLike, visibility: list[float] | None = None,
                     title: str = "") -> None:
    """Implicit reward ``β·(log π − log π_ref)`` of the chosen answer per list position, on one figure.

    LPOI's signature: the rewards spread apart in the order of visibility (position 0, the original
    image, on top; the fully hidden image at the bottom). The rejected answer's reward is dashed.
    """
    fig = _figure(6.4, 3.6)
    ax = fig.add_subplot()
    ks = sorted(int(m.group(1)) for n in curves if (m := _REWARD_K.match(n)))
    if not ks:
        _nothing(ax, "no per-position rewards logged")
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    for i, k in enumerate(ks):
        vis = f"{round(100 * visibility[k])} % visible" if visibility and k < len(visibility) else f"position {k}"
        _plot(ax, curves[f"reward_{k}"], color=cmap(i / max(1, len(ks) - 1) * 0.9), label=f"k={k} ({vis})")
    if "reward_rejected" in curves:
        _plot(ax, curves["reward_rejected"], color="tab:red", linestyle="--", label="rejected answer")
    if ks:
        ax.axhline(0.0, color="0.6", linewidth=0.8)
    _finish_curves(fig, ax, bool(ks), "reward of the chosen answer",
                   title or "Reward per list position (ordered by visibility when LPOI learns)", out_path)


GENERATIVE = (("CHAIR", "↓"), ("Cover", "↑"), ("Hal", "↓"), ("Cog", "↓"))
DISCRIMINATIVE = ("existence", "attribute", "state", "number", "action", "relation", "overall")


def amber_breakdown(amber: dict[str, Any] | None, out_path: str | os.PathLike, title: str = "") -> None:
    """AMBER by category: the generative metrics, and Accuracy / F1 per discriminative category."""
    fig = _figure(8.0, 3.4)
    left, right = fig.subplots(1, 2, width_ratios=(1, 2.2))
    gen = (amber or {}).get("generative") or {}
    if gen:
        shown = [(m, arrow) for m, arrow in GENERATIVE if m in gen]
        colors = ["tab:green" if arrow == "↑" else "tab:red" for _, arrow in shown]  # green: higher is better
        bars = left.bar([f"{m}\n{arrow}" for m, arrow in shown], [gen[m] for m, _ in shown], color=colors)
        left.bar_label(bars, fmt="%.1f", fontsize=8)
        left.tick_params(axis="x", labelsize=8)
        left.set_ylim(0, 105)
        left.set_ylabel("%")
        left.set_title("generative", fontsize=9)
    else:
        _nothing(left, "no generative answers")
    disc = (amber or {}).get("discriminative") or {}
    cats = [c for c in DISCRIMINATIVE if c in disc]
    if cats:
        import numpy as np

        x = np.arange(len(cats))
        for j, (metric, color) in enumerate((("Accuracy", "tab:blue"), ("F1", "tab:orange"))):
            bars = right.bar(x + (j - 0.5) * 0.38, [disc[c][metric] for c in cats], 0.38, label=f"{metric} ↑",
                             color=color)
            right.bar_label(bars, fmt="%.0f", fontsize=7)
        right.set_xticks(x, cats, fontsize=8)
        right.set_ylim(0, 110)
        right.legend(fontsize=8, loc="upper left", ncols=2)
        right.set_title("discriminative (yes/no), per category", fontsize=9)
    else:
        _nothing(right, "no yes/no answers")
    fig.suptitle(title or "AMBER", fontsize=10)
    save_png(fig, out_path)
