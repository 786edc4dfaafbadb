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


def _user_errors() -> tuple[type[BaseException], ...]:
    """Failures a user fixes from the message alone (bad data, paths, params, missing weights)."""
    from lpoi.io import ImageRejected, UnsafePathError
    from lpoi.listgen.prepare import RejectRatioExceeded
    from lpoi.models import ModelNotFound

    errors: list[type[BaseException]] = [FileNotFoundError, UnsafePathError, ImageRejected, ModelNotFound,
                                         RejectRatioExceeded]
    for module, name in (("lpoi.eval.generate", "AdapterError"), ("lpoi.train.reference", "ReferenceError"),
                         ("lpoi.eval.judge", "JudgeConfigError"), ("lpoi.nltk_data", "NltkDataMissing"),
                         ("lpoi.stage", "StageError")):
        try:
            errors.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def run(main) -> None:
    """Clear one-line errors for the failures a user can fix; tracebacks for everything else."""
    try:
        main()
    except Exception as e:
        if isinstance(e, _user_errors()):
            sys.exit(f"error: {e}")
        raise
