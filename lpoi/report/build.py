"""The report stage: read the run's outputs, write ``metrics/summary.json``, ``metrics/listgen.json``,
``report/REPORT.md`` and the figures.

Inputs are the files the DAG already makes (the score stages' metrics, the train stage's dvclive
folder, the list-generation folders) plus ``params.yaml`` and ``conf/``; nothing is recomputed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from lpoi.config import BENCHES
from lpoi.io import atomic_write_bytes, read_json, read_jsonl
from lpoi.report import figures
from lpoi.labels import label, model_names, random_models
from lpoi.report.markdown import ReportInputs, render
from lpoi.report.profile import changed_params
from lpoi.report.summary import build_summary
from lpoi.stage import write_metrics


@dataclass(frozen=True)
class ReportPaths:
    """Where the report stage reads and writes (``dvc.yaml`` passes every one)."""

    listgen_dirs: dict[str, Path]  # prepare, detect, segment, verify, lists -> stage folder
    prepare_metrics: Path
    scores: dict[str, Path]  # amber, objhal, mmhal -> metrics JSON
    train: Path  # dvclive folder: metrics.json + plots/metrics/*.tsv
    conf: Path
    listgen_out: Path
    summary_out: Path
    out_dir: Path  # REPORT.md and the PNGs
    world: Path | None = None  # the world_grid stage's table (a placeholder line unless world=shapes)
    world_metrics: Path | None = None  # its numbers (``{}`` unless world=shapes): means go into the summary


def _read(path: Path) -> dict | None:
    try:
        return read_json(path)
    except FileNotFoundError:
        return None


def paper_method(p) -> str:
    """The Table 1 method of this run: ``base`` when no adapter is evaluated, else ``train.method``."""
    return p.train.method if p.generate.use_adapter else "base"


def paper_row(p, table: str | os.PathLike | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """The paper's Table 1 row for this run's model and method (reported values only), and a note.

    Only real models (no tiny random build evaluated or judging) of the paper (a model in the table)
    on the full benchmarks (``bench.name == "full"``) are compared with the paper; ``table`` defaults
    to ``lpoi/report/paper_table1.json``.
    """
    if table:
        ref = read_json(table)
    else:
        with resources.as_file(resources.files("lpoi.report") / "paper_table1.json") as packaged:
            ref = read_json(packaged)
    rows = ref["rows"].get(p.model.name)
    if rows is None or random_models(p, ("vlm", "judge")):
        return None, None  # not a paper model, or random numbers that the paper's must never stand beside
    method = paper_method(p)
    if p.bench.name != "full":
        return None, f"Paper row not shown: `{p.model.name}` is a paper model, but the paper's numbers are on the " \
                     f"full benchmarks (this run: bench={p.bench.name})."
    row = rows.get(method)
    if row is None:
        return None, f"Paper row not shown: Table 1 has no `{method}` row for `{p.model.name}` " \
                     f"(it has {', '.join(rows)})."
    filled = {k: v for k, v in row.items() if v is not None}
    if not filled:
        return None, f"Paper row for `{p.model.name}` / `{method}` reports no value we measure."
    return filled, (f"Paper column: Table 1, `{p.model.name}` / `{method}`; Δ = this run − paper. "
                    f"Source: {ref['source']}.")


def build_report(paths: ReportPaths, p, raw_params: dict[str, Any], rows: int = 12,
                 paper_table: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write every output of the report stage; returns the summary."""
    from lpoi.report.listgen import run_report

    d = paths.listgen_dirs
    listgen = run_report(prepared_dir=d["prepare"], detect_dir=d["detect"], segment_dir=d["segment"],
                         verify_dir=d["verify"], lists_dir=d["lists"], prepare_metrics=paths.prepare_metrics,
                         out_path=paths.listgen_out, sheet_path=paths.out_dir / "contact_sheet.png",
                         rows=rows, labels=label(p, ("listgen",)))
    sources = {b: _read(paths.scores[b]) for b in BENCHES}
    sources["train"] = _read(paths.train / "metrics.json")
    sources["listgen"] = listgen
    sources["world"] = _read(paths.world_metrics) if paths.world_metrics else None
    roles = random_models(p)
    summary = build_summary(sources, bool(roles))
    write_metrics(paths.summary_out, summary)

    curves = figures.read_curves(paths.train / "plots" / "metrics")
    vis = _visibility(d["lists"])
    tag = f"{p.train.method}, {p.model.name}" + (" — tiny random model" if roles else "")
    figures.training_losses(curves, paths.out_dir / "train_loss.png", title=f"Training loss ({tag})")
    figures.reward_positions(curves, paths.out_dir / "train_rewards.png", visibility=vis,
                             title=f"Reward per list position ({tag})")
    figures.amber_breakdown(sources["amber"], paths.out_dir / "amber_categories.png", title=f"AMBER ({tag})")

    choices, changes = changed_params(raw_params, paths.conf)
    paper, note = paper_row(p, paper_table)
    page = render(ReportInputs(summary=summary, sources=sources, choices=choices, changes=changes,
                               models=model_names(p), random_roles=roles, method=p.train.method,
                               yes_no=p.amber.yes_no, discriminative=p.amber.discriminative, paper=paper,
                               paper_note=note, world=_world_table(paths.world)))
    atomic_write_bytes(paths.out_dir / "REPORT.md", page.encode("utf-8"))
    return summary


def _world_table(path: Path | None) -> str | None:
    """The miniature's comparison (``metrics/world.md``) when it ran; None for world: none's placeholder."""
    if path is None or not Path(path).is_file():
        return None
    text = Path(path).read_text(encoding="utf-8")
    return text if text.lstrip().startswith("|") else None


def _visibility(lists_dir: Path) -> list[float] | None:
    """The visibility of each list position (the first manifest row's), for the reward figure's legend."""
    path = Path(lists_dir) / "lists.jsonl"
    if not path.is_file():
        return None
    for row in read_jsonl(path):
        return row.get("visibility")
    return None
