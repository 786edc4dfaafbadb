"""score: score a benchmark's answers exactly as its official scorer does.

  python stages/score.py amber  --answers ANSWERS.jsonl --data-dir DIR --out METRICS.json
  python stages/score.py objhal --answers ANSWERS.jsonl --coco-dir DIR --out METRICS.json
  python stages/score.py mmhal  --answers ANSWERS.jsonl --template TEMPLATE.json --out METRICS.json
                                [--judge-base-url URL --judge-model NAME]
Paths left out are taken from params.yaml (bench.root/<benchmark>/...), as dvc.yaml runs it.
"""

import _common
from _common import parser, run


def main():
    ap = parser(__doc__)
    ap.add_argument("bench", choices=["amber", "objhal", "mmhal"])
    ap.add_argument("--answers", required=True, help="answers.jsonl from stages/generate.py")
    ap.add_argument("--out", required=True, help="metrics JSON to write")
    ap.add_argument("--work", help="folder for per-item details and the judge's reply cache")
    ap.add_argument("--data-dir", help="amber: folder with annotations.json, relation.json, safe_words.txt")
    ap.add_argument("--coco-dir", help="objhal: folder with instances_val2014.json and captions_val2014.json")
    ap.add_argument("--template", help="mmhal: the answer template JSON")
    ap.add_argument("--judge-base-url", help="mmhal/objhal-llm: an OpenAI-compatible endpoint (overrides judge.*)")
    ap.add_argument("--judge-model", help="the judge model name at that endpoint")
    args = ap.parse_args()
    p = _common.load(args)
    b = p.bench
    work = args.work
    if work:
        from pathlib import Path

        Path(work).mkdir(parents=True, exist_ok=True)
    details = f"{work}/details.jsonl" if work else None

    def judge():
        from lpoi.eval.factory import make_judge
        from lpoi.stage import pick_device

        jp = p.judge
        if args.judge_base_url:
            jp = jp.model_copy(update={"backend": "openai", "base_url": args.judge_base_url,
                                       "model": args.judge_model or jp.model})
        return make_judge(jp, cache_dir=f"{work}/judge_cache" if work else None, device=pick_device(p.model.device))

    if args.bench == "amber":
        from lpoi.eval.benchmarks.amber import score_file

        score_file(args.answers, args.data_dir or b.path("amber", "."), args.out, similarity=p.amber.similarity,
                   normalize_yes_no=True)  # free-text yes/no answers -> "Yes"/"No" by the first yes/no word
    elif args.bench == "objhal":
        from lpoi.eval.benchmarks.objhal import score_file

        llm = p.objhal.extractor == "llm"
        score_file(args.answers, args.coco_dir or b.path("objhal", b.objhal.coco_dir), args.out,
                   extractor=p.objhal.extractor, judge=judge() if llm else None, cache_dir=work,
                   details_path=details, synonyms_path=_first_existing(b.path("objhal", "synonyms_refine.txt")))
    else:
        from lpoi.eval.benchmarks.mmhal import score_file

        score_file(args.answers, args.template or b.path("mmhal", b.mmhal.template), args.out, judge(),
                   details_path=details)


def _first_existing(*paths):
    return next((x for x in paths if x is not None and x.exists()), None)


if __name__ == "__main__":
    run(main)
