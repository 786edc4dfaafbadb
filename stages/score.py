"""score: score a benchmark's answers exactly as its official scorer does.

  python stages/score.py amber  --answers ANSWERS.jsonl --out METRICS.json [--data-dir DIR] [--yes-no RULE]
  python stages/score.py objhal --answers ANSWERS.jsonl --out METRICS.json [--coco-dir DIR]
  python stages/score.py mmhal  --answers ANSWERS.jsonl --out METRICS.json [--template TEMPLATE.json]
                                [--judge-base-url URL --judge-model NAME]
Paths left out are taken from params.yaml (bench.root/<benchmark>/...), as dvc.yaml runs it.
AMBER answers are scored exactly as stored, like the official inference.py ("yes" and "No." are wrong);
--yes-no first-word|lpoi|exact normalizes the raw replies first. Judge replies are cached on disk by
default (in --work, else beside --out), so scoring the same answers again sends no request.
"""

import _common
from _common import parser, run


def main():
    from pathlib import Path

    from lpoi.config import BENCHES, YES_NO_RULES

    ap = parser(__doc__)
    ap.add_argument("bench", choices=BENCHES)
    ap.add_argument("--answers", required=True, type=Path, help="answers.jsonl from stages/generate.py")
    ap.add_argument("--out", required=True, type=Path, help="metrics JSON to write")
    ap.add_argument("--work", type=Path, help="folder for per-item details and the judge's reply cache")
    ap.add_argument("--data-dir", type=Path, help="amber: folder with annotations.json, relation.json, safe_words.txt")
    ap.add_argument("--coco-dir", type=Path, help="objhal: folder with instances_val2014.json and captions_val2014.json")
    ap.add_argument("--template", type=Path, help="mmhal: the answer template JSON")
    ap.add_argument("--yes-no", choices=YES_NO_RULES,
                    help="amber: normalize yes/no replies with this rule before scoring (default: score as stored)")
    ap.add_argument("--judge-base-url", help="mmhal/objhal-llm: an OpenAI-compatible endpoint (overrides judge.*)")
    ap.add_argument("--judge-model", help="the judge model name at that endpoint")
    ap.add_argument("--no-judge-cache", dest="judge_cache", action="store_false",
                    help="send every judge request again (default: reuse the cached replies)")
    args = ap.parse_args()
    p = _common.load(args)

    from lpoi.eval.scoring import ScoreJob, run_score

    job = ScoreJob(**{k: v for k, v in vars(args).items() if k != "params"})
    run_score(job, p)


if __name__ == "__main__":
    run(main)
