"""Split the model stages (detect, segment, verify) across GPUs or machines, and merge them back.

Also re-exports the per-sample runner's (:mod:`lpoi.runner`) sharding helpers.

A stage run with ``--shard i/n`` processes only its share of the input and writes its outputs next to
the unsharded ones with a ``.shard-i-of-n`` infix (``detect.jsonl`` -> ``detect.shard-0-of-4.jsonl``,
see :func:`shard_path`); ``--shard 0/1`` (the default) is the unsharded run and writes the plain names.
:func:`merge_shards` then streams the shard files back into one file in the input's order.

Assignment (:func:`in_shard`):

* ``by="index"`` (what the runners use): the input is cut into consecutive *blocks* of ``block`` rows
  (the runners pass their batch size) and block ``b`` goes to shard ``b mod n``. Every batch a sharded
  run computes is then exactly a batch the unsharded run computes. That matters: Grounding DINO pads the
  images of a batch to a common size and its Swin backbone does not mask the padding, so a sample's
  boxes depend (slightly) on its batch mates. With block assignment a merged sharded run is
  byte-identical to the unsharded one.
* ``by="hash"``: shard = ``sha256(id) mod n`` — independent of the row order (useful when shards read
  differently ordered inputs), but then batches differ from the unsharded run's.

Running on 4 GPUs (one process per GPU, no inter-process communication needed)::

    for i in 0 1 2 3; do
      CUDA_VISIBLE_DEVICES=$i python stages/detect.py ... --shard $i/4 &
    done; wait
    python -m lpoi.listgen.shard merge --order data/prepared.jsonl --out data/detect.jsonl \\
        data/detect.shard-{0,1,2,3}-of-4.jsonl
    # and the same for the rejects file, then segment and verify the same way.

The mask PNGs of the segment stage need no merging: their names are per sample id, so all shards write
into the same folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from lpoi.io import atomic_open, read_jsonl
from lpoi.runner import (  # noqa: F401  (re-exported: they used to live here)
    ShardError,
    StageOutput,
    blocks_of,
    parse_shard,
    prefetch_map,
    shard_path,
)

__all__ = [
    "ShardError",
    "StageOutput",
    "blocks_of",
    "in_shard",
    "merge_shards",
    "parse_shard",
    "prefetch_map",
    "shard_path",
]


def in_shard(sample_id: str, index: int, shard: str | tuple[int, int], *, by: str = "index", block: int = 1) -> bool:
    """Does the row at ``index`` (0-based, in the stage's input) with ``sample_id`` belong to ``shard``?

    ``by="index"``: block ``index // block`` goes to shard ``(index // block) mod n``.
    ``by="hash"``: the first 8 bytes of ``sha256(sample_id)`` mod n (Python's ``hash`` is salted per
    process, so it would assign differently in each shard's process).
    """
    i, n = parse_shard(shard)
    if n == 1:
        return True
    if by == "index":
        if block < 1:
            raise ShardError(f"block must be >= 1, got {block}")
        return (index // block) % n == i
    if by == "hash":
        digest = hashlib.sha256(str(sample_id).encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") % n == i
    raise ShardError(f"shard assignment must be 'index' or 'hash', got {by!r}")


def merge_shards(
    paths: Sequence[str | os.PathLike], order_source_path: str | os.PathLike, out_path: str | os.PathLike, *, key: str = "id"
) -> dict:
    """Merge shard JSONL files into ``out_path`` (atomically), rows in the order of ``order_source_path``.

    ``order_source_path`` is any JSONL whose ``key`` order the outputs follow — ``prepared.jsonl`` works
    for every stage, since each stage keeps its input's order. Streaming k-way merge: each shard file is
    read once, front to back, so memory holds one row per shard. Fails (:class:`ShardError`, nothing
    written) when a row's id is not in the order source, appears twice, or a shard file is out of order
    — e.g. files from two different runs. Returns ``{"rows": total, "per_shard": [count, ...]}``.

    A missing shard file is an error (a shard that did not run); an empty one is fine (a shard whose
    samples were all rejected).
    """
    if not paths:
        raise ShardError("merge_shards needs at least one shard file")
    for p in paths:
        if not Path(p).is_file():
            raise ShardError(f"shard file not found: {p} (did that shard finish?)")
    iters = [read_jsonl(p) for p in paths]
    heads: list[dict | None] = [next(it, None) for it in iters]
    counts = [0] * len(paths)
    with atomic_open(out_path) as f:
        for src in read_jsonl(order_source_path):
            sid = src.get(key)
            hits = [s for s, h in enumerate(heads) if h is not None and h.get(key) == sid]
            if len(hits) > 1:
                raise ShardError(f"id {sid!r} appears in more than one shard: {[str(paths[s]) for s in hits]}")
            for s in hits:
                f.write(json.dumps(heads[s], ensure_ascii=False) + "\n")
                counts[s] += 1
                heads[s] = next(iters[s], None)
                if heads[s] is not None and heads[s].get(key) == sid:
                    raise ShardError(f"{paths[s]}: id {sid!r} appears twice")
        left = [(paths[s], h.get(key)) for s, h in enumerate(heads) if h is not None]
        if left:
            p, sid = left[0]
            raise ShardError(
                f"{p}: row with id {sid!r} is not in {order_source_path} or is out of order "
                "(shard files from a different run or input?)"
            )
    return {"rows": sum(counts), "per_shard": counts}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m lpoi.listgen.shard", description="Merge shard outputs in input order.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("merge", help="merge shard JSONL files")
    m.add_argument("--order", required=True, help="JSONL whose id order the merged file follows (prepared.jsonl)")
    m.add_argument("--out", required=True, help="merged output file")
    m.add_argument("shards", nargs="+", help="the shard files")
    args = ap.parse_args(argv)
    stats = merge_shards(args.shards, args.order, args.out)
    print(json.dumps(stats))


if __name__ == "__main__":
    main()

