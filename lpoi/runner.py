"""One per-sample runner for the stages that persist work: detect, segment, verify, lists, reference, generate.

A stage supplies two functions and the runner does everything else:

* ``load(rows) -> block`` — the CPU part of a block of input rows (decode images, tokenise, preprocess);
  runs ``workers`` blocks ahead on prefetch threads while the model works on the current one;
* ``process(block, rows) -> [outcome per row]`` — the model part; an outcome is a result row (``dict``),
  a :class:`Reject`, or a :class:`Write` (a row plus the files it owns and invocation-only counts).

The runner owns pending-row selection (finished ids are skipped; a block whose rows are all finished is
not even loaded), blocking, the write/reject bookkeeping in a :class:`StageOutput`, file writing on worker
threads (a row is written only once its files are on disk), counting (:class:`Tally`), progress and the
``limit`` stop (a quick subset, and the tests' stand-in for a kill).

**Blocks.** A block is ``batch_size`` *consecutive input rows* (a new one also wherever ``cut(row)``
changes), so blocks depend only on the input. By default a block is computed whole even when an earlier
run finished some of its rows: a model's output can depend on its batch mates (padding changes the shapes,
hence the float rounding), so this is what makes a resumed run byte-identical to an uninterrupted one. ``whole=False``
(or a function of the block saying so) computes only the unfinished rows of such a block — for work
that does not depend on batch mates (building one sample's list; greedy generation, tested
batch-invariant).

**Outputs** (:class:`StageOutput`): one flushed, fsynced JSONL line per sample in the result file or
the rejects file. With ``journal=True`` (what the stage scripts use) every line
is followed by a journal line with its sha256 and the sha256 of every file the row owns; on open, the
rows are checked against the journal and each file is cut at its first row that is not exactly what the
stage wrote (a hand edit, a replaced or truncated image, a row whose journal line a kill prevented) — that
row and those after it are recomputed, and the stage says how many.

Every number the runner counts from rows (:class:`Tally`) can be recomputed from the output files alone
(:func:`summarize`), which is how a stage's metrics describe its whole output after a resume.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpoi.io import JsonlAppender, hashable_key, atomic_write_bytes, atomic_write_text, read_jsonl, sha256_file

__all__ = ["EngineError", "Reject", "Runner", "ShardError", "StageOutput", "Tally", "Write", "blocks_of", "count_rows",
           "fault_point", "parse_shard", "prefetch_map", "run_file", "set_engine", "summarize"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reject:
    """A sample the stage drops, with a machine-readable ``reason`` and a human ``detail``."""

    reason: str
    detail: str
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Write:
    """A result row, the files it owns and counts that only this invocation knows (e.g. generated tokens).

    ``files`` maps each path (inside the output folder) to a function that writes it — run on the
    runner's writer threads — or to ``None`` when it is already on disk.
    """

    row: dict
    files: Mapping[Path, Callable[[], Any] | None] = field(default_factory=dict)
    counts: Mapping[str, int] = field(default_factory=dict)


def _starts_with(path: Path, prefix: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(prefix)) == prefix
    except FileNotFoundError:
        return False


def _write_and_hash(path: Path, write: Callable[[], Any] | None) -> str:
    if write is not None:
        write()
    return sha256_file(path)


# ---------------------------------------------------------------------------------------------- engine


class EngineError(RuntimeError):
    """The engine that computes the blocks failed (Ray missing, a worker dead after its retries)."""


_ENGINE = None  # the stage's ``compute`` section (set_engine); None: every block computed in this process


def set_engine(compute) -> None:
    """Compute this process's per-sample blocks with ``compute.engine`` (the stage scripts of the per-sample
    stages call this with ``params.compute``; ``None``: locally). Read when a runner runs, so only the stages
    that run one read (and declare) ``compute.engine``."""
    global _ENGINE
    _ENGINE = compute


def _computed(load, process, blocks, workers: int, desc: str):
    """``(rows, outcomes)`` per block, in order: here (``load`` on ``workers`` prefetch threads) or on Ray."""
    if _ENGINE is not None and _ENGINE.engine == "ray":
        from lpoi.ray_engine import map_blocks

        return map_blocks(load, process, blocks, _ENGINE, desc)
    return ((rows, process(loaded, rows)) for rows, loaded in prefetch_map(lambda b: (b, load(b)), blocks,
                                                                            workers=workers))


# ---------------------------------------------------------------------------------------------- blocks
# (ranks of one multi-process run -- the train stage under accelerate launch -- share a stage folder as
# ``i/n`` shares of it: lpoi.stage.StageDir)


class ShardError(ValueError):
    """A bad ``i/n`` share spec."""


def parse_shard(spec: str | tuple[int, int]) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; a ``(i, n)`` tuple is checked the same way.

    >>> parse_shard("1/4")
    (1, 4)
    """
    if isinstance(spec, tuple) and len(spec) == 2:
        i, n = spec
    elif isinstance(spec, str):
        parts = spec.strip().split("/")
        if len(parts) != 2:
            raise ShardError(f"shard must look like 'i/n' (e.g. '0/4'), got {spec!r}")
        try:
            i, n = int(parts[0]), int(parts[1])
        except ValueError:
            raise ShardError(f"shard must be two integers 'i/n' (e.g. '0/4'), got {spec!r}") from None
    else:
        raise ShardError(f"shard must be a string 'i/n', got {spec!r}")
    if isinstance(i, bool) or isinstance(n, bool) or not isinstance(i, int) or not isinstance(n, int):
        raise ShardError(f"shard must be two integers, got {spec!r}")
    if n < 1:
        raise ShardError(f"shard count n must be >= 1, got {spec!r}")
    if not 0 <= i < n:
        raise ShardError(f"shard index i must be in [0, n), got {spec!r}")
    return i, n


