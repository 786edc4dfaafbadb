"""The study's table in README.md and docs/miniature.md, generated from ``metrics/world.json`` (never by hand).

``python -m lpoi.world.readme --metrics metrics/world.json README.md docs/miniature.md`` rewrites the text
between ``<!-- world-table:start -->`` and ``<!-- world-table:end -->`` in each file; ``--check`` only says
whether a file's block differs from the json (exit 1), which a test or CI can run.

The tables print every number with its 95 % interval and mark the differences whose paired interval
excludes 0; they rank nothing and say nothing about which method is better.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path

from lpoi.io import atomic_write_text

__all__ = ["COLUMNS", "END", "METHOD_LABELS", "START", "main", "replace_block", "table_markdown"]

START = "<!-- world-table:start -->"
END = "<!-- world-table:end -->"
COLUMNS = (  # (metric key, header with the direction of "better")
    ("CHAIR", "CHAIR ↓"), ("Cover", "Cover ↑"), ("Hal", "Hal ↓"), ("Cog", "Cog ↓"),
    ("Accuracy", "yes/no Acc ↑"), ("partner_no", "partner “No” ↑"), ("present_yes", "present “Yes” ↑"),
)
METHOD_LABELS = {
    "base": "base (pretrained)",
    "dpo": "DPO",
    "dpo_anchor": "DPO + anchor",
    "mdpo": "mDPO (hidden) ≡ LPOI K=2",
    "mdpo_crop": "mDPO (crop)",
    "lpoi": "LPOI",
    "lpoi_k3": "LPOI K=3",
    "lpoi_k5": "LPOI K=5",
    "lpoi_no_anchor": "LPOI − anchor",
    "list_only": "list term only",
}
REFERENCE = "lpoi"
_NOT_METHODS = ("design", "base", "insert")


def _label(m: str) -> str:
    return METHOD_LABELS.get(m, m)


def _ci(s: object, where: str, signed: bool = False) -> str:
    if not isinstance(s, Mapping) or not all(k in s for k in ("mean", "lo", "hi")):
        raise ValueError(f"world.json: {where} must be an object with mean, lo, hi; got {s!r}")
    vals = [s["mean"], s["lo"], s["hi"]]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in vals):
        raise ValueError(f"world.json: {where}: mean, lo, hi must be numbers, got {vals}")
    if not all(math.isfinite(v) for v in vals):
        return "n/a"
    f = "{:+.1f}" if signed else "{:.1f}"
    return f"{f.format(vals[0])} [{f.format(vals[1])}, {f.format(vals[2])}]"


def _get(d: Mapping, key: str, where: str):
    if not isinstance(d, Mapping) or key not in d:
        raise ValueError(f"world.json: {where} has no {key!r}")
    return d[key]


def _row(label: str, stats: Mapping, where: str) -> str:
    return f"| {label} | " + " | ".join(_ci(_get(stats, k, where), f"{where}.{k}") for k, _ in COLUMNS) + " |"


def _diff_row(label: str, stats: Mapping, where: str) -> str:
    cells = []
    for k, _ in COLUMNS:
        s = _get(stats, k, where)
        text = _ci(s, f"{where}.{k}", signed=True)
        excludes = text != "n/a" and (s["lo"] > 0 or s["hi"] < 0)
        cells.append(f"**{text}**" if excludes else text)
    return f"| {label} | " + " | ".join(cells) + " |"


def _head(first: str) -> list[str]:
    return [f"| {first} | " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 1)]


def _config(c: object) -> str:
    if not isinstance(c, Mapping):
        return str(c)
    names = {"lr": "lr", "epochs": "epochs", "beta": "β"}
    return ", ".join(f"{names.get(k, k)} {v:g}" if isinstance(v, float) else f"{names.get(k, k)} {v}"
                     for k, v in c.items())


def table_markdown(world_json: Mapping) -> str:
    """The study's tables from ``metrics/world.json`` (the whole file or its ``world`` object): test metrics
    with 95 % intervals per method (base first, then the json's order), the paired differences to LPOI (bold:
    the interval excludes 0), the other rejection mode when present, and the design in one line."""
    w = world_json.get("world", world_json) if isinstance(world_json, Mapping) else None
    if not isinstance(w, Mapping):
        raise ValueError("world.json: expected an object (with a 'world' object)")  # noqa: TRY004 - the CLI's one-line errors
    design = _get(w, "design", "world")
    base = _get(w, "base", "world")
    methods = [m for m in w if m not in _NOT_METHODS]
    if not methods:
        raise ValueError("world.json: world holds no method")
    ref = _label(REFERENCE)
    lines = _head("model")
    lines.append(_row(_label("base"), _get(base, "test", "world.base"), "world.base.test"))
    for m in methods:
        lines.append(_row(_label(m), _get(w[m], "test", f"world.{m}"), f"world.{m}.test"))
    lines += ["", (f"Differences to {ref} (method − {ref}, paired 95 % intervals over scenes and (base, seed) "
                   "cells; **bold**: the interval excludes 0):"), ""]
    lines += _head(f"method − {ref}")
    for m in methods:
        if m != REFERENCE:
            lines.append(_diff_row(_label(m), _get(w[m], "vs_lpoi", f"world.{m}"), f"world.{m}.vs_lpoi"))
    insert = w.get("insert")
    if isinstance(insert, Mapping) and insert:
        lines += ["", ("With the other rejection (insertion: the chosen answer plus an absent object), at each "
                       "method's selected configuration:"), ""]
        lines += _head("model (insertion)")
        for m, r in insert.items():
            lines.append(_row(_label(m), _get(r, "test", f"world.insert.{m}"), f"world.insert.{m}.test"))
        diffs = [(m, r) for m, r in insert.items() if m != REFERENCE]
        if diffs:
            lines += ["", f"Differences to {ref} with insertion (**bold**: the paired interval excludes 0):", ""]
            lines += _head(f"method − {ref}")
            lines += [_diff_row(_label(m), _get(r, "vs_lpoi", f"world.insert.{m}"), f"world.insert.{m}.vs_lpoi")
                      for m, r in diffs]
    d = {k: _get(design, k, "world.design") for k in ("cells", "bases", "seeds_per_base", "test_scenes")}
    extra = "".join(f", {design[k]} {name}" for k, name in (("val_scenes", "validation scenes"),
                                                               ("n_boot", "bootstrap resamples"),
                                                               ("configs_per_method", "configurations tuned per method"))
                    if k in design)
    lines += ["", f"Per method: {d['cells']} cells ({d['bases']} bases × {d['seeds_per_base']} seeds), "
              f"{d['test_scenes']} test scenes{extra}. Mean over cells; 95 % percentile intervals. "
              "Selected on validation: " + "; ".join(
                  f"{_label(m)}: {_config(_get(w[m], 'selected', f'world.{m}'))}" for m in methods) + "."]
    return "\n".join(lines) + "\n"


def replace_block(text: str, table: str, start: str = START, end: str = END) -> str:
    """``text`` with what lies between the ``start`` and ``end`` markers replaced by ``table``; each marker
    must appear exactly once, start before end (ValueError naming the marker otherwise)."""
    for marker in (start, end):
        n = text.count(marker)
        if n != 1:
            raise ValueError(f"marker {marker!r} appears {n} times (expected once)")
    i, j = text.index(start), text.index(end)
    if j < i:
        raise ValueError(f"marker {end!r} comes before {start!r}")
    return text[: i + len(start)] + "\n" + table.rstrip("\n") + "\n" + text[j:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lpoi.world.readme",
                                description="Write the world study's table from metrics/world.json into the "
                                            f"files' {START} ... {END} blocks.")
    p.add_argument("--metrics", required=True, help="metrics/world.json")
    p.add_argument("files", nargs="+", help="Markdown files holding the markers (e.g. README.md docs/miniature.md)")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file's block differs")
    a = p.parse_args(argv)
    try:
        try:
            data = json.loads(Path(a.metrics).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{a.metrics}: {e}") from None
        table = table_markdown(data)
        stale = []
        for f in a.files:
            try:
                text = Path(f).read_text(encoding="utf-8")
            except OSError as e:
                raise ValueError(f"{f}: {e.strerror or e}") from None
            try:
                new = replace_block(text, table)
            except ValueError as e:
                raise ValueError(f"{f}: {e}") from None
            if new != text:
                stale.append(f)
                if not a.check:
                    atomic_write_text(f, new)
    except ValueError as e:
        print(f"lpoi.world.readme: {e}", file=sys.stderr)
        return 2
    if a.check and stale:
        print(f"lpoi.world.readme: the world table in {', '.join(stale)} differs from {a.metrics}; run "
              f"`python -m lpoi.world.readme --metrics {a.metrics} {' '.join(a.files)}`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
