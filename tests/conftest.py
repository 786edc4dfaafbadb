"""Test-wide setup: offline NLTK data from ../shared and a session-wide cache for the tiny models."""

import os
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# shared test helpers (trainkw.py, badfiles.py, shared_data.py) import by name from any test folder
sys.path.insert(0, str(Path(__file__).resolve().parent))

from shared_data import SHARED, nltk_skip_reason  # noqa: E402

os.environ.setdefault("NLTK_DATA", str(SHARED / "nltk_data"))
# Build each tiny model once per machine; tests that check building itself point LPOI_CACHE elsewhere.
os.environ.setdefault("LPOI_CACHE", str(Path.home() / ".cache" / "lpoi"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The stages' pinned CPU numerics (lpoi/numerics.py), set before torch loads, so in-process results are the
# bits a stage computes on any x86-64 CPU.
from lpoi import numerics  # noqa: E402

numerics.pin()

# lpoi's one-line error (lpoi.nltk_data, also in a stage's stderr) and NLTK's own LookupError
_NLTK_MISSING = re.compile(r"NLTK data missing|Please use the NLTK Downloader")


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_nltk: needs the NLTK data of ../shared/nltk_data (skipped without it)")


def pytest_runtest_setup(item):
    if item.get_closest_marker("needs_nltk") and (reason := nltk_skip_reason()):
        pytest.skip(reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failure caused by absent NLTK data, when it really is absent, is a skip naming ../shared.

    Many tests reach NLTK only deep inside a stage or a scorer (candidate extraction, CHAIR parsing); marking
    each would miss some, so the failure itself is recognised: lpoi's NltkDataMissing message or NLTK's
    LookupError, in the exception or in a stage's stderr that the assertion shows. With the data present
    this never applies, so a real failure is never hidden where the data exists.
    """
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and _NLTK_MISSING.search(str(rep.longrepr)) and (reason := nltk_skip_reason()):
        rep.outcome = "skipped"
        rep.longrepr = (str(item.path), (item.location[1] or 0) + 1, f"Skipped: {reason}")
