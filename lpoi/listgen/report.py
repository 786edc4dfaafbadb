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
* ``timings``: ``{stage: {"n": samples, "seconds": wall seconds}}``.

Undefined rates (no denominator, e.g. verify disabled) are ``null``, never a made-up 0.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lpoi.io import atomic_write_bytes

__all__ = ["contact_sheet", "contact_sheet_size", "listgen_metrics", "run_report"]

PAD = 4  # px between cells and around the sheet
BOX_RGB = (0, 255, 0)
BG_RGB = (255, 255, 255)


def contact_sheet_size(n_rows: int, n_cols: int, thumb: int = 96, pad: int = PAD) -> tuple[int, int]:
    """(width, height) of a sheet: ``pad`` around and between ``thumb`` x ``thumb`` cells."""
    return pad + n_cols * (thumb + pad), pad + n_rows * (thumb + pad)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: bitmap font, no size
        return ImageFont.load_default()


def _fit(text: str, draw, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def contact_sheet(
    rows: Sequence[tuple[Sequence[str | os.PathLike], Sequence[float] | None, str, str]],
    out_path: str | os.PathLike,
    thumb: int = 96,
    max_rows: int = 16,
) -> tuple[int, int]:
    """Draw the first ``max_rows`` samples' lists as a grid PNG; returns its (width, height).

    ``rows``: ``(list_image_paths, box, phrase, id)`` per sample — rows = samples, columns = list
    positions (as many as the longest list). Each image is scaled to fit a ``thumb`` square (bilinear,
    centred on white); on column 0 (the original) the object's ``box`` (original pixel coordinates,
    or ``None``) is drawn in green and ``"<id>: <phrase>"`` is written across the top. The first
    ``max_rows`` rows are used, in the given order (the caller decides which samples to show).
    With no rows, a single cell saying so is written (the DVC plot must exist). Deterministic, atomic.
    """
    from PIL import Image, ImageDraw

    if thumb < 16:
        raise ValueError(f"thumb must be >= 16 px, got {thumb}")
    rows = list(rows)[: max(0, max_rows)]
    n_cols = max((len(r[0]) for r in rows), default=1)
    size = contact_sheet_size(max(1, len(rows)), n_cols, thumb)
    sheet = Image.new("RGB", size, BG_RGB)
    draw = ImageDraw.Draw(sheet)
    font = _font(max(8, thumb // 9))
    if not rows:
        draw.text((PAD + 2, PAD + 2), "no samples", fill=(0, 0, 0), font=font)
    for r, (paths, box, phrase, sid) in enumerate(rows):
        top = PAD + r * (thumb + PAD)
        for c, p in enumerate(paths):
            left = PAD + c * (thumb + PAD)
            p = Path(p)
            if not p.is_file():
                raise FileNotFoundError(f"contact sheet: list image not found: {p} (sample {sid})")
            with Image.open(p) as im:
                im = im.convert("RGB")
                w, h = im.size
                s = thumb / max(w, h)
                tw, th = max(1, round(w * s)), max(1, round(h * s))
                small = im.resize((tw, th), Image.Resampling.BILINEAR)
            ox, oy = left + (thumb - tw) // 2, top + (thumb - th) // 2
            sheet.paste(small, (ox, oy))
            if c == 0:
                if box is not None:
                    x0, y0, x1, y1 = (float(v) for v in box)
                    bx0, by0 = ox + x0 * s, oy + y0 * s
                    bx1, by1 = max(bx0, ox + x1 * s - 1), max(by0, oy + y1 * s - 1)
                    draw.rectangle([bx0, by0, bx1, by1], outline=BOX_RGB, width=2)
                label = _fit(f"{sid}: {phrase}", draw, font, thumb - 4)
                bbox = draw.textbbox((left + 2, top + 1), label, font=font)
                draw.rectangle([left, top, left + thumb - 1, bbox[3] + 1], fill=(0, 0, 0))
                draw.text((left + 2, top + 1), label, fill=(255, 255, 255), font=font)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", compress_level=6)
    atomic_write_bytes(out_path, buf.getvalue())
    return size


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def listgen_metrics(
    prepared_summary: dict[str, Any],
    detect_rows: Iterable[dict[str, Any]],
    segment_rows: Iterable[dict[str, Any]],
    verify_rows: Iterable[dict[str, Any]],
    lists_rows: Iterable[dict[str, Any]],
    timings: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """Aggregate the list-generation stages into ``metrics/listgen.json`` (row shapes: module docstring).

    Keys: ``records_in``, ``records_out``, ``rejects`` (per reason), ``rejects_total``, ``candidates``
    (per source, over all text candidates), ``candidates_per_sample``, ``object_source`` (source of the
    chosen object, incl. ``random``), ``detection_rate`` (samples with an object / detect rows),
    ``sam_mask_rate``, ``verify_pass_rate`` (``true`` / (``true`` + ``false``); unverified rows excluded),
    ``verify_mean_tries``, ``lists_out``, ``lists_errors``, ``mean_hidden_area_fraction`` (the object
    region's share of the image, averaged over built lists), ``samples_per_s`` (per stage).
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
    speed = {}
    for stage, t in timings.items():
        secs = float(t.get("seconds", 0.0))
        speed[stage] = float(t.get("n", 0)) / secs if secs > 0 else None
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
        "samples_per_s": speed,
    }


def run_report(*, prepared_dir, detect_dir, segment_dir, verify_dir, lists_dir, stage_metrics: dict[str, str],
               out_path, sheet_path, rows: int = 12) -> dict[str, Any]:
    """The report stage: ``metrics/listgen.json`` from the stage folders, plus the contact sheet.

    Streams every stage's JSONL once. Rejects are counted over all stages (``<stage>/rejects.jsonl``),
    so every record that did not become a list is accounted for with its reason.
    """
    import json

    from lpoi.io import read_jsonl
    from lpoi.stage import write_metrics

    def detect_rows():
        for r in read_jsonl(Path(detect_dir) / "detect.jsonl"):
            found = [c for c in r.get("candidates", []) if c.get("box") is not None]
            yield {"candidates": r.get("candidates", []), "object": found[0] if found else None}

    def verify_rows():
        for r in read_jsonl(Path(verify_dir) / "verify.jsonl"):
            yield {"verified": r.get("verified"), "tries": len(r.get("tries") or [])}

    timings = {}
    for stage, path in stage_metrics.items():
        m = json.loads(Path(path).read_text())
        n = m.get("samples", m.get("n_samples", m.get("records_in", m.get("lists"))))
        sec = m.get("seconds")
        if sec is None and m.get("samples_per_s") and n:
            sec = n / m["samples_per_s"]
        if n is not None and sec:
            timings[stage] = {"n": n, "seconds": sec}
    prepared_summary = json.loads(Path(stage_metrics["prepare"]).read_text())
    metrics = listgen_metrics(prepared_summary, detect_rows(), read_jsonl(Path(segment_dir) / "segment.jsonl"),
                              verify_rows(), read_jsonl(Path(lists_dir) / "lists.jsonl"), timings)
    reasons: Counter[str] = Counter()
    for d in (prepared_dir, detect_dir, segment_dir, verify_dir, lists_dir):
        f = Path(d) / "rejects.jsonl"
        if f.exists():
            reasons.update(r["reason"] for r in read_jsonl(f))
    metrics["rejects"] = dict(sorted(reasons.items()))
    metrics["rejects_total"] = sum(reasons.values())
    write_metrics(out_path, metrics)

    lists_path = Path(lists_dir) / "lists.jsonl"
    sheet = []
    for r in read_jsonl(lists_path):
        if len(sheet) >= rows:
            break
        sheet.append(([lists_path.parent / p for p in r["images"]], r["object"].get("box"),
                      r["object"].get("phrase") or "", r["id"]))
    contact_sheet(sheet, sheet_path, max_rows=rows)
    return metrics
