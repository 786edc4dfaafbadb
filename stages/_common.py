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
    """Failures a user fixes from the message alone (missing files or weights, params, too many rejects)
    beside ``ValueError`` (bad input: :class:`lpoi.io.InputError`, unsafe paths, broken images, ...)."""
    from lpoi.listgen.prepare import RejectRatioExceeded
    from lpoi.models import ModelNotFound

    errors: list[type[BaseException]] = [FileNotFoundError, ModelNotFound, RejectRatioExceeded]
    for module, name in (("lpoi.eval.generate", "AdapterError"), ("lpoi.eval.judge", "JudgeConfigError"),
                         ("lpoi.nltk_data", "NltkDataMissing"), ("lpoi.stage", "StageError")):
        try:
            errors.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def run(main) -> None:
    """Clear one-line errors for the failures a user can fix; tracebacks for everything else.

    Bad input surfaces as a ``ValueError`` (a corrupt JSON file, a JSON object where a list is
    expected, a bad answers row, too many generation errors, ...): its message names the file and the
    problem, so it ends the stage in one line. ``LPOI_DEBUG=1`` shows the traceback as well.
    """
    import os

    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted (finished work is kept; re-run to resume)")
    except Exception as e:
        if os.environ.get("LPOI_DEBUG") or not isinstance(e, (ValueError, *_user_errors())):
            raise
        sys.exit(f"error: {e}")
