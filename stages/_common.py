"""Shared by the stage scripts: make ``lpoi`` importable from this checkout, parse the common flags."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the lpoi next to this script, even when another copy is installed
    sys.path.insert(0, str(REPO))


def parser(doc: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="parameters file (default: %(default)s)")
    return ap


def load(args):
    from lpoi.config import ParamsError, load_params

    try:
        return load_params(args.params)
    except ParamsError as e:
        sys.exit(f"error: {e}")


def run(main) -> None:
    """Clear one-line errors for the failures a user can fix; tracebacks for everything else."""
    from lpoi.io import UnsafePathError
    from lpoi.models import ModelNotFound

    try:
        main()
    except (FileNotFoundError, UnsafePathError, ModelNotFound) as e:
        sys.exit(f"error: {e}")
