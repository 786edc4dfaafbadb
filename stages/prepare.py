"""prepare: validate pairwise preference records -> prepared.jsonl + rejects.jsonl (one line per dropped record)."""

import time

import _common
from _common import parser, run


def main():
    ap = parser(__doc__)
    ap.add_argument("--pairs", required=True, help="pairwise preferences (JSON list or JSONL, LPOI/mDPO schema)")
    ap.add_argument("--images", required=True, help="images root; every img_path must resolve inside it")
    ap.add_argument("--out", required=True, help="output folder (prepared.jsonl, rejects.jsonl, prepared_images/)")
    ap.add_argument("--metrics", required=True, help="metrics JSON to write")
    args = ap.parse_args()
    cfg = _common.load(args)

    from lpoi.listgen.prepare import PromptBudget, prepare_summary_line, run_prepare
    from lpoi.stage import write_metrics, write_timings

    t0 = time.perf_counter()
    # prompts must leave room for an answer in the base model's tokens, or reference and train stop on them
    budget = PromptBudget.for_model(cfg.model.name, cfg.reference.max_length, cfg.model.trust_remote_code,
                                    max_pixels=cfg.model.max_pixels)
    summary = run_prepare(args.pairs, args.images, f"{args.out}/prepared.jsonl", f"{args.out}/rejects.jsonl",
                          cfg.prepare, budget=budget)
    secs = time.perf_counter() - t0
    write_metrics(args.metrics, summary)  # results only; timings beside them (not a metric)
    write_timings(args.metrics, {"stage": "prepare", "seconds": secs, "samples_per_s": summary["records_in"] / secs})
    print(prepare_summary_line(summary, f"{args.out}/rejects.jsonl"))


if __name__ == "__main__":
    run(main)
