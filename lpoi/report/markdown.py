"""``report/REPORT.md``: one screen a researcher can show — results (with the paper's row for the paper
profiles), the figures, what differs from the defaults, the judge, and every warning."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lpoi.report.summary import ROWS, flat

RANDOM_BANNER = ("**Tiny random models** ({roles}): these numbers only show that the pipeline runs end to end; "
                 "they say nothing about LPOI.")
FIGURES = {
    "train_loss": "training loss and its terms",
    "train_rewards": "reward per list position",
    "contact_sheet": "the lists (object hidden step by step)",
    "amber_categories": "AMBER per category",
}


@dataclass
class ReportInputs:
    """Everything the page shows, already loaded (see :func:`lpoi.report.build.build_report`)."""

    summary: Mapping[str, Any]
    sources: Mapping[str, Any]  # amber / objhal / mmhal / train / listgen metrics dicts (or None)
    choices: Mapping[str, str]  # profile: group -> option
    changes: Sequence[tuple[str, Any, Any]]  # (key, profile default, this run)
    models: Mapping[str, str]  # role -> model name
    random_roles: Sequence[str]
    method: str
    yes_no: str
    paper: Mapping[str, Any] | None = None  # summary key -> the paper's value (filled ones only)
    paper_note: str | None = None
    world: str | None = None  # the miniature's comparison table (metrics/world.md) when world=shapes ran
    discriminative: str = "generate"  # amber.discriminative: how the yes/no items were answered


def fmt(value: Any, digits: int) -> str:
    """A table cell: ``–`` for a missing value, else the value at the summary's precision."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:d}" if digits == 0 and isinstance(value, int) else f"{value:.{digits}f}"


def cell(row, value: Any) -> str:
    """A results-table cell for one :data:`~lpoi.report.summary.ROWS` entry: rates as percentages."""
    if row.unit == "%" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{100 * value:.1f} %"
    return fmt(value, row.digits)


def _signed(row, diff: float) -> str:
    """The Δ column: rates in percentage points, the rest at the summary's precision."""
    if row.unit == "%":
        return f"{100 * diff:+.1f} pp"
    return f"{diff:+.{row.digits}f}"


def results_table(summary: Mapping[str, Any], paper: Mapping[str, Any] | None) -> list[str]:
    """The results table, one row per :data:`~lpoi.report.summary.ROWS` entry, values from ``summary``."""
    values = flat(summary)
    head = "| | metric | this run |" + (" paper (Table 1) | Δ |" if paper else "")
    lines = [head, "|---|---|---:|" + ("---:|---:|" if paper else "")]
    last = None
    for row in ROWS:
        group = f"**{row.group}**" if row.group != last else ""
        last = row.group
        line = f"| {group} | {row.name} {row.better} | {cell(row, values.get(row.key))} |".replace("  |", " |")
        if paper:
            ours, theirs = values.get(row.key), paper.get(row.key)
            both = isinstance(ours, (int, float)) and isinstance(theirs, (int, float))
            diff = round(ours - theirs, row.digits) + 0.0 if both else None
            line += f" {cell(row, theirs)} | {'–' if diff is None else _signed(row, diff)} |"
        lines.append(line)
    return lines


def table_values(page: str) -> dict[str, str]:
    """``{"CHAIR ↓": "91.7", ...}``: metric name → this run's cell, read back from a page's results table."""
    out = {}
    for line in page.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and line.startswith("|") and cells[1] and cells[1] != "metric" and set(cells[1]) - set("-"):
            out[cells[1]] = cells[2]
    return out


def table_mismatches(page: str, summary: Mapping[str, Any]) -> list[str]:
    """Rows of the page's results table that do not show ``summary``'s value (empty: the table is right)."""
    cells, values = table_values(page), flat(summary)
    bad = []
    for row in ROWS:
        name = f"{row.name} {row.better}".strip()
        want = cell(row, values.get(row.key))
        if cells.get(name) != want:
            bad.append(f"{row.key}: table {cells.get(name)!r}, summary {want!r}")
    return bad


