"""Test-wide setup: offline NLTK data from ../shared and a session-wide cache for the tiny models."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

os.environ.setdefault("NLTK_DATA", str(SHARED / "nltk_data"))
# Build each tiny model once per machine; tests that check building itself point LPOI_CACHE elsewhere.
os.environ.setdefault("LPOI_CACHE", str(Path.home() / ".cache" / "lpoi"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
