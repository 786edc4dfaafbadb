"""Checks shared by the scorers on an answers file once its rows have been sorted out."""

from __future__ import annotations

from collections import Counter


def require_usable(source, n_rows: int, generation_errors: Counter, rejects: Counter, n_usable: int) -> None:
    """Fail clearly when nothing can be scored: every row a generation error (images that could not be
    loaded), or no usable row at all."""
    if generation_errors and sum(generation_errors.values()) == n_rows:
        raise ValueError(
            f"{source}: all {n_rows} answer rows are generation errors ({dict(generation_errors)}), "
            "nothing to score; fix the images and regenerate (generate with retry_errors=True retries those items)"
        )
    if not n_usable:
        also = f", generation errors: {dict(generation_errors)}" if generation_errors else ""
        raise ValueError(f"{source}: no usable answers (rejects: {dict(rejects) or 'file empty'}{also})")
