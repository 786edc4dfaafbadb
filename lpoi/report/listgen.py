"""List-generation report: the contact sheet (a DVC image plot) and ``metrics/listgen.json``.

Row shapes taken by :func:`listgen_metrics` (plain dicts; any iterable, read once, so they can stream
from JSONL files; extra keys are ignored):

* ``prepared_summary``: the dict :func:`lpoi.listgen.prepare.run_prepare` returns
  (``records_in``, ``records_out``, ``rejects_by_reason``).
* ``detect_rows``: one per sample, ``{"candidates": [{"source": ...}, ...], "object": {"source": ...} | None}``
  — every text candidate, and the object finally chosen (``None``: nothing detected; ``source`` may
  be ``"random"`` for the fallback).
* ``segment_rows``: one per sample, ``{"mask": "sam" | "bbox" | None}`` (``None``/missing: no mask).
* ``verify_rows``: one per sample, ``{"verified": true | false | null, "tries": int (optional)}``.
* ``lists_rows``: manifest rows; the hidden-area share is read from ``row["object"]["mask_area"]``
  (the lists manifest contract) or ``row["mask_area"]`` (an :func:`~lpoi.listgen.interpolate.iter_build_lists`
  entry); rows with ``"error"`` count as failures.

Undefined rates (no denominator, e.g. verify disabled) are ``null``, never a made-up 0.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["SheetRow", "contact_sheet", "contact_sheet_size", "listgen_metrics", "run_report", "sheet_title"]

CELL_IN = 1.3  # inches per list image (figures are drawn at DPI px per inch)
LABEL_IN = 2.4  # inches for the row labels
HEADER_IN = 0.75  # title, legend and column headers
DPI = 100
BOX_COLOR = "#00c000"


class SheetRow(NamedTuple):
    """One sample of the contact sheet: its list images (most visible first) and what labels the row."""

    images: Sequence[str | os.PathLike]
    visibility: Sequence[float] | None  # per image, 1.0 -> 0.0 (None: k / (L - 1) steps)
    box: Sequence[float] | None  # the object's box in original-image pixels, drawn on column 0
    phrase: str
    id: str
    source: str | None = None  # where the object phrase came from (chosen_first, question, random, ...)
    verified: bool | None = None


def contact_sheet_size(n_rows: int, n_cols: int) -> tuple[int, int]:
    """(width, height) in px of a sheet of ``n_rows`` samples x ``n_cols`` list positions."""
    return (round((LABEL_IN + max(1, n_cols) * CELL_IN) * DPI),
            round((HEADER_IN + max(1, n_rows) * CELL_IN) * DPI))


def _visibility_headers(rows: Sequence[SheetRow], n_cols: int) -> list[str]:
    vis = next((r.visibility for r in rows if r.visibility and len(r.visibility) == n_cols), None)
    if vis is None:
        vis = [1 - k / (n_cols - 1) for k in range(n_cols)] if n_cols > 1 else [1.0]
    return [f"{round(100 * v)} % visible" if k == 0 else f"{round(100 * v)} %" for k, v in enumerate(vis)]


def _row_label(r: SheetRow, width: int = 24) -> str:
    import textwrap

    phrase = textwrap.wrap(f"“{r.phrase or '(no phrase)'}”", width=width)
    if len(phrase) > 2:  # two lines at most, and say that it was cut
        phrase = [phrase[0], textwrap.shorten(phrase[1] + " " + phrase[2], width=width, placeholder=" …")]
    verified = {True: "yes", False: "no", None: "not checked"}[r.verified]
    lines = [textwrap.shorten(str(r.id), width=width, placeholder="…"), *phrase,
             f"source: {r.source or '?'}", f"verified: {verified}"]
    return "\n".join(lines)


def _thumbnail(path: Path, px: int):
    """RGB array of the image scaled to fit ``px``, and the original (width, height)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        size = im.size
        im.thumbnail((px, px), Image.Resampling.BILINEAR)
        return np.asarray(im), size


def sheet_title(shown: int, total: int) -> str:
    """The contact sheet's title, saying how many of the run's lists it shows."""
    head = "LPOI lists: the object is hidden step by step"
    return f"{head} ({shown} of {total} list{'s' if total != 1 else ''} shown)" if shown else head


