"""generate: answer a benchmark's questions with the base model (+ the trained adapter), batched and resumable.

  python stages/generate.py amber|objhal|mmhal --out DIR [--adapter DIR] [--limit N]
Benchmark files come from params.yaml (bench.root/<benchmark>/...). Finished ids are skipped on re-run.
"""

import _common
from _common import parser, run


def main():
    from lpoi.config import BENCHES

    ap = parser(__doc__)
    ap.add_argument("bench", choices=BENCHES)
    ap.add_argument("--out", required=True, help="output folder (answers.jsonl)")
    ap.add_argument("--adapter", help="LoRA adapter from the train stage (generate.adapter, when set, replaces it; "
                    "ignored when generate.use_adapter is false)")
    ap.add_argument("--merged", help="a folder of merged weights instead of base + adapter")
    ap.add_argument("--limit", type=int, help="only the first N items (a quick subset)")
    ap.add_argument("--metrics", help="metrics JSON to write (timings go beside it, to <name>.timings.json)")
    args = ap.parse_args()
    p = _common.load(args)
    _common.use_engine(p)
    b, g, m = p.bench, p.generate, p.model

    from lpoi.eval.generate import generate_answers, load_for_generation
    from lpoi.stage import open_stage, pick_device

    limit = args.limit or getattr(b, args.bench).limit
    adapter = (g.adapter or args.adapter) if g.use_adapter else None
    if adapter is not None and g.adapter:  # another adapter than the trained one: its bytes join the fingerprint
        from lpoi.eval.generate import find_adapter

        adapter = str(find_adapter(g.adapter))
    models = [m.name] + ([args.merged] if args.merged else []) + ([adapter] if g.adapter and adapter else [])
    with open_stage(f"generate@{args.bench}", args, models=models) as st:
        items, yes_no = _items(args.bench, p, st.path, limit)
        normalize = None  # AMBER: the stored answer of a generated yes/no reply (the raw reply is kept beside it)
        if args.bench == "amber":
            from lpoi.eval.benchmarks.amber import answer_row_normalizer

            normalize = answer_row_normalizer(p.amber.yes_no)
        model, proc = load_for_generation(m.name, adapter_dir=adapter, merged_dir=args.merged, dtype=m.dtype,
                                          device=pick_device(m.device), max_pixels=m.max_pixels,
                                          trust_remote_code=m.trust_remote_code)
        stats = generate_answers(model, proc, items, st.path / "answers.jsonl", g, yes_no=yes_no,
                                 normalize_yes_no=normalize, journal=True,
                                 decoded_full=args.bench == "amber" and p.amber.yes_no == "paper")
        st.finish(args.metrics, {"adapter": bool(adapter), **stats.pop("output")}, stats)


def _items(bench: str, p, out, limit):
    """The benchmark's work list (and the yes/no mode for AMBER)."""
    b = p.bench
    if bench == "amber":
        from lpoi.eval.benchmarks import amber

        return (amber.generation_items(b.path("amber", "."), b.path("amber", b.amber.images_dir), limit=limit,
                                       rule=p.amber.yes_no), p.amber.discriminative)
    if bench == "objhal":
        from lpoi.eval.benchmarks import objhal

        # base64 images are decoded once into the output folder instead of being held in memory
        return objhal.items(b.path("objhal", b.objhal.questions), b.path("objhal", b.objhal.images_dir), limit=limit,
                            extract_dir=None if b.objhal.images_dir else out / "images"), None
    from lpoi.eval.benchmarks import mmhal

    return mmhal.items(b.path("mmhal", b.mmhal.template), b.path("mmhal", b.mmhal.images_dir), limit=limit), None


if __name__ == "__main__":
    run(main)
