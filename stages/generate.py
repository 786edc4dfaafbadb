"""generate: answer a benchmark's questions with the base model (+ the trained adapter), batched and resumable.

  python stages/generate.py amber|objhal|mmhal --out DIR [--adapter DIR] [--limit N]
Benchmark files come from params.yaml (bench.root/<benchmark>/...). Finished ids are skipped on re-run.
"""

import _common
from _common import parser, run


def main():
    ap = parser(__doc__)
    ap.add_argument("bench", choices=["amber", "objhal", "mmhal"])
    ap.add_argument("--out", required=True, help="output folder (answers.jsonl)")
    ap.add_argument("--adapter", help="LoRA adapter from the train stage (ignored when generate.use_adapter is false)")
    ap.add_argument("--merged", help="a folder of merged weights instead of base + adapter")
    ap.add_argument("--limit", type=int, help="only the first N items (a quick subset)")
    ap.add_argument("--metrics", help="metrics JSON to write (throughput, counts)")
    args = ap.parse_args()
    p = _common.load(args)
    b, g = p.bench, p.generate

    from lpoi.eval.generate import generate_answers, load_for_generation
    from lpoi.stage import fingerprint, pick_device, resumable_dir, write_metrics

    bench_params = getattr(b, args.bench).model_dump()
    limit = args.limit or bench_params.get("limit")
    adapter = args.adapter if g.use_adapter else None
    fp = fingerprint({"model": p.model.model_dump(), "generate": g.model_dump(), "bench": bench_params,
                      "amber": [p.amber.discriminative, p.amber.yes_no] if args.bench == "amber" else None},
                     [x for x in (adapter, args.merged) if x])
    out = resumable_dir(args.out, fp)
    yes_no = normalize = None
    if args.bench == "amber":
        from lpoi.eval.benchmarks import amber

        items = amber.items(b.path("amber", "."), b.path("amber", b.amber.images_dir), limit=limit)
        items = [{**it, "yes_no": not amber.is_generative(it["id"])} for it in items]
        yes_no = p.amber.discriminative
        normalize = amber.answer_row_normalizer(p.amber.yes_no)  # raw reply kept as raw_response
    elif args.bench == "objhal":
        from lpoi.eval.benchmarks import objhal

        # base64 images are decoded once into the output folder instead of being held in memory
        items = objhal.items(b.path("objhal", b.objhal.questions), b.path("objhal", b.objhal.images_dir), limit=limit,
                             extract_dir=None if b.objhal.images_dir else out / "images")
    else:
        from lpoi.eval.benchmarks import mmhal

        items = mmhal.items(b.path("mmhal", b.mmhal.template), b.path("mmhal", b.mmhal.images_dir), limit=limit)

    model, proc = load_for_generation(p.model.name, adapter_dir=adapter, merged_dir=args.merged,
                                      dtype=p.model.dtype, device=pick_device(p.model.device),
                                      max_pixels=p.model.max_pixels)
    stats = generate_answers(model, proc, items, out / "answers.jsonl", batch_size=g.batch_size,
                             max_new_tokens=g.max_new_tokens, do_sample=g.do_sample, temperature=g.temperature,
                             top_p=g.top_p, num_beams=g.num_beams, yes_no=yes_no, normalize_yes_no=normalize)
    if args.metrics:
        write_metrics(args.metrics, {"bench": args.bench, "adapter": bool(adapter), **stats})


if __name__ == "__main__":
    run(main)