def blocks_of(rows: Iterable[dict], size: int, cut: Callable[[dict], Any] | None = None) -> Iterator[list[dict]]:
    """Consecutive blocks of at most ``size`` rows of ``rows`` (a new block also wherever ``cut(row)``
    changes). The blocks depend only on the input."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    block: list[dict] = []
    for r in rows:
        if block and (len(block) >= size or (cut is not None and cut(r) != cut(block[0]))):
            yield block
            block = []
        block.append(r)
    if block:
        yield block


def count_rows(path: str | os.PathLike) -> int:
    """The rows of the JSONL ``path`` (a cheap line count, for progress bars)."""
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def prefetch_map(fn, items, workers: int = 1, depth: int = 2) -> Iterator:
    """``map(fn, items)`` computed ``depth`` items ahead in ``workers`` threads, results in order.

    Overlaps CPU work (image decoding, resizing, tokenising) with the accelerator's work on the current
    batch. ``workers=0`` is a plain lazy map. The input is consumed lazily (at most ``depth`` items in
    flight), so memory stays bounded.
    """
    if workers <= 0:
        yield from map(fn, items)
        return
    it = iter(items)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        try:
            for item in it:
                pending.append(pool.submit(fn, item))
                if len(pending) > depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()


# ---------------------------------------------------------------------------------------------- fault points


def fault_point(name: str) -> None:
    """Test hook: ``LPOI_FAULT=<name>:<n>[:stop]`` SIGKILLs (or SIGSTOPs) this process at the n-th time
    it passes point ``name`` — a real kill at an exact place (``row``: a line written but not yet
    journaled; ``journal``: a row and its journal line written; ``block``: a block computed, nothing of
    it written)."""
    spec = os.environ.get("LPOI_FAULT")
    if not spec:
        return
    point, _, rest = spec.partition(":")
    if point != name:
        return
    n, _, action = rest.partition(":")
    _FAULT_COUNTS[name] += 1
    if _FAULT_COUNTS[name] == int(n or 1):
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGSTOP if action == "stop" else signal.SIGKILL)


_FAULT_COUNTS: Counter = Counter()


# ---------------------------------------------------------------------------------------------- outputs


def _line_id(line: bytes, key: str) -> Any:
    try:
        return hashable_key(json.loads(line).get(key))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return _BAD


_BAD = object()


class StageOutput:
    """A stage's resumable outputs: result rows in ``out_path``, reject rows in ``rejects_path``.

    Both are append-only JSONL files (one flushed line per sample; a partial last line from a kill is cut
    off on open). ``done(id)`` is true
    for a sample found in either file, so a re-run skips it. ``limit`` stops a run after that many new
    rows. ``header``: a fixed first line of ``out_path`` (e.g. the reference stage's meta); a file that
    starts otherwise is started afresh. ``journal``: keep and check the journal described in the module
    docstring (``.<out stem>.journal.jsonl`` beside ``out_path``).
    """

    def __init__(self, out_path, rejects_path, *, limit: int | None = None, key: str = "id",
                 header: dict | None = None, journal: bool = False):
        self.out_path = Path(out_path)
        self.rejects_path = Path(rejects_path) if rejects_path is not None else None
        self.key, self.limit = key, limit
        self.root = self.out_path.parent
        self.journal_path = self.root / f".{self.out_path.stem}.journal.jsonl" if journal else None
        self._header = None if header is None else (json.dumps(header, ensure_ascii=False) + "\n").encode()
        self.dropped = self._check()
        self._out = JsonlAppender(self.out_path, key=key)
        self._rej = JsonlAppender(self.rejects_path, key=key) if self.rejects_path is not None else None
        self._done = (set(self._out.done) | (set(self._rej.done) if self._rej else set())) - {None}
        self._jf = open(self.journal_path, "a", encoding="utf-8") if journal else None  # noqa: SIM115
        self.resumed = len(self._done)
        self.written = self.rejected = 0

    # -- checking what an earlier run left
    def _files(self) -> list[Path]:
        return [p for p in (self.out_path, self.rejects_path) if p is not None]

    def _check(self) -> int:
        """Cut each file at its first row that is not as written; return how many rows were dropped."""
        if self._header is not None:
            if not _starts_with(self.out_path, self._header):
                if self.rejects_path is not None:  # made under other settings (or never): start afresh
                    self.rejects_path.unlink(missing_ok=True)
                atomic_write_bytes(self.out_path, self._header)
        if self.journal_path is None:
            return 0
        entries = {}
        if self.journal_path.exists():
            for e in read_jsonl_tolerant(self.journal_path):
                entries[(e.get("file"), hashable_key(e.get("id")))] = e
        kept, dropped = [], 0
        for path in self._files():
            if path.exists():
                good, bad = self._verified_prefix(path, entries)
                kept += good
                dropped += bad
        _rewrite(self.journal_path, kept)
        if dropped:
            print(f"[lpoi] {self.root}: {dropped} row(s) are not exactly what this stage wrote (edited, or "
                  "cut short by a kill); recomputing them", file=sys.stderr)
        return dropped

    def _verified_prefix(self, path: Path, entries: dict) -> tuple[list[dict], int]:
        raw = path.read_bytes()
        lines = raw[: raw.rfind(b"\n") + 1].splitlines(keepends=True)
        skip = 1 if path == self.out_path and self._header is not None and lines[:1] == [self._header] else 0
        good, seen, cut = [], set(), len(lines)
        for i, line in enumerate(lines[skip:], skip):
            sid = _line_id(line, self.key)
            e = entries.get((path.name, sid))
            if sid is _BAD or sid in seen or e is None or e.get("sha256") != _sha(line) or not self._files_ok(e):
                cut = i
                break
            seen.add(sid)
            good.append(e)
        if cut < len(lines) or len(raw) != sum(map(len, lines)):
            with open(path, "r+b") as f:
                f.truncate(sum(map(len, lines[:cut])))
        return good, len(lines) - cut

    def _files_ok(self, entry: dict) -> bool:
        for rel, digest in (entry.get("files") or {}).items():
            p = self.root / rel
            if not p.is_file() or sha256_file(p) != digest:
                return False
        return True

    # -- writing
    def done(self, sample_id) -> bool:
        return hashable_key(sample_id) in self._done

    @property
    def full(self) -> bool:
        return self.limit is not None and self.written + self.rejected >= self.limit

    def write(self, row: dict, files: Iterable[Path] | Mapping[Path, str] = ()) -> None:
        """Append ``row``; ``files``: the files it owns, or a mapping of each to its sha256 when known."""
        self._append(self._out, row, files)
        self.written += 1

    def reject(self, sample_id, reason: str, detail: str, **extra) -> None:
        if self._rej is None:
            raise RuntimeError(f"sample {sample_id!r} rejected ({reason}: {detail}) but the stage has no rejects file")
        self._append(self._rej, {self.key: sample_id, "reason": reason, "detail": detail, **extra}, ())
        self.rejected += 1

    def _append(self, app: JsonlAppender, row: dict, files: Iterable[Path] | Mapping[Path, str]) -> None:
        line = app.write(row).encode()
        sid = row.get(self.key)
        self._done.add(hashable_key(sid))
        if self._jf is None:
            return
        fault_point("row")
        entry: dict[str, Any] = {"file": app.path.name, "id": sid, "sha256": _sha(line)}
        if files:
            digests = files if isinstance(files, Mapping) else {p: sha256_file(p) for p in files}
            entry["files"] = {Path(os.path.relpath(p, self.root)).as_posix(): d for p, d in digests.items()}
        self._jf.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._jf.flush()
        os.fsync(self._jf.fileno())
        fault_point("journal")

    def close(self) -> None:
        self._out.close()
        if self._rej is not None:
            self._rej.close()
        if self._jf is not None:
            self._jf.close()

    def __enter__(self) -> StageOutput:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_jsonl_tolerant(path: Path) -> Iterator[dict]:
    """The complete lines of a journal (a partial last line, or a line a kill garbled, is skipped)."""
    raw = path.read_bytes()
    for line in raw[: raw.rfind(b"\n") + 1].splitlines():
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(obj, dict):
            yield obj


def _rewrite(path: Path, entries: list[dict]) -> None:
    text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)


# ---------------------------------------------------------------------------------------------- counting


def _add(into: dict, counts: Mapping[str, Any]) -> None:
    for k, v in counts.items():
        if isinstance(v, Mapping):
            _add(into.setdefault(k, {}), v)
        else:
            into[k] = into.get(k, 0) + v


class Tally:
    """Counts over result and reject rows: ``written``, ``rejected``, ``rejects_by_reason`` and whatever
    ``count(row)`` / ``count_reject(row)`` return (nested dicts are summed key by key), starting from
    ``zero`` (so a key is there even when no row counted)."""

    def __init__(self, count: Callable[[dict], Mapping] | None = None,
                 count_reject: Callable[[dict], Mapping] | None = None, zero: Mapping[str, Any] = ()):
        import copy

        self.count, self.count_reject = count, count_reject
        self.counts: dict[str, Any] = {"written": 0, "rejected": 0, "rejects_by_reason": {}, **copy.deepcopy(dict(zero))}

    def wrote(self, row: dict, extra: Mapping[str, int] = ()) -> None:
        self.counts["written"] += 1
        if self.count is not None:
            _add(self.counts, self.count(row))
        _add(self.counts, dict(extra))

    def rejected(self, row: dict) -> None:
        self.counts["rejected"] += 1
        _add(self.counts["rejects_by_reason"], {row["reason"]: 1})
        if self.count_reject is not None:
            _add(self.counts, self.count_reject(row))

    def as_dict(self) -> dict[str, Any]:
        out = {**self.counts, "samples": self.counts["written"] + self.counts["rejected"]}
        out["rejects_by_reason"] = dict(sorted(out["rejects_by_reason"].items()))
        return out


def run_file(in_path, out: StageOutput, load: Callable[[list[dict]], Any], process: Callable[[Any, list[dict]], list],
             *, tally: Callable[[], Tally], batch_size: int, workers: int = 1, progress: bool = True,
             desc: str = "") -> dict[str, Any]:
    """A :class:`Runner` over the rows of the JSONL ``in_path`` into ``out`` (closed at the end).

    Returns the invocation's counts and timings, ``"output"`` (``tally()`` over the whole output, see
    :func:`summarize`) and ``"out_path"``.
    """
    with out:
        runner = Runner(out, batch_size, workers=workers, progress=progress, desc=desc, tally=tally())
        stats = runner.run(read_jsonl(in_path), load, process, total=count_rows(in_path))
    stats["output"] = summarize(out.out_path, out.rejects_path, tally())
    stats["out_path"] = str(out.out_path)
    log.info("%s: %s", desc, stats)
    return stats


def summarize(out_path, rejects_path, tally: Tally, *, skip_header: bool = False) -> dict[str, Any]:
    """``tally`` over every row of the output files: the stage's whole output, however many runs made it."""
    for i, row in enumerate(read_jsonl(out_path)):
        if not (skip_header and i == 0):
            tally.wrote(row)
    if rejects_path is not None and Path(rejects_path).exists():
        for row in read_jsonl(rejects_path):
            tally.rejected(row)
    return tally.as_dict()


