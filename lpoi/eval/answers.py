"""Reading an answers file for scoring: generation error rows set aside, bad rows rejected with a reason."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator

from lpoi.io import read_jsonl

log = logging.getLogger("lpoi.eval")


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
