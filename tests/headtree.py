"""The repository as committed (``git HEAD``), exported once per test session.

Tests read params.yaml, dvc.yaml, conf/ and copy the project from here, never from the working tree: a
user's ``dvc exp run -S train.beta=0.2`` rewrites params.yaml in place, and a test must not depend on that.
Outside a git checkout (an unpacked sdist) the working tree is all there is, and it is used as it is.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=None)
def head_tree() -> Path:
    """A read-only-by-convention folder holding ``git archive HEAD`` (or :data:`REPO` outside git)."""
    probe = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if probe.returncode != 0:
        return REPO
    dst = Path(tempfile.mkdtemp(prefix="lpoi-head-"))
    atexit.register(shutil.rmtree, dst, ignore_errors=True)
    with subprocess.Popen(["git", "archive", "--format=tar", "HEAD"], cwd=REPO, stdout=subprocess.PIPE) as git:
        with tarfile.open(fileobj=git.stdout, mode="r|") as tar:
            tar.extractall(dst, filter="data")
    if git.returncode != 0:
        raise RuntimeError(f"git archive HEAD failed in {REPO}")
    return dst


def head(rel: str) -> Path:
    """``rel`` as committed: a path inside :func:`head_tree`."""
    return head_tree() / rel
