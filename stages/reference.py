"""reference: the frozen base model's log-probs of every unique (prompt, image, answer) sequence, computed once.

Depends only on the base model, the lists and the tokenisation params, so experiments over train.* reuse it.
"""

import _common
from _common import parser, run


def main():
    ap = parser(__doc__)
    ap.add_argument("--lists", required=True, help="the lists stage's folder (lists.jsonl)")
    ap.add_argument("--out", required=True, help="output folder (reference.jsonl)")
    ap.add_argument("--metrics", help="metrics JSON to write")
    args = ap.parse_args()
    p = _common.load(args)
    r = p.reference

    from pathlib import Path

    from lpoi.stage import pick_device, write_metrics
    from lpoi.train.reference import run_reference

    Path(args.out).mkdir(parents=True, exist_ok=True)  # the file itself carries its meta and resumes
    stats = run_reference(f"{args.lists}/lists.jsonl", f"{args.out}/reference.jsonl", model_name=p.model.name,
                          dtype=p.model.dtype, micro_batch_sequences=r.micro_batch_sequences, max_length=r.max_length,
                          device=pick_device(p.model.device), max_pixels=p.model.max_pixels)
    if args.metrics:
        write_metrics(args.metrics, stats)


if __name__ == "__main__":
    run(main)