def contact_sheet(rows: Iterable[SheetRow], out_path: str | os.PathLike, max_rows: int = 16,
                  total: int | None = None) -> tuple[int, int]:
    """Draw the first ``max_rows`` samples' lists as a labelled grid PNG; returns its (width, height).

    Rows = samples, labelled on the left with id, object phrase, phrase source and the verifier's
    verdict; columns = list positions with their visibility as headers (100 % → 0 %). The object's box
    is drawn in green on the original (column 0); the legend says so. The title says how many of the
    run's ``total`` lists (default: the rows given) are shown, e.g. "12 of 24 lists shown". With no
    rows, a sheet saying "no lists" is written (the DVC plot must exist). Deterministic bytes (no PNG
    timestamp), atomic.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from lpoi.report.figures import save_png

    rows = list(rows)
    total = len(rows) if total is None else max(total, 0)
    rows = rows[: max(0, max_rows)]
    n_cols = max((len(r.images) for r in rows), default=1)
    w_px, h_px = contact_sheet_size(len(rows), n_cols)
    fig = Figure(figsize=(w_px / DPI, h_px / DPI), dpi=DPI)
    W, H = w_px / DPI, h_px / DPI
    fig.text(0.01, 1 - 0.08 / H, sheet_title(len(rows), total), fontsize=11, weight="bold", va="top")
    fig.text(0.01, 1 - 0.32 / H, "green box: the object found by detection (on the original image)",
             fontsize=8.5, color=BOX_COLOR, va="top")
    if not rows:
        fig.text(0.5, 0.4, "no lists", ha="center", fontsize=12)
    headers = _visibility_headers(rows, n_cols)
    for c, text in enumerate(headers):
        fig.text((LABEL_IN + (c + 0.5) * CELL_IN) / W, 1 - (HEADER_IN - 0.08) / H, text, ha="center",
                 va="bottom", fontsize=9)
    for r_i, row in enumerate(rows):
        top = HEADER_IN + r_i * CELL_IN
        fig.text(0.08 / W, 1 - (top + 0.1) / H, _row_label(row), fontsize=8, va="top", family="DejaVu Sans")
        for c, path in enumerate(row.images):
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"contact sheet: list image not found: {path} (sample {row.id})")
            img, (w, h) = _thumbnail(path, int(CELL_IN * DPI))
            ax = fig.add_axes(((LABEL_IN + c * CELL_IN + 0.04) / W, 1 - (top + CELL_IN - 0.04) / H,
                               (CELL_IN - 0.08) / W, (CELL_IN - 0.08) / H))
            ax.imshow(img, extent=(0, w, h, 0), interpolation="bilinear")
            side = max(w, h)  # letterbox: the image centred in a square cell
            ax.set_xlim((w - side) / 2, (w + side) / 2)
            ax.set_ylim((h + side) / 2, (h - side) / 2)
            ax.set_axis_off()
            if c == 0 and row.box is not None:
                x0, y0, x1, y1 = (float(v) for v in row.box)
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=BOX_COLOR, linewidth=1.8))
    save_png(fig, out_path, dpi=DPI)
    return w_px, h_px


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def listgen_metrics(
    prepared_summary: dict[str, Any],
    detect_rows: Iterable[dict[str, Any]],
    segment_rows: Iterable[dict[str, Any]],
    verify_rows: Iterable[dict[str, Any]],
    lists_rows: Iterable[dict[str, Any]],
) -> dict[str, Any]:
    """Aggregate the list-generation stages into ``metrics/listgen.json`` (row shapes: module docstring).

    Keys: ``records_in``, ``records_out``, ``rejects`` (per reason), ``rejects_total``, ``candidates``
    (per source, over all text candidates), ``candidates_per_sample``, ``object_source`` (source of the
    chosen object, incl. ``random``), ``detection_rate`` (samples with an object / detect rows),
    ``sam_mask_rate``, ``verify_pass_rate`` (``true`` / (``true`` + ``false``); unverified rows excluded),
    ``verify_mean_tries``, ``lists_out``, ``lists_errors``, ``mean_hidden_area_fraction`` (the object
    region's share of the image, averaged over built lists). Deterministic counts and rates only:
    timings live in the stages' logs, not in metrics.
    """
    n_det = n_obj = n_cand = 0
    cand: Counter[str] = Counter()
    obj_src: Counter[str] = Counter()
    for row in detect_rows:
        n_det += 1
        for c in row.get("candidates") or []:
            cand[str(c.get("source"))] += 1
            n_cand += 1
        obj = row.get("object")
        if obj:
            n_obj += 1
            obj_src[str(obj.get("source"))] += 1

    n_seg = n_sam = 0
    for row in segment_rows:
        n_seg += 1
        n_sam += row.get("mask") == "sam"

    n_pass = n_fail = n_tries_rows = tries = 0
    for row in verify_rows:
        v = row.get("verified")
        if v is True:
            n_pass += 1
        elif v is False:
            n_fail += 1
        if row.get("tries") is not None:
            n_tries_rows += 1
            tries += int(row["tries"])

    n_lists = n_err = 0
    area = 0.0
    for row in lists_rows:
        if row.get("error"):
            n_err += 1
            continue
        n_lists += 1
        obj = row.get("object") if isinstance(row.get("object"), dict) else {}
        area += float(obj.get("mask_area", row.get("mask_area", 0.0)))

    rejects = dict(sorted((prepared_summary.get("rejects_by_reason") or {}).items()))
    return {
        "records_in": int(prepared_summary.get("records_in", 0)),
        "records_out": int(prepared_summary.get("records_out", 0)),
        "rejects": rejects,
        "rejects_total": int(sum(rejects.values())),
        "candidates": dict(sorted(cand.items())),
        "candidates_per_sample": _rate(n_cand, n_det),
        "object_source": dict(sorted(obj_src.items())),
        "detection_rate": _rate(n_obj, n_det),
        "sam_mask_rate": _rate(n_sam, n_seg),
        "verify_pass_rate": _rate(n_pass, n_pass + n_fail),
        "verify_mean_tries": _rate(tries, n_tries_rows),
        "lists_out": n_lists,
        "lists_errors": n_err,
        "mean_hidden_area_fraction": _rate(area, n_lists) if n_lists else None,
    }


def run_report(*, prepared_dir, detect_dir, segment_dir, verify_dir, lists_dir, prepare_metrics, out_path,
               sheet_path, rows: int = 12, labels: dict[str, Any] | None = None) -> dict[str, Any]:
    """``metrics/listgen.json`` from the stage folders (plus ``labels``), and the contact sheet.

    Streams every stage's JSONL once. Rejects are counted over all stages (``<stage>/rejects.jsonl``),
    so every record that did not become a list is accounted for with its reason.
    """
    from lpoi.io import read_json, read_jsonl
    from lpoi.stage import write_metrics

    def detect_rows():
        for r in read_jsonl(Path(detect_dir) / "detect.jsonl"):
            found = [c for c in r.get("candidates", []) if c.get("box") is not None]
            yield {"candidates": r.get("candidates", []), "object": found[0] if found else None}

    def verify_rows():
        for r in read_jsonl(Path(verify_dir) / "verify.jsonl"):
            yield {"verified": r.get("verified"), "tries": len(r.get("tries") or [])}

    prepared_summary = read_json(prepare_metrics)
    metrics = listgen_metrics(prepared_summary, detect_rows(), read_jsonl(Path(segment_dir) / "segment.jsonl"),
                              verify_rows(), read_jsonl(Path(lists_dir) / "lists.jsonl"))
    reasons: Counter[str] = Counter()
    for d in (prepared_dir, detect_dir, segment_dir, verify_dir, lists_dir):
        f = Path(d) / "rejects.jsonl"
        if f.exists():
            reasons.update(r["reason"] for r in read_jsonl(f))
    metrics["rejects"] = dict(sorted(reasons.items()))
    metrics["rejects_total"] = sum(reasons.values())
    metrics.update(labels or {})
    write_metrics(out_path, metrics)

    lists_path = Path(lists_dir) / "lists.jsonl"
    sheet, total = [], 0
    for r in read_jsonl(lists_path):
        total += 1
        if len(sheet) >= rows:
            continue  # counted for "12 of 24 lists shown"
        obj = r.get("object") or {}
        sheet.append(SheetRow([lists_path.parent / p for p in r["images"]], r.get("visibility"), obj.get("box"),
                              obj.get("phrase") or "", str(r["id"]), obj.get("source"), r.get("verified")))
    contact_sheet(sheet, sheet_path, max_rows=rows, total=total)
    return metrics
