"""Shard specs, deterministic assignment (by block index and by hash), in-order merge, runner helpers."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from lpoi.io import read_jsonl
from lpoi.listgen.shard import (
    ShardError,
    StageOutput,
    blocks_of,
    in_shard,
    merge_shards,
    parse_shard,
    prefetch_map,
    shard_path,
)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("spec,expected", [("0/1", (0, 1)), ("3/4", (3, 4)), (" 1/2 ", (1, 2)), ((2, 3), (2, 3))])
def test_parse_shard_ok(spec, expected):
    assert parse_shard(spec) == expected


@pytest.mark.parametrize("spec", ["4/4", "-1/4", "1/0", "1", "a/b", "1/2/3", "", None, (1, 1), ("0", 2), 3])
def test_parse_shard_rejects_bad_specs(spec):
    with pytest.raises(ShardError):
        parse_shard(spec)


def test_in_shard_by_block_index_by_hand():
    """block=2, n=3: indices 0,1 -> block 0 -> shard 0; 2,3 -> shard 1; 4,5 -> shard 2; 6,7 -> shard 0;
    8,9 -> shard 1; 10,11 -> shard 2. So shard 1/3 holds [2, 3, 8, 9]."""
    got = [k for k in range(12) if in_shard(f"id{k}", k, "1/3", block=2)]
    assert got == [2, 3, 8, 9]
    for by in ("index", "hash"):
        owners = [[s for s in range(3) if in_shard(f"id{k}", k, f"{s}/3", by=by, block=2)] for k in range(50)]
        assert all(len(o) == 1 for o in owners)  # a partition: every row in exactly one shard
    assert all(in_shard("x", k, "0/1") for k in range(5))
    with pytest.raises(ShardError):
        in_shard("x", 0, "0/2", by="random")


def test_hash_assignment_is_process_independent():
    """sha256-based, so a fresh interpreter (a different hash salt) assigns the same way."""
    ids = [f"sample-{k}" for k in range(40)]
    here = [next(s for s in range(4) if in_shard(i, 0, f"{s}/4", by="hash")) for i in ids]
    code = ("from lpoi.listgen.shard import in_shard; ids=[f'sample-{k}' for k in range(40)]; "
            "print([next(s for s in range(4) if in_shard(i, 0, f'{s}/4', by='hash')) for i in ids])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}, cwd=str(__import__("pathlib").Path(__file__).parents[2]))
    assert json.loads(out.stdout) == here
    expected = [int.from_bytes(hashlib.sha256(i.encode()).digest()[:8], "big") % 4 for i in ids]
    assert here == expected
    assert len(set(here)) == 4  # 40 ids spread over all 4 shards


def test_shard_path_names():
    assert shard_path("data/detect.jsonl", "0/1").as_posix() == "data/detect.jsonl"
    assert shard_path("data/detect.jsonl", "2/4").as_posix() == "data/detect.shard-2-of-4.jsonl"
    assert shard_path("x/rejects", "0/2").as_posix() == "x/rejects.shard-0-of-2"


def test_blocks_of_whole_input_blocks(tmp_path):
    """7 rows, block 3: blocks [0,1,2] [3,4,5] [6]; shard 0/2 gets blocks 0 and 2, shard 1/2 block 1."""
    src = tmp_path / "in.jsonl"
    _write(src, [{"id": str(k)} for k in range(7)])
    ids = lambda shard: [[r["id"] for r in b] for b in blocks_of(read_jsonl(src), shard, 3)]
    assert ids("0/1") == [["0", "1", "2"], ["3", "4", "5"], ["6"]]
    assert ids("0/2") == [["0", "1", "2"], ["6"]]
    assert ids("1/2") == [["3", "4", "5"]]
    with pytest.raises(ShardError):
        list(blocks_of(read_jsonl(src), "0/1", 0))


def test_merge_shards_in_order_source_order(tmp_path):
    order = tmp_path / "prepared.jsonl"
    _write(order, [{"id": i} for i in "abcdefg"])
    a, b = tmp_path / "s0.jsonl", tmp_path / "s1.jsonl"
    _write(a, [{"id": "a", "v": 1}, {"id": "e", "v": 5}, {"id": "f", "v": 6}])
    _write(b, [{"id": "b", "v": 2}, {"id": "d", "v": 4}])  # "c" and "g" were rejected: in neither file
    out = tmp_path / "merged.jsonl"
    stats = merge_shards([a, b], order, out)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "d", "e", "f"]
    assert [r["v"] for r in rows] == [1, 2, 4, 5, 6]
    assert stats == {"rows": 5, "per_shard": [3, 2]}
    # the argument order of the shard files does not matter
    merge_shards([b, a], order, tmp_path / "m2.jsonl")
    assert (tmp_path / "m2.jsonl").read_bytes() == out.read_bytes()


def test_merge_shards_errors_leave_nothing(tmp_path):
    order = tmp_path / "prepared.jsonl"
    _write(order, [{"id": i} for i in "abcd"])
    a = tmp_path / "s0.jsonl"
    out = tmp_path / "merged.jsonl"
    _write(a, [{"id": "a"}, {"id": "zz"}])
    with pytest.raises(ShardError, match="zz"):
        merge_shards([a], order, out)
    _write(a, [{"id": "c"}, {"id": "a"}])  # out of order
    with pytest.raises(ShardError, match="out of order"):
        merge_shards([a], order, out)
    b = tmp_path / "s1.jsonl"
    _write(a, [{"id": "a"}, {"id": "b"}])
    _write(b, [{"id": "b"}])
    with pytest.raises(ShardError, match="more than one shard"):
        merge_shards([a, b], order, out)
    with pytest.raises(ShardError, match="not found"):
        merge_shards([a, tmp_path / "missing.jsonl"], order, out)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".merged")]  # no temp file left


def test_merge_cli(tmp_path):
    order = tmp_path / "p.jsonl"
    _write(order, [{"id": i} for i in "ab"])
    _write(tmp_path / "s0.jsonl", [{"id": "b"}])
    _write(tmp_path / "s1.jsonl", [{"id": "a"}])
    from lpoi.listgen.shard import main

    main(["merge", "--order", str(order), "--out", str(tmp_path / "m.jsonl"), str(tmp_path / "s0.jsonl"),
          str(tmp_path / "s1.jsonl")])
    assert (tmp_path / "m.jsonl").read_text() == '{"id": "a"}\n{"id": "b"}\n'


def test_prefetch_map_order_and_errors():
    assert list(prefetch_map(lambda x: x * x, range(20), workers=3, depth=4)) == [x * x for x in range(20)]
    assert list(prefetch_map(lambda x: x + 1, range(5), workers=0)) == [1, 2, 3, 4, 5]

    def boom(x):
        if x == 3:
            raise ValueError("bad item 3")
        return x

    with pytest.raises(ValueError, match="bad item 3"):
        list(prefetch_map(boom, range(10), workers=2))


def test_stage_output_resume_and_limit(tmp_path):
    out, rej = tmp_path / "o.jsonl", tmp_path / "r.jsonl"
    with StageOutput(out, rej, "0/1", limit=2) as so:
        so.write({"id": "a"})
        assert not so.full
        so.reject("b", "no_detection", "nothing")
        assert so.full
    with open(out, "a") as f:
        f.write('{"id": "c", "trunc')  # a kill mid-line
    with StageOutput(out, rej, "0/1") as so:
        assert so.done("a") and so.done("b") and not so.done("c")
        assert so.resumed == 2
    assert out.read_text() == '{"id": "a"}\n'
    assert json.loads(rej.read_text()) == {"id": "b", "reason": "no_detection", "detail": "nothing"}
    with StageOutput(out, None, "1/2") as so:
        assert so.out_path.name == "o.shard-1-of-2.jsonl"
        with pytest.raises(RuntimeError, match="no rejects file"):
            so.reject("x", "r", "d")
