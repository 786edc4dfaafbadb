"""Reading an answers file for scoring: generation error rows set aside, bad rows rejected with a reason,
and the share of items left out of the metrics bounded (``score.max_error_ratio``)."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator

from lpoi.io import read_jsonl

log = logging.getLogger("lpoi.eval")

class ErrorRatioExceeded(ValueError):
    """Too many items were left out of a benchmark's metrics (generation or judge errors)."""


def answer_rows(path: str | os.PathLike, generation_errors: Counter) -> Iterator[tuple[int, dict]]:
    """``(line number, row)`` of the answers file. Rows whose image generation could not use (a truthy
    ``"error"``) are not answers: they are counted in ``generation_errors`` by reason and never yielded."""
    for lineno, row in enumerate(read_jsonl(path), 1):
        error = row.get("error")
        if error:
            generation_errors[error if isinstance(error, str) else repr(error)] += 1
            continue
        yield lineno, row


def reject(rejects: Counter, source, lineno: int, reason: str, detail: str) -> None:
    """Count a rejected answer row under ``reason`` and say which line and why."""
    rejects[reason] += 1
    log.warning("%s:%d: rejected (%s): %s", source, lineno, reason, detail)


def require_usable(source, generation_errors: Counter, rejects: Counter, n_usable: int) -> None:
    """Fail clearly when nothing can be scored: every row a generation error (images that could not be
    loaded), or no usable row at all."""
    n_rows = n_usable + sum(rejects.values()) + sum(generation_errors.values())
    if generation_errors and sum(generation_errors.values()) == n_rows:
        raise ValueError(
            f"{source}: all {n_rows} answer rows are generation errors ({dict(generation_errors)}), "
            "nothing to score; fix the images and regenerate (generate with retry_errors=True retries those items)"
        )
    if not n_usable:
        also = f", generation errors: {dict(generation_errors)}" if generation_errors else ""
        raise ValueError(f"{source}: no usable answers (rejects: {dict(rejects) or 'file empty'}{also})")


def check_error_ratio(source, n_items: int, max_ratio: float | None, **errors: Counter) -> None:
    """Refuse metrics that leave out more than ``max_ratio`` of the ``n_items`` answer rows.

    Every scorer leaves failed items (``errors``: e.g. ``generation=Counter``, ``judge=Counter``, by
    reason) out of its denominators, so a run with more failures can *look* better (fewer described
    images, fewer hallucinations). Above ``max_ratio`` (``score.max_error_ratio``) this raises
    :class:`ErrorRatioExceeded` naming the counts; ``None`` disables the check (the counts are still
    in the metrics). The scorers' ``max_error_ratio`` defaults to ``None``; ``stages/score.py`` always
    passes ``score.max_error_ratio`` (default 0.05).
    """
    n_failed = sum(sum(c.values()) for c in errors.values())
    if max_ratio is None or n_items <= 0 or n_failed / n_items <= max_ratio:
        return
    parts = ", ".join(f"{kind} errors {dict(c)}" for kind, c in errors.items() if c)
    raise ErrorRatioExceeded(
        f"{source}: {n_failed} of {n_items} answers ({n_failed / n_items:.1%}) would be left out of the metrics "
        f"({parts}), above score.max_error_ratio = {max_ratio:g}; the remaining items would give a misleading "
        "score. Fix the cause and re-run, or raise score.max_error_ratio to accept it."
    )
