"""Test-wide setup: offline NLTK data from ../shared and a session-wide cache for the tiny models."""

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
# shared test helpers (trainkw.py, badfiles.py) import by name from any test folder
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("NLTK_DATA", str(SHARED / "nltk_data"))
# Build each tiny model once per machine; tests that check building itself point LPOI_CACHE elsewhere.
os.environ.setdefault("LPOI_CACHE", str(Path.home() / ".cache" / "lpoi"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The stages' pinned CPU numerics (lpoi/numerics.py), set before torch loads, so in-process results are the
# bits a stage computes on any x86-64 CPU.
from lpoi import numerics  # noqa: E402

numerics.pin()
