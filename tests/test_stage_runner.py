"""The per-sample runner (lpoi/runner.py): whole blocks, pending-only batching, files before rows, limits,
tallies equal to a recount of the files, and the journal that refuses to adopt edited outputs."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest

from lpoi.runner import Reject, Runner, StageOutput, Tally, Write, summarize


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _input(n: int) -> list[dict]:
    return [{"id": f"s{k}", "x": k} for k in range(n)]


class Job:
    """A stand-in stage: a "model" whose output depends on the block (like padding), a reject for x % 5 == 4."""

    def __init__(self):
        self.loaded: list[list[str]] = []

    def load(self, rows):
        self.loaded.append([r["id"] for r in rows])
        return [r["x"] for r in rows]

    def process(self, xs, rows):
        mates = sum(xs)  # each result depends on its batch mates
        return [Reject("odd", f"x={x}", {"x": x}) if x % 5 == 4 else {"id": r["id"], "y": x * 100 + mates}
                for x, r in zip(xs, rows)]


def _run(tmp, name, n=11, batch=3, **kw):
    job = Job()
    limit = kw.pop("limit", None)
    with StageOutput(tmp / name / "out.jsonl", tmp / name / "rej.jsonl", limit=limit,
                     journal=True) as out:
        stats = Runner(out, batch, progress=False, **kw).run(_input(n), job.load, job.process)
    return job, stats


def test_whole_blocks_make_a_resumed_run_identical(tmp_path):
    _, full = _run(tmp_path, "full")
    assert full["written"] == 9 and full["rejected"] == 2 and full["rejects_by_reason"] == {"odd": 2}
    job, first = _run(tmp_path, "part", limit=4)  # stops mid-block (blocks of 3)
    assert first["written"] + first["rejected"] == 4
    job, second = _run(tmp_path, "part")
    # block 0 was finished: never loaded again; block 1 (s3..s5) is loaded whole although s3 is done
    assert job.loaded[0] == ["s3", "s4", "s5"] and second["skipped"] == 4 and second["resumed"] == 4
    for f in ("out.jsonl", "rej.jsonl", ".out.journal.jsonl"):
        assert (tmp_path / "part" / f).read_bytes() == (tmp_path / "full" / f).read_bytes(), f
    # the whole output's counts equal the uninterrupted run's, whatever each invocation counted
    recount = summarize(tmp_path / "part" / "out.jsonl", tmp_path / "part" / "rej.jsonl", Tally())
    assert recount == {k: full[k] for k in recount}


def test_blocks_cut_on_mode_and_partly_done_blocks_whole_or_not(tmp_path):
    """Blocks of 3 input rows, cut where the mode changes: [0 1 2] [3] [4 5 6] [7 8]. Rows 1 and 5 are done."""
    rows = [{"id": k, "mode": "a" if k < 4 else "b"} for k in range(9)]
    for n, (whole, want) in enumerate(((False, [[0, 2], [3], [4, 6], [7, 8]]), (True, [[0, 1, 2], [3], [4, 5, 6], [7, 8]]),
                                       (lambda block: block[0]["mode"] == "b", [[0, 2], [3], [4, 5, 6], [7, 8]]))):
        seen = []

        def process(loaded, block, seen=seen):
            seen.append([r["id"] for r in block])
            return [{"id": r["id"]} for r in block]

        with StageOutput(tmp_path / f"{n}.jsonl", None) as out:
            out.write({"id": 1})
            out.write({"id": 5})
            stats = Runner(out, 3, whole=whole, cut=lambda r: r["mode"], progress=False).run(rows, lambda b: b, process)
        assert seen == want and stats["written"] == 7 and stats["skipped"] == 2


def test_files_are_on_disk_before_their_row_and_journaled(tmp_path):
    out_dir = tmp_path / "o"
    order = []

    def write_file(path: Path, data: bytes):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        order.append(("file", path.name))

    def process(xs, rows):
        return [Write({"id": r["id"]}, {out_dir / "f" / f"{r['id']}.bin": partial(write_file, out_dir / "f" / f"{r['id']}.bin",
                                                                         bytes([x]))}) for x, r in zip(xs, rows)]

    class Out(StageOutput):
        def write(self, row, files=()):
            assert all(Path(p).is_file() for p in files)
            order.append(("row", row["id"]))
            super().write(row, files)

    with Out(out_dir / "out.jsonl", None, journal=True) as out:
        Runner(out, 2, workers=2, progress=False).run(_input(5), lambda rows: [r["x"] for r in rows], process)
    assert [x for x in order if x[0] == "row"] == [("row", f"s{k}") for k in range(5)]
    for k in range(5):
        assert order.index(("file", f"s{k}.bin")) < order.index(("row", f"s{k}"))
    journal = _rows(out_dir / ".out.journal.jsonl")
    assert [list(e["files"]) for e in journal] == [[f"f/s{k}.bin"] for k in range(5)]


def _journaled(tmp_path: Path, n: int = 5) -> Path:
    d = tmp_path / "o"
    with StageOutput(d / "out.jsonl", d / "rej.jsonl", journal=True) as out:
        for k in range(n):
            (d / f"{k}.png").write_bytes(bytes([k]) * 10)
            if k == 2:
                out.reject(f"s{k}", "bad", "detail")
            else:
                out.write({"id": f"s{k}", "v": k}, [d / f"{k}.png"])
    return d


def _reopen(d: Path) -> StageOutput:
    with StageOutput(d / "out.jsonl", d / "rej.jsonl", journal=True) as out:
        return out


def test_journal_keeps_what_was_written(tmp_path):
    d = _journaled(tmp_path)
    out = _reopen(d)
    assert out.resumed == 5 and out.dropped == 0


@pytest.mark.parametrize("edit,dropped,kept", [
    # a hand-edited value: that row and the rows after it in that file are recomputed
    (lambda d: (d / "out.jsonl").write_text((d / "out.jsonl").read_text().replace('"v": 1', '"v": 7')), 3, {"s0", "s2"}),
    # a file a row owns replaced by another one (a magenta PNG) or truncated
    (lambda d: (d / "3.png").write_bytes(b"magenta"), 2, {"s0", "s1", "s2"}),
    (lambda d: (d / "0.png").write_bytes((d / "0.png").read_bytes()[:4]), 4, {"s2"}),
    (lambda d: (d / "4.png").unlink(), 1, {"s0", "s1", "s2", "s3"}),
    # killed between a row and its journal line: the last row is not trusted
    (lambda d: (d / ".out.journal.jsonl").write_text("".join(
        x for x in (d / ".out.journal.jsonl").read_text().splitlines(keepends=True) if '"s4"' not in x)), 1,
     {"s0", "s1", "s2", "s3"}),
    # a row nobody wrote, appended by hand
    (lambda d: open(d / "out.jsonl", "a").write('{"id": "s9", "v": 9}\n'), 1, {"s0", "s1", "s2", "s3", "s4"}),
    # an edited reject
    (lambda d: (d / "rej.jsonl").write_text((d / "rej.jsonl").read_text().replace("bad", "fine")), 1,
     {"s0", "s1", "s3", "s4"}),
])
def test_edited_outputs_are_never_adopted(tmp_path, capsys, edit, dropped, kept):
    d = _journaled(tmp_path)
    edit(d)
    out = _reopen(d)
    assert out.dropped == dropped
    assert {sid for sid in (f"s{k}" for k in range(10)) if out.done(sid)} == kept
    assert "not exactly what this stage wrote" in capsys.readouterr().err
    assert all(json.loads(x)["id"] in kept for f in ("out.jsonl", "rej.jsonl") for x in (d / f).read_text().splitlines())
    again = _reopen(d)  # the journal was cut to match: nothing more is dropped
    assert again.dropped == 0 and again.resumed == len(kept)


def test_header_line_and_files_made_under_another_header(tmp_path):
    p = tmp_path / "ref.jsonl"
    with StageOutput(p, None, header={"meta": 1}, journal=True) as out:
        out.write({"id": "a"})
    assert p.read_text().splitlines() == ['{"meta": 1}', '{"id": "a"}']
    with StageOutput(p, None, header={"meta": 1}, journal=True) as out:
        assert out.done("a") and out.resumed == 1
    with StageOutput(p, None, header={"meta": 2}, journal=True) as out:
        assert not out.done("a") and out.resumed == 0
    assert p.read_text() == '{"meta": 2}\n'


def test_tally_counts_nested_and_rejects():
    t = Tally(lambda r: {"src": {r["s"]: 1}, "n": r["n"]}, lambda r: {"tries": len(r.get("tries", []))},
              zero={"src": {}, "n": 0, "tries": 0})
    assert t.as_dict()["src"] == {} and t.as_dict()["samples"] == 0
    t.wrote({"s": "a", "n": 2})
    t.wrote({"s": "a", "n": 3}, {"tokens": 7})
    t.wrote({"s": "b", "n": 0})
    t.rejected({"reason": "z", "tries": [1, 2]})
    t.rejected({"reason": "y"})
    assert t.as_dict() == {"written": 3, "rejected": 2, "rejects_by_reason": {"y": 1, "z": 1}, "src": {"a": 2, "b": 1},
                           "n": 5, "tries": 2, "tokens": 7, "samples": 5}
