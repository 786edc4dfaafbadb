"""The report's figures (matplotlib, PNG, registered as DVC image plots so ``dvc plots diff`` shows runs
side by side offline): training losses, reward per list position, the AMBER breakdown.

Every figure is written with deterministic bytes (Agg backend, no PNG timestamp) and atomically, and
returned (for tests and notebooks). Every colour code has its legend or colour bar.
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


LOSS_NAMES = {"loss": "total", "loss_dpo": "DPO (text pair)", "loss_list": "list (Plackett–Luce)",
              "loss_anchor": "anchor"}


def training_losses(curves: Curves, out_path: str | os.PathLike, title: str = ""):
    """The total loss and each of its terms (DPO, list, anchor) on a panel of its own, against the step.

    One panel each because the terms live on different scales: the list term of K=5 starts near
    4·log 2 + ... ≈ 4.8 while DPO and anchor start at log 2 ≈ 0.69, so on a shared axis their movement
    is invisible. Each panel's y range is its own; the x axis (optimizer step) is shared.
    """
    present = [n for n in ("loss", *LOSS_PARTS) if n in curves]
    fig = _figure(7.2, 4.8 if len(present) > 2 else 3.0)
    if not present:
        ax = fig.add_subplot()
        _nothing(ax, "no loss curves logged")
        ax.set_title(title or "Training loss and its terms", fontsize=10)
        save_png(fig, out_path)
        return fig
    cols = 2 if len(present) > 1 else 1
    rows = (len(present) + cols - 1) // cols
    axes = fig.subplots(rows, cols, sharex=True, squeeze=False).ravel()
    colors = {"loss": "black", "loss_dpo": "tab:blue", "loss_list": "tab:orange", "loss_anchor": "tab:green"}
    for ax, n in zip(axes, present):
        _plot(ax, curves[n], color=colors[n], linewidth=2.0 if n == "loss" else 1.5)
        ax.set_title(LOSS_NAMES[n], fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    for ax in axes[len(present):]:
        ax.set_axis_off()
    for ax in axes[-cols:]:
        ax.set_xlabel("optimizer step", fontsize=8.5)
    for ax in axes[::cols]:
        ax.set_ylabel("loss", fontsize=8.5)
    fig.suptitle(title or "Training loss and its terms", fontsize=10)
    save_png(fig, out_path)
    return fig


def _visibility_colors(n: int):
    """``n`` colours of one sequential map, most visible darkest: the order reads off the colour alone."""
    import matplotlib

    cmap = matplotlib.colormaps["plasma"]
    return [cmap(0.85 * i / max(1, n - 1)) for i in range(n)], cmap


def reward_positions(curves: Curves, out_path: str | os.PathLike, visibility: list[float] | None = None,
                     title: str = ""):
    """Implicit reward ``β·(log π − log π_ref)`` of the chosen answer per list position.

    Left: against the optimizer step, one line per position in a sequential colour map (dark = the
    original image, light = the object fully hidden; a colour bar gives the scale), the rejected answer
    dashed red. Right: the reward against the visibility of the object at the first and the last logged
    step -- LPOI's signature is that the line tilts (more visible, more reward), as in the miniature's plot.
    """
    ks = sorted(int(m.group(1)) for n in curves if (m := _REWARD_K.match(n)))
    fig = _figure(9.2, 3.8)
    left, right = fig.subplots(1, 2, width_ratios=(1.6, 1))
    if not ks:
        _nothing(left, "no per-position rewards logged")
        _nothing(right, "")
        fig.suptitle(title or "Reward per list position", fontsize=10)
        save_png(fig, out_path)
        return fig
    vis = [visibility[k] if visibility and k < len(visibility) else 1 - k / max(1, len(ks) - 1) for k in ks]
    colors, cmap = _visibility_colors(len(ks))
    for k, v, c in zip(ks, vis, colors):
        _plot(left, curves[f"reward_{k}"], color=c, label=f"k={k} ({round(100 * v)} % visible)")
    if "reward_rejected" in curves:
        _plot(left, curves["reward_rejected"], color="tab:red", linestyle="--", label="rejected answer")
    left.axhline(0.0, color="0.6", linewidth=0.8)
    left.set_xlabel("optimizer step")
    left.set_ylabel("reward of the answer")
    left.grid(alpha=0.3)
    left.legend(fontsize=7, loc="best")
    left.set_title("during training", fontsize=9)

    first_step, last_step = curves[f"reward_{ks[0]}"][0][0], curves[f"reward_{ks[0]}"][-1][0]
    for step, style in ((first_step, {"color": "0.6", "linestyle": ":"}), (last_step, {"color": "black"})):
        ys = [dict(curves[f"reward_{k}"]).get(step) for k in ks]
        if None in ys:
            continue
        right.plot(vis, ys, label=f"step {step:g}", marker="o", markersize=0, **style)
        right.scatter(vis, ys, c=colors, s=30, zorder=3, edgecolors="none")
    right.invert_xaxis()  # the list's order: most visible first
    right.axhline(0.0, color="0.6", linewidth=0.8)
    right.set_xlabel("visibility of the object in image k")
    right.set_title("by visibility (LPOI: higher when more visible)", fontsize=9)
    right.grid(alpha=0.3)
    right.legend(fontsize=7, loc="best")
    import matplotlib

    bar = fig.colorbar(matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, 1),
                                                    cmap=matplotlib.colors.ListedColormap(colors[::-1])),
                       ax=right, fraction=0.08, pad=0.02)
    bar.set_label("visibility (colour of position k)", fontsize=7.5)
    bar.set_ticks([(i + 0.5) / len(ks) for i in range(len(ks))],
                  labels=[f"{round(100 * v)} %" for v in vis[::-1]], fontsize=7)
    fig.suptitle(title or "Reward per list position", fontsize=10)
    save_png(fig, out_path)
    return fig


GENERATIVE = (("CHAIR", "↓"), ("Cover", "↑"), ("Hal", "↓"), ("Cog", "↓"))
DISCRIMINATIVE = ("existence", "attribute", "state", "number", "action", "relation", "overall")


def amber_breakdown(amber: dict[str, Any] | None, out_path: str | os.PathLike, title: str = ""):
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
        left.set_ylim(0, 128)  # headroom for the legend above a 100 % bar
        left.set_yticks(range(0, 101, 20))
        left.set_ylabel("%")
        left.set_title("generative", fontsize=9)
        from matplotlib.patches import Patch

        left.legend(handles=[Patch(color="tab:green", label="↑ higher is better"),
                             Patch(color="tab:red", label="↓ lower is better")], fontsize=7, loc="upper right")
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
    return fig
