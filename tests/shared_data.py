"""``../shared``: data the tests compare with that is not part of the repository.

``<repo>/../shared`` (or the folder ``LPOI_SHARED`` names) holds the official AMBER, Object HalBench and
MMHal-Bench files (``benchmarks/``) and offline NLTK data (``nltk_data/``). A clone without it must still run
the suite: a test that needs a file from it asks :func:`shared_file`, a test that needs NLTK data is marked
``needs_nltk`` (or fails on NLTK's own error, which conftest turns into a skip); both skip with a reason that
names ``../shared`` and says how to provide it, never fail.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LPOI_SHARED") or REPO.parent / "shared")
_HOW = "place the shared folder beside the repository or point LPOI_SHARED at it (README: '../shared')"


def shared_file(*parts: str) -> Path:
    """``SHARED/<parts>``, or skip the calling test naming the missing file."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs ../shared/{'/'.join(parts)}, not found at {path}: {_HOW}")
    return path


@functools.cache
def nltk_skip_reason() -> str | None:
    """Why a test that needs NLTK data cannot run here (None when the data is findable)."""
    from lpoi.nltk_data import missing_nltk_data

    missing = missing_nltk_data()
    if not missing:
        return None
    return (f"needs ../shared/nltk_data (NLTK {', '.join(missing)}), not found at {SHARED / 'nltk_data'} "
            f"nor in NLTK_DATA={os.environ.get('NLTK_DATA', '<unset>')}: {_HOW}, or set NLTK_DATA")