# ---------------------------------------------------------------------------------------------- the runner


@dataclass
class Runner:
    """Runs ``load``/``process`` over input rows into ``out`` (see the module docstring)."""

    out: StageOutput
    batch_size: int
    workers: int = 1
    """Prefetch threads for ``load`` (0: load in the main thread); also the file-writer threads."""
    whole: bool | Callable[[list[dict]], bool] = True
    """Recompute a block whole when an earlier run finished some of its rows (or only its unfinished rows)."""
    cut: Callable[[dict], Any] | None = None
    progress: bool = True
    desc: str = ""
    tally: Tally = field(default_factory=Tally)

    def run(self, rows: Iterable[dict], load: Callable[[list[dict]], Any],
            process: Callable[[Any, list[dict]], list], total: int | None = None) -> dict[str, Any]:
        """Process every unfinished row of ``rows``; return this invocation's counts and timings."""
        from tqdm.auto import tqdm

        t0 = time.perf_counter()
        self.skipped = 0
        with tqdm(total=total, disable=not self.progress, desc=self.desc, unit="sample") as self._bar, \
                ThreadPoolExecutor(max_workers=max(1, self.workers)) as self._writer:
            pending: deque = deque()  # (rows, outcomes, futures) per block, in input order
            computed = _computed(load, process, self._blocks(rows), self.workers, self.desc)
            try:
                for block_rows, outcomes in computed:
                    if len(outcomes) != len(block_rows):
                        raise RuntimeError(f"{self.desc}: {len(outcomes)} outcomes for a block of {len(block_rows)} rows")
                    fault_point("block")
                    pending.append((block_rows, outcomes, self._start_files(block_rows, outcomes)))
                    while pending and (len(pending) > 1 or all(f.done() for f in pending[0][2].values())):
                        if self._flush(*pending.popleft()):
                            break
                    if self.out.full:
                        break
            finally:
                computed.close()  # a Ray pool stops with it (the limit stops early)
            while pending and not self.out.full:
                self._flush(*pending.popleft())
        secs = time.perf_counter() - t0
        stats = {**self.tally.as_dict(), "skipped": self.skipped, "resumed": self.out.resumed,
                 "unverified": self.out.dropped, "seconds": secs}
        stats["samples_per_s"] = stats["samples"] / secs if secs > 0 else None
        return stats

    def _blocks(self, rows: Iterable[dict]) -> Iterator[list[dict]]:
        for block in blocks_of(rows, self.batch_size, self.cut):
            todo = [r for r in block if not self.out.done(r[self.out.key])]
            if not todo:  # finished: skipped without loading anything
                self._skip(len(block))
            elif len(todo) == len(block) or (self.whole(block) if callable(self.whole) else self.whole):
                yield block
            else:
                self._skip(len(block) - len(todo))
                yield todo

    def _skip(self, n: int) -> None:
        self.skipped += n
        self._bar.update(n)

    def _start_files(self, rows: list[dict], outcomes: list) -> dict[Path, Future]:
        """Write (when not on disk yet) and hash every file the block's new rows own, on the writer threads."""
        futs = {}
        for row, res in zip(rows, outcomes):
            if isinstance(res, Write) and not self.out.done(row[self.out.key]):
                futs.update({p: self._writer.submit(_write_and_hash, p, fn) for p, fn in res.files.items()})
        return futs

    def _flush(self, rows: list[dict], outcomes: list, futs: dict[Path, Future]) -> bool:
        """Write a block's rows once its files are on disk; True when ``limit`` is reached."""
        digests = {p: f.result() for p, f in futs.items()}
        for row, res in zip(rows, outcomes):
            sid = row[self.out.key]
            if self.out.done(sid):  # finished by an earlier run (this block was partly done)
                self._skip(1)
                continue
            if isinstance(res, Reject):
                self.out.reject(sid, res.reason, res.detail, **res.extra)
                self.tally.rejected({"reason": res.reason, "detail": res.detail, **res.extra})
            else:
                w = res if isinstance(res, Write) else Write(res)
                self.out.write(w.row, {p: digests[p] for p in w.files})
                self.tally.wrote(w.row, w.counts)
            self._bar.update(1)
            if self.out.full:
                return True
        return False
