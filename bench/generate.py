"""Batched vs batch-1 generation throughput on the same model and the same queries.

    python bench/generate.py                      # tiny/idefics2 and tiny/llava, 32 queries, 32 new tokens
    python bench/generate.py --models tiny/llava --queries 64 --batch-size 16
    python bench/generate.py --models tiny/qwen2.5-vl tiny/qwen3-vl tiny/gemma3 tiny/smolvlm   # any family

Both sides run :func:`lpoi.eval.generate.generate_answers` (image loading, templating, left padding,
decoding and the JSONL writes included) on identical items. Every answer is forced to exactly
``--new-tokens`` tokens (``min_new_tokens = max_new_tokens``): a random tiny model stops at an
arbitrary end-of-sequence token, and with early stops the two sides would not do the same work.
Runs alternate (batch-1, batched, batch-1, ...) after a warm-up so drift on a shared machine hits
both sides alike; the best of ``--repeats`` is kept. Torch runs with ``--threads`` intra-op threads
(default 1: the tiny matrices gain nothing from more, and on a busy machine OpenMP's spinning
workers distort timings by an order of magnitude).

Prints a table and, last, ``speedup=X.XX``: the smallest batched/batch-1 ratio over the models.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUESTIONS = [
    "Describe this image.",
    "Is there a dog in this image?",
    "What color is the object?",
    "How many objects are there in the picture on the left of the table?",
    "Where is it?",
    "Is there a red car parked next to a tree in this image?",
    "What is in the picture?",
    "Please describe the image in detail.",
]


def make_items(folder: Path, n: int) -> list[dict]:
    from PIL import Image

    items = []
    for i in range(n):
        p = folder / f"q{i}.png"
        Image.new("RGB", (48 + 8 * (i % 5), 40 + 6 * (i % 7)), (37 * i % 256, 91 * i % 256, 53 * i % 256)).save(p)
        items.append({"id": i, "image": str(p), "question": QUESTIONS[i % len(QUESTIONS)]})
    return items


def run(model, processor, items, out: Path, batch_size: int, new_tokens: int) -> dict:
    from lpoi.eval.generate import generate_answers

    out.unlink(missing_ok=True)
    return generate_answers(model, processor, items, out, batch_size=batch_size, max_new_tokens=new_tokens,
                            progress=False, extra_generate_kwargs={"min_new_tokens": new_tokens})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["tiny/idefics2", "tiny/llava"])
    ap.add_argument("--queries", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args(argv)

    import torch

    from lpoi.eval.generate import load_for_generation

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        items = make_items(tmp, args.queries)
        for name in args.models:
            model, proc = load_for_generation(name, dtype=args.dtype, device=args.device)
            run(model, proc, items[: args.batch_size], tmp / "warm.jsonl", args.batch_size, 4)  # warm-up
            best = {1: float("inf"), args.batch_size: float("inf")}
            answers = {}
            for _ in range(args.repeats):
                for bs in (1, args.batch_size):
                    t0 = time.perf_counter()
                    stats = run(model, proc, items, tmp / f"b{bs}.jsonl", bs, args.new_tokens)
                    best[bs] = min(best[bs], time.perf_counter() - t0)
                    answers[bs] = (tmp / f"b{bs}.jsonl").read_text()
                    assert stats["n_new_tokens"] == args.queries * args.new_tokens, stats
            same = answers[1] == answers[args.batch_size]
            n_tok = args.queries * args.new_tokens
            for bs in (1, args.batch_size):
                rows.append((name, bs, best[bs], args.queries / best[bs], n_tok / best[bs], same))
            rows.append((name, "ratio", best[1] / best[args.batch_size], None, None, same))

    dev = args.device or "cpu"
    print(f"{args.queries} queries x {args.new_tokens} new tokens, {dev}, {args.dtype}, {args.threads} thread(s), "
          f"best of {args.repeats}")
    print(f"{'model':<16} {'batch':>6} {'seconds':>9} {'samples/s':>10} {'tokens/s':>10} {'same answers':>13}")
    ratios = []
    for name, bs, sec, sps, tps, same in rows:
        if bs == "ratio":
            ratios.append(sec)
            print(f"{name:<16} {'speedup':>6} {sec:>9.2f}x")
        else:
            print(f"{name:<16} {bs:>6} {sec:>9.2f} {sps:>10.2f} {tps:>10.1f} {same!s:>13}")
    print(f"speedup={min(ratios):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
