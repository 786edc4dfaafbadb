"""Runs side by side: the summary of each, which way is better, and whether each run did better or worse.

    python -m lpoi.report.compare                 # every row of `dvc exp show`: workspace, baseline, experiments
    python -m lpoi.report.compare main exp-1a2b3  # those runs (names or revision prefixes), the first one the reference
    lpoi-compare ...                              # the same, as installed by pip

Built on ``dvc exp show --json`` (run in the current folder, or read from ``--json FILE``): the metrics of
``metrics/summary.json`` by their dotted keys, each marked with its direction from the one table in
:mod:`lpoi.report.summary` (CHAIR ↓, Cover ↑, ...), and for every run after the first the difference to
the first with ``better`` / ``worse`` (``=`` when equal; counts, without a direction, get neither). The
params that differ between the runs are printed above the table, so a column says what was changed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpoi.report.summary import direction, flat

__all__ = ["Run", "compare_table", "load_runs", "main", "select"]

SUMMARY = "metrics/summary.json"


@dataclass(frozen=True)
class Run:
    name: str  # workspace, the branch, or the experiment's name
    rev: str
    params: dict[str, Any]  # flat params.yaml
    metrics: dict[str, Any]  # flat summary.json (empty when the run has none)


def load_runs(exp_show: Sequence[Mapping[str, Any]]) -> list[Run]:
    """Every row of ``dvc exp show --json`` (workspace, each baseline, its experiments), in its order."""
    runs: list[Run] = []

    def add(entry: Mapping[str, Any]) -> None:
        data = entry.get("data") or {}
        params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
        metrics = ((data.get("metrics") or {}).get(SUMMARY) or {}).get("data") or {}
        rev = str(entry.get("rev") or "")
        runs.append(Run(entry.get("name") or (rev if rev == "workspace" else rev[:7]), rev, flat(params), flat(metrics)))

    if not isinstance(exp_show, list):
        raise ValueError(f"dvc exp show --json: expected a list of rows, got {type(exp_show).__name__}")
    for base in exp_show:
        add(base)
        for group in base.get("experiments") or []:
            for entry in group.get("revs") or []:
                add(entry)
    return runs


def select(runs: Sequence[Run], wanted: Sequence[str]) -> list[Run]:
    """The runs named by ``wanted`` (a name, or a prefix of at least 4 of the revision), in that order."""
    if not wanted:
        return list(runs)
    out = []
    for w in wanted:
        hit = [r for r in runs if r.name == w] or [r for r in runs if len(w) >= 4 and r.rev.startswith(w)]
        if not hit:
            known = ", ".join(dict.fromkeys(r.name for r in runs))
            raise ValueError(f"no run named {w!r} in `dvc exp show` (known: {known})")
        out.append(hit[0])
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _delta(ref: Any, v: Any, arrow: str) -> str:
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (ref, v))
    if not numeric:
        return ""
    d = v - ref
    if d == 0:
        return "="
    verdict = ""
    if arrow:
        verdict = " better" if (d < 0) == (arrow == "↓") else " worse"
    return f"{d:+.4g}{verdict}"


def compare_table(runs: Sequence[Run], all_metrics: bool = False) -> str:
    """The text table: params that differ, then one line per metric (``all_metrics``: also unchanged ones)."""
    if not runs:
        return "no runs to compare\n"
    keys = list(dict.fromkeys(k for r in runs for k in r.metrics))
    if not all_metrics and len(runs) > 1:
        keys = [k for k in keys if len({json.dumps(r.metrics.get(k)) for r in runs}) > 1] or keys
    lines = []
    pkeys = sorted({k for r in runs for k in r.params})
    changed = [k for k in pkeys if len({json.dumps(r.params.get(k)) for r in runs}) > 1]
    if changed:
        lines.append("params that differ:")
        width = max(map(len, changed))
        for k in changed:
            lines.append(f"  {k:<{width}}  " + "  ".join(f"{r.name}={_fmt(r.params.get(k))}" for r in runs))
        lines.append("")
    if not keys:
        lines.append(f"no metrics in {SUMMARY} for these runs (has the report stage run?)")
        return "\n".join(lines) + "\n"
    ref = runs[0]
    head = ["metric", *[r.name + (" (reference)" if i == 0 and len(runs) > 1 else "") for i, r in enumerate(runs)]]
    rows = []
    for k in keys:
        arrow = direction(k)
        cells = [f"{k} {arrow}".rstrip(), _fmt(ref.metrics.get(k))]
        for r in runs[1:]:
            d = _delta(ref.metrics.get(k), r.metrics.get(k), arrow)
            cells.append(_fmt(r.metrics.get(k)) + (f"  ({d})" if d else ""))
        rows.append(cells)
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    for row in [head, ["-" * w for w in widths], *rows]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    if not all_metrics and len(runs) > 1:
        lines.append("")
        lines.append("(metrics equal in every run are left out; --all shows them)")
    return "\n".join(lines) + "\n"


def _exp_show() -> list:
    try:
        out = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise SystemExit("error: `dvc` is not on PATH (pip install dvc)") from None
    if out.returncode != 0:
        raise SystemExit(f"error: `dvc exp show --json` failed: {out.stderr.strip().splitlines()[-1:] or out.returncode}")
    return json.loads(out.stdout)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lpoi-compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("revs", nargs="*", metavar="REV", help="runs to compare (default: every row of `dvc exp show`)")
    ap.add_argument("--json", type=Path, help="read a saved `dvc exp show --json` instead of running it")
    ap.add_argument("--all", dest="all_metrics", action="store_true", help="show metrics that are equal in every run too")
    a = ap.parse_args(argv)
    try:
        data = json.loads(a.json.read_text(encoding="utf-8")) if a.json else _exp_show()
        runs = select(load_runs(data), a.revs)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(compare_table(runs, a.all_metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
