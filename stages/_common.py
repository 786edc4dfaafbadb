"""Shared by the stage scripts: make ``lpoi`` importable from this checkout, parse the common flags."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the lpoi next to this script, even when another copy is installed
    sys.path.insert(0, str(REPO))

# Before anything loads torch: the same float bits on every x86-64 CPU, whatever the user's shell says.
from lpoi import numerics  # noqa: E402

numerics.pin_environment()


def parser(doc: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="parameters file (default: %(default)s)")
    return ap


def load(args):
    from lpoi.config import ParamsError, load_params

    try:
        params = load_params(args.params)
    except ParamsError as e:
        sys.exit(f"error: {e}")
    numerics.pin()
    numerics.check()
    return params


def use_engine(params) -> None:
    """A per-sample stage: its blocks are computed by ``compute.engine`` (local or Ray; lpoi.runner)."""
    from lpoi.runner import set_engine

    set_engine(params.compute)


def skipped_for_official_lists(stage: str, args, outputs: tuple[str, ...]) -> None:
    """``lists.source: official``: the authors' lists are adopted, so this list-generation stage only leaves
    empty outputs (what the report reads) and a metrics file that says why."""
    from lpoi.stage import open_stage

    with open_stage(stage, args) as st:
        for name in outputs:
            (st.path / name).write_text("")
        st.finish(args.metrics, {"skipped": True, "samples": 0}, {"skipped": "lists.source: official"})
    print(f"{stage}: skipped (lists.source: official: the released lists are used)")


def _user_errors() -> tuple[type[BaseException], ...]:
    """Failures a user fixes from the message alone (missing files or weights, params, too many rejects)
    beside ``ValueError`` (bad input: :class:`lpoi.io.InputError`, unsafe paths, broken images, ...)."""
    from lpoi.listgen.prepare import RejectRatioExceeded
    from lpoi.models import ModelNotFound

    errors: list[type[BaseException]] = [FileNotFoundError, ModelNotFound, RejectRatioExceeded]
    for module, name in (("lpoi.eval.generate", "AdapterError"), ("lpoi.eval.judge", "JudgeConfigError"),
                         ("lpoi.nltk_data", "NltkDataMissing"), ("lpoi.stage", "StageError"),
                         ("lpoi.runner", "EngineError")):
        try:
            errors.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


_OUTPUT_FLAGS = ("--out", "--out-dir", "--dest", "--metrics", "--work")  # where the stages write


def _causes(exc: BaseException):
    """``exc`` and every exception behind it: causes, contexts, exception groups and the per-rank failures that
    ``torch.distributed.checkpoint``'s ``CheckpointException`` wraps (it chains none of them)."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]
        failures = getattr(e, "failures", None)
        if isinstance(failures, dict):
            todo += [f[0] if isinstance(f, tuple) else f for f in failures.values()]


def _disk_full(exc: BaseException) -> str | None:
    """One line when ``exc`` comes from a full disk (or quota), naming the path; else None. torch's own writer
    (``torch.save``) reports a full disk as a RuntimeError without errno: then the stage's outputs are checked
    for free space."""
    import errno

    torch_write = False
    for e in _causes(exc):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            path = e.filename or e.filename2
            return f"disk full ({errno.errorcode[e.errno]}, {e.strerror}) writing {path or _outputs_free()}"
        torch_write |= isinstance(e, RuntimeError) and any(
            s in str(e) for s in ("inline_container.cc", "PytorchStreamWriter", "iostream error"))
    if torch_write:
        full = [p for p in _outputs() if _free(p) < 1 << 20]
        if full:
            return f"disk full (ENOSPC: torch could not write its file) writing {_outputs_free(full)}"
    return None


def _outputs() -> list[str]:
    argv = sys.argv[1:]
    return [v for flag, v in zip(argv, argv[1:]) if flag in _OUTPUT_FLAGS]


def _free(path: str) -> int:
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:  # the output may not exist yet: its filesystem is its parent's
        p = p.parent
    return shutil.disk_usage(p).free


def _outputs_free(paths: list[str] | None = None) -> str:

    paths = _outputs() if paths is None else paths
    if not paths:
        return "the stage's outputs"
    return ", ".join(f"{p} ({_free(p) // 1024} KiB free)" for p in paths)


def run(main) -> None:
    """Clear one-line errors for the failures a user can fix; tracebacks for everything else.

    Bad input surfaces as a ``ValueError`` (a corrupt JSON file, a JSON object where a list is
    expected, a bad answers row, too many generation errors, ...): its message names the file and the
    problem, so it ends the stage in one line. A full disk does too, however deep its ``OSError`` sits
    (``CheckpointException`` is a ``BaseException``). ``LPOI_DEBUG=1`` shows the traceback as well.
    """
    import os

    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted (finished work is kept; re-run to resume)")
    except (SystemExit, GeneratorExit):
        raise
    except BaseException as e:
        if os.environ.get("LPOI_DEBUG"):
            raise
        full = _disk_full(e)
        if full:
            sys.exit(f"error: {full}: free some space and re-run")
        if not isinstance(e, (ValueError, *_user_errors())):
            raise
        sys.exit(f"error: {e}")
