"""verify: the paper's filter. A VLM sees the fully hidden image, the question and the chosen answer; if it
still accepts the answer the object was not critical and the next candidate is tried (verify.max_tries)."""

import _common
from _common import parser, run


def main():
    ap = parser(__doc__)
    ap.add_argument("--prepared", required=True, help="prepare's output folder (questions and answers)")
    ap.add_argument("--segment", required=True, help="segment's output folder")
    ap.add_argument("--out", required=True, help="output folder (verify.jsonl, rejects.jsonl)")
    ap.add_argument("--metrics", help="metrics JSON to write (timings go beside it, to <name>.timings.json)")
    ap.add_argument("--limit", type=int, help="only the first N samples")
    args = ap.parse_args()
    p = _common.load(args)
    _common.use_engine(p)
    if p.lists.source == "official":
        return _common.skipped_for_official_lists("verify", args, ("verify.jsonl", "rejects.jsonl"))
    v, base = p.verify, p.model.name  # the verifier is the run's base model unless verify.model names one
    verifier = v.model or base

    from lpoi.listgen.verify import run_verify
    from lpoi.stage import open_stage, pick_device

    with open_stage("verify", args, models=[verifier] if v.enabled else []) as st:
        stats = run_verify(f"{args.segment}/segment.jsonl", f"{args.prepared}/prepared.jsonl", st.path / "verify.jsonl",
                           st.path / "rejects.jsonl", v, model_name=base, fill=p.lists.fill,
                           device=pick_device(p.model.device), dtype=p.model.dtype, limit=args.limit, journal=True,
                           max_pixels=p.model.max_pixels, trust_remote_code=p.model.trust_remote_code)
        st.finish(args.metrics, stats.pop("output"), {"verifier": verifier, **stats})


if __name__ == "__main__":
    run(main)