def _warnings(r: ReportInputs) -> list[str]:
    s, out = r.sources, []  # (tiny random models: the banner at the top says it)
    for bench, label in (("amber", "AMBER"), ("objhal", "Object HalBench"), ("mmhal", "MMHal-Bench")):
        m = s.get(bench) or {}
        if m.get("n_generation_errors"):
            out.append(f"{label}: {m['n_generation_errors']} answer(s) not generated ({_counts(m.get('generation_errors'))}); "
                       "left out of its metrics")
    mm, ob, am = s.get("mmhal") or {}, s.get("objhal") or {}, s.get("amber") or {}
    if mm.get("n_judge_errors"):
        out.append(f"MMHal-Bench: the judge failed on {mm['n_judge_errors']} item(s) ({_counts(mm.get('judge_errors'))}); "
                   "left out of the means")
    if mm.get("n_rating_unparsed"):
        out.append(f"MMHal-Bench: {mm['n_rating_unparsed']} of {mm.get('n', '?')} judge replies hold no single "
                   "'Rating: s' and score 0 (the official rule)")
    if ob.get("n_extract_errors"):
        out.append(f"Object HalBench: object extraction failed for {ob['n_extract_errors']} response(s)")
    if am.get("n_unparsed"):
        out.append(f"AMBER: {am['n_unparsed']} of {am.get('n_discriminative', '?')} yes/no answers are not exactly "
                   f"Yes/No and count as wrong (amber.yes_no: {r.yes_no})")
    if am.get("similarity") == "exact":
        out.append("AMBER: spaCy en_core_web_lg is not installed, so nouns match exactly (no near-synonyms); "
                   "CHAIR/Cover/Cog can differ from published numbers")
    return out


def _judge_line(r: ReportInputs) -> str:
    """Who scored what: the judges and extractors that produced the numbers, and AMBER's rules (the authors
    used MMHal gpt-4-0314, Object HalBench extraction gpt-3.5-turbo-0613, spaCy en_core_web_lg)."""
    parts = []
    for bench, label in (("mmhal", "MMHal-Bench"), ("objhal", "Object HalBench objects")):
        m = r.sources.get(bench) or {}
        if m.get("judge"):
            date = m.get("judge_date") or "local model, no request sent"
            parts.append(f"{label}: `{m['judge']}` ({date})")
        elif bench == "objhal" and m.get("extractor") == "rules":
            parts.append(f"{label}: rule-based extraction (objhal.extractor: rules, no LLM)")
    am = r.sources.get("amber") or {}
    if am.get("similarity"):
        nouns = "spaCy en_core_web_lg similarity" if am["similarity"] == "spacy-lg" else "exact noun matching"
        yes_no = ("yes/no by Yes vs No next-token logits" if r.discriminative == "logits" else
                  f"generated yes/no replies stored under amber.yes_no: {r.yes_no}")
        parts.append(f"AMBER: {nouns}, {yes_no}")
    return "; ".join(parts) or "no judge used"


def _counts(by_reason: Mapping[str, int] | None) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted((by_reason or {}).items())) or "none"


def render(r: ReportInputs) -> str:
    """The whole page as Markdown (figures are referenced by file name, beside REPORT.md)."""
    profile = " · ".join(f"{g}={c}" for g, c in r.choices.items())
    models = ", ".join(f"{role} `{name}`" for role, name in r.models.items())
    lg = r.sources.get("listgen") or {}
    lines = ["# LPOI run report", ""]
    if r.world:  # first, and above the tiny-random banner: the world's models are trained, not random
        lines += ["## The miniature (`world=shapes`): every method tuned alike, tested over bases and seeds", "",
                  "A real study on base VLMs pretrained on the synthetic shapes world (docs/miniature.md); the "
                  "embedded default's tiny random models below play no part in it.", "",
                  r.world.strip(), "", "![held-out list log-ratios](../metrics/world_rewards.png)",
                  "![Cog and CHAIR against Cover](../metrics/world_pareto.png)", "",
                  "## The embedded default run", ""]
    if r.random_roles:
        lines += ["> " + RANDOM_BANNER.format(roles=", ".join(r.random_roles)), ""]
    lines += [f"Profile {profile} · method `{r.method}` · {models}.",
              f"{lg.get('records_out', '?')} of {lg.get('records_in', '?')} records prepared, "
              f"{lg.get('lists_out', '?')} lists built; rejected: {_counts(lg.get('rejects'))}.", "",
              "## Results", ""]
    lines += results_table(r.summary, r.paper)
    if r.paper_note:
        lines += ["", r.paper_note]
    lines += ["", "## Figures", ""]
    lines += [" ".join(f"![{FIGURES[f]}]({f}.png)" for f in FIGURES), ""]
    changed = [f"`{k}`: {d!r} → {v!r}" for k, d, v in r.changes]
    lines += ["## Params that differ from the profile's defaults", "",
              ("; ".join(changed) if changed else "none (the profile as composed from `conf/`)"), "",
              "## Judge", "", _judge_line(r), "", "## Warnings", ""]
    lines += [f"- {w}" for w in _warnings(r)] or ["none"]
    return "\n".join(lines) + "\n"
