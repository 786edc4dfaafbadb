"""What every stage entry point shares: its dvc.yaml entry, the persisted output folder, metrics and timings.

**The caching contract** (DESIGN.md). A stage that keeps work in a persisted folder (``persist: true``,
to resume after a kill) reuses it only under the same *fingerprint*, and the fingerprint is derived
from the stage's own entry in ``dvc.yaml`` — resolved for ``foreach`` and ``${}`` by DVC's own resolver
against the run's params file — so it cannot drift from what DVC tracks:

* the bytes of every declared dep, code and data (a dep that ``cmd`` passes as ``--flag PATH`` is read
  where this run's ``--flag`` points, so a stage script run by hand on other folders fingerprints what
  it actually reads; code deps are read in the checkout the script runs from);
* the value of every declared param;
* the identity of every model the stage loads (:func:`lpoi.models.model_identity`).

A folder made under another fingerprint is emptied first, and the stage says which part changed in
one line. :class:`StageDir` also

* holds an exclusive lock on the folder for the stage's whole lifetime, so a second run of the same
  stage (or one left alive after its ``dvc`` parent was killed) is refused with a one-line error;
  the ranks of one multi-process run (the train stage under ``accelerate launch``) share the folder as
  shares ``i/n`` (one lock per rank, plus a short lock for the check-and-clear) and exclude a one-process run;
* removes temp files (``.*.tmp``) a killed run left inside the folder (when no other rank is running);

and the per-sample runner's journal (:class:`lpoi.runner.StageOutput`) makes sure no output is adopted
that is not exactly what the stage wrote.

**Metrics and timings.** ``metrics/<stage>.json`` holds deterministic results computed from the whole
output (identical after a resume); timings, throughput, counts of this invocation (``resumed`` rows
among them), paths and hashes go to ``<metrics stem>.timings.json`` beside it (not a DVC metric, not in
git) and to the log.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .io import atomic_write_json

__all__ = ["StageDir", "StageEntry", "StageError", "fingerprint_parts", "hold_stage", "open_stage", "pick_device",
           "stage_entry", "write_metrics", "write_timings"]

MARKER = ".lpoi-fingerprint.json"
PLACEHOLDER = "NONE"  # what a stage that had nothing to do leaves in its folder, saying why (world: none)
REPO = Path(__file__).resolve().parents[1]  # the checkout this package (and the stage scripts) run from
_SKIP = ("__pycache__",)


class StageError(RuntimeError):
    """A stage that cannot start: its output folder is in use, or its dvc.yaml entry cannot be read."""


# ---------------------------------------------------------------------------------------------- dvc.yaml


@dataclass(frozen=True)
class StageEntry:
    """A stage's resolved entry in dvc.yaml."""

    name: str
    cmd: str
    deps: tuple[str, ...]
    params: tuple[str, ...]
    outs: tuple[tuple[str, bool], ...]  # (path, persist)
    interpolated: tuple[str, ...]  # params used in ${} (DVC tracks those by itself)
    root: Path  # the folder of dvc.yaml

    def persisted(self) -> str:
        outs = [p for p, persist in self.outs if persist]
        if len(outs) != 1:
            raise StageError(f"stage {self.name!r} declares {len(outs)} persisted outputs in dvc.yaml, expected 1")
        return outs[0]


def stage_entry(name: str, params_file: str | os.PathLike = "params.yaml", dvc_yaml: str | os.PathLike | None = None
                ) -> StageEntry:
    """Resolve stage ``name`` (``generate@amber`` for a ``foreach`` member) of ``dvc_yaml`` (default: the
    checkout's) with DVC's resolver, interpolating against ``params_file`` (the run's params)."""
    import yaml
    from dvc.fs import MemoryFileSystem
    from dvc.parsing import DataResolver, DvcException

    dvc_yaml = Path(dvc_yaml) if dvc_yaml else REPO / "dvc.yaml"
    if not dvc_yaml.is_file():
        raise StageError(f"{dvc_yaml} not found: stage scripts run from a checkout of the project")
    fs = MemoryFileSystem()  # the resolver reads params.yaml through fs; give it exactly this run's file
    fs.pipe_file("params.yaml", Path(params_file).read_bytes())
    repo = type("Repo", (), {"fs": fs, "config": {}})()
    resolver = DataResolver(repo, "", yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")))
    try:
        d = resolver.resolve_one(name)[name]
    except DvcException as e:
        raise StageError(f"stage {name!r} of {dvc_yaml}: {e}") from None
    outs = []
    for o in d.get("outs", []):
        path, opts = (o, {}) if isinstance(o, str) else next(iter(o.items()))
        outs.append((path, bool((opts or {}).get("persist"))))
    params = []
    for p in d.get("params", []):
        if isinstance(p, dict) and set(p) == {"params.yaml"}:  # `- params.yaml:` = the whole file (or keys)
            keys = p["params.yaml"] or list(yaml.safe_load(Path(params_file).read_text(encoding="utf-8")) or {})
            params.extend(keys)
        elif isinstance(p, str):
            params.append(p)
        else:
            raise StageError(f"stage {name!r}: only params of params.yaml are supported, got {p!r}")
    tracked = sorted({k for per_file in resolver.tracked_vars.get(name, {}).values() for k in per_file})
    return StageEntry(name, d["cmd"], tuple(d.get("deps", [])), tuple(params), tuple(outs), tuple(tracked),
                      dvc_yaml.parent)


def _flags(cmd: str) -> list[tuple[str, str]]:
    toks = shlex.split(cmd)
    return [(a, b) for a, b in zip(toks, toks[1:]) if a.startswith("--") and not b.startswith("--")]


def actual_path(entry: StageEntry, path: str, args) -> Path | None:
    """Where this run reads or writes ``path`` of the entry: under the value of the ``--flag`` that ``cmd``
    passes it with (``None`` when this run leaves the flag out), in the checkout for code, else as is."""
    for flag, value in _flags(entry.cmd):
        if path == value or path.startswith(value.rstrip("/") + "/"):
            v = getattr(args, flag[2:].replace("-", "_"), None)
            return None if v is None else Path(v) / path[len(value):].lstrip("/")
    code = entry.root / path
    if any(code.resolve().is_relative_to((entry.root / d).resolve()) for d in ("lpoi", "stages")):
        return code
    return Path(path)


# ---------------------------------------------------------------------------------------------- fingerprint


def hash_path(path: Path | None) -> str:
    """sha256 of a file, or of a folder's relative names and file bytes (``__pycache__`` skipped).

    Every name and every file's bytes go in as their own sha256 (fixed length), so no arrangement of names
    and bytes hashes like another: v1 separated them by NUL, and a file ``a`` holding ``1\\0b\\0`` + ``2``
    hashed like the two files ``a`` = ``1``, ``b`` = ``2``. The ``v2`` tag changes every fingerprint once, so
    folders made under v1 are emptied rather than reused.
    """
    h = hashlib.sha256(b"lpoi hash_path v2\n")
    if path is None:
        h.update(b"<not used by this run>")
    elif path.is_dir():
        h.update(b"folder")
        for p in sorted(path.rglob("*")):
            rel = p.relative_to(path)
            if p.is_file() and not any(part in _SKIP for part in rel.parts) and p.suffix != ".pyc":
                h.update(hashlib.sha256(rel.as_posix().encode("utf-8", "surrogateescape")).digest())
                h.update(_file_digest(p))
    elif path.is_file():
        h.update(b"file" + _file_digest(path))
    else:
        h.update(b"<missing>")
    return h.hexdigest()


def _file_digest(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
    return h.digest()


def _lookup(params: dict, dotted: str) -> Any:
    v: Any = params
    for k in dotted.split("."):
        v = v.get(k) if isinstance(v, dict) else None
    return v


def fingerprint_parts(entry: StageEntry, args, raw_params: dict, models=()) -> dict[str, str]:
    """``{"dep <path>" | "param <key>" | "model <name>": sha256}`` — what the stage's fingerprint is made of."""
    out = entry.persisted()
    if any(d == out or d.startswith(out + "/") for d in entry.deps):  # before hashing anything
        raise StageError(f"stage {entry.name!r}: its output {out} is also declared as a dep")
    parts = {}
    for d in entry.deps:
        parts[f"dep {d}"] = hash_path(actual_path(entry, d, args))
    for p in entry.params:
        parts[f"param {p}"] = _sha(_lookup(raw_params, p))
    for m in models:
        from lpoi.models import model_digest  # only here: a stage without models does not import them

        parts[f"model {m}"] = model_digest(m)
    return parts


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------- the folder


class StageDir:
    """The persisted output folder of one stage run (see the module docstring); a context manager."""

    def __init__(self, path: str | os.PathLike, parts: dict[str, str], *, shard: str = "0/1", stage: str = ""):
        from lpoi.runner import parse_shard

        self.path, self.parts, self.stage = Path(path), dict(parts), stage
        self.i, self.n = parse_shard(shard)
        self.fingerprint = _sha(self.parts)
        self._locks: list = []
        self._owned: list = []
        self.t0 = time.perf_counter()

    def __enter__(self) -> StageDir:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._lock_file(f".{self.path.name}.lock") as setup:
                fcntl.flock(setup, fcntl.LOCK_EX)  # short: check-and-clear, one process at a time
                alone = self._take_run_lock()
                self._check(alone)
                if alone:
                    self._clean_temp()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for f in reversed(self._locks):
            if f in self._owned:
                f.truncate(0)  # no stale pid for the next refusal message
            f.close()  # closing releases the flock
        self._locks.clear()

    def _lock_file(self, name: str):
        return open(self.path.parent / name, "a+")  # noqa: SIM115 - a lock lives as long as its file object

    def _take_run_lock(self) -> bool:
        """Lock the folder for this run; True when no other run (shard) of the stage holds it."""
        run = self._lock_file(f".{self.path.name}.run.lock")
        self._locks.append(run)
        try:
            fcntl.flock(run, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except BlockingIOError:
            if self.n == 1:
                self._refuse(run)
            alone = False
        if self.n > 1:  # shards share the folder: shared run lock + an exclusive lock per shard
            try:  # (from exclusive when alone: newcomers wait on the setup lock until the folder is ready)
                fcntl.flock(run, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # an unsharded run holds it
                self._refuse(run)
            mine = self._lock_file(f".{self.path.name}.shard-{self.i}-of-{self.n}.lock")
            self._locks.append(mine)
            try:
                fcntl.flock(mine, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._refuse(mine, f"shard {self.i}/{self.n} of this stage")
            self._own(mine)
        else:
            self._own(run)
        return alone

    def _own(self, f) -> None:
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._owned.append(f)

    def _refuse(self, f, what: str = "this stage") -> None:
        f.seek(0)
        pid = f.read().strip()
        raise StageError(f"{self.path} is in use by another run of {what}{f' (pid {pid})' if pid else ''}; wait for "
                         "it to finish or stop it, then run again")

    def _check(self, alone: bool) -> None:
        marker = self.path / MARKER
        old = json.loads(marker.read_text()) if marker.is_file() else None
        if old is not None and old.get("fingerprint") == self.fingerprint:
            print(f"[lpoi] {self.path}: same inputs, params, code and models as the last run; resuming "
                  "(finished samples are skipped)", file=sys.stderr)
            return
        if not alone:
            raise StageError(f"{self.path}: other shards of this stage are running with other inputs or params; "
                             "wait for them, or stop them and run all shards again")
        if self.path.exists() and any(self.path.iterdir()):
            print(f"[lpoi] {self.path}: {_changed(old, self.parts, self.path)}; emptying the folder and starting "
                  "afresh", file=sys.stderr)
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(marker, {"stage": self.stage, "fingerprint": self.fingerprint, "parts": self.parts})

    def _clean_temp(self) -> None:
        junk = [p for p in self.path.rglob(".*.tmp") if p.is_file()]
        for p in junk:
            p.unlink()
        if junk:
            print(f"[lpoi] {self.path}: removed {len(junk)} temp file(s) a killed run left behind", file=sys.stderr)

    # -- results
    def finish(self, metrics_path: str | os.PathLike | None, metrics: dict, timings: dict) -> None:
        """Write the stage's metrics (whole-output results) and its timings file (see the module docstring)."""
        timings = {"stage": self.stage, "wall_seconds": time.perf_counter() - self.t0, **timings}
        if metrics_path:
            write_metrics(metrics_path, metrics)
            write_timings(metrics_path, timings)
        keep = ("resumed", "written", "rejected", "seconds", "samples_per_s")
        print(f"[lpoi] {self.stage}: " + ", ".join(f"{k} {_fmt(timings[k])}" for k in keep if k in timings),
              file=sys.stderr)


def _changed(old: dict | None, parts: dict[str, str], folder: Path | None = None) -> str:
    """Why a folder is emptied, in the words of params.yaml and dvc.yaml (see :func:`describe_changes`)."""
    if old is None or "parts" not in old:
        note = folder / PLACEHOLDER if folder is not None else None
        if note is not None and note.is_file():  # e.g. world: none's no-op: nothing to reuse
            first = (note.read_text(encoding="utf-8", errors="replace").splitlines() or [""])[0].strip()
            return f"the last run left only a placeholder ({first or PLACEHOLDER})"
        return "no record of the run that made this folder (an older version of the pipeline, or made by hand)"
    return describe_changes(old["parts"], parts) + " changed since the last run"


_KINDS = (("param", "params"), ("code", "code"), ("data", "input data"), ("model", "model"))


def describe_changes(before: dict[str, str], after: dict[str, str], most: int = 3) -> str:
    """What differs between two fingerprints' parts, grouped the way a user set them up: ``params
    train.beta; code lpoi/train/recipe.py; model tiny/idefics2`` (``dep`` parts are code under
    ``lpoi/``, ``stages/``, ``conf/`` and ``hydra_plugins/``, input data otherwise); at most ``most``
    names per group, then a count."""
    groups: dict[str, list[str]] = {k: [] for k, _ in _KINDS}
    for key in sorted(set(before) | set(after)):
        if before.get(key) == after.get(key):
            continue
        kind, _, name = key.partition(" ")
        if kind == "dep":
            code = name.split("/")[0] in ("lpoi", "stages", "conf", "hydra_plugins") or name.endswith(".py")
            kind = "code" if code else "data"
        if key not in before:
            name += " (newly declared)"
        elif key not in after:
            name += " (no longer declared)"
        groups.setdefault(kind, []).append(name)
    words = dict(_KINDS)
    out = [f"{words.get(k, k)} " + ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")
           for k, names in groups.items() if names]
    return "; ".join(out) or "nothing"


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def open_stage(name: str, args, *, models=(), shard: str = "0/1") -> StageDir:
    """The :class:`StageDir` of stage ``name`` for a run of its script with parsed ``args`` (``args.params``:
    the params file): the entry's persisted output, where this run writes it, under its fingerprint."""
    import yaml

    entry = stage_entry(name, args.params)
    out = actual_path(entry, entry.persisted(), args)
    raw = yaml.safe_load(Path(args.params).read_text(encoding="utf-8")) or {}
    return StageDir(out, fingerprint_parts(entry, args, raw, models), shard=shard, stage=name)


def hold_stage(name: str, args, *, models=(), shard: str | None = None) -> Path:
    """:func:`open_stage` entered for the rest of the process (its lock is released at exit); the folder.

    Under a multi-process launcher (``torchrun``/``accelerate launch`` set ``RANK`` and ``WORLD_SIZE``)
    each rank takes the folder as shard ``RANK/WORLD_SIZE``: the ranks of one run share it, and a second
    run is refused.
    """
    import atexit

    if shard is None:
        shard = f"{os.environ.get('RANK', '0')}/{os.environ.get('WORLD_SIZE', '1')}"
    st = open_stage(name, args, models=models, shard=shard).__enter__()
    atexit.register(st.__exit__)
    return st.path


# ---------------------------------------------------------------------------------------------- helpers


def pick_device(name: str | None = "auto", key: str = "model.device") -> str:
    """``"auto"`` (or None / ``""``) -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; anything else unchanged,
    once this machine is known to have it (a :class:`StageError` naming ``key`` otherwise: torch's own error
    comes later, from deep inside a model load, and never names the parameter)."""
    import torch

    if name in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    name = str(name)
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.partition(":")[2] or 0)
        if index >= count:
            have = f"only {count} CUDA device(s)" if count else "no CUDA device (torch.cuda.is_available() is False)"
            raise StageError(f"{key} is {name!r} but this machine has {have}; use {key}: auto or cpu")
    elif name == "mps" and not torch.backends.mps.is_available():
        raise StageError(f"{key} is 'mps' but this machine has no MPS device; use {key}: auto or cpu")
    return name


def write_metrics(path: str | os.PathLike, metrics: dict[str, Any]) -> None:
    """One flat-ish JSON per stage under metrics/ (``dvc metrics diff`` reads them): deterministic results."""
    atomic_write_json(path, _round(metrics))


def timings_path(metrics_path: str | os.PathLike) -> Path:
    p = Path(metrics_path)
    return p.with_name(f"{p.stem}.timings.json")


def write_timings(metrics_path: str | os.PathLike, timings: dict[str, Any]) -> None:
    """Timings, throughput and this invocation's counts beside the metrics file (``<stem>.timings.json``)."""
    atomic_write_json(timings_path(metrics_path), _round(timings))


def _round(v: Any) -> Any:
    # 6 significant digits: diffs show real changes, not float noise
    if isinstance(v, float):
        return float(f"{v:.6g}")
    if isinstance(v, dict):
        return {k: _round(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_round(x) for x in v]
    return v
