"""detect: critical-object candidates (NLTK) and Grounding DINO boxes (detect.backend: groundingdino | transformers),
one prompt per image, batched, resumable.
"""

import _common
from _common import parser, run


def main():
    ap = parser(__doc__)
    ap.add_argument("--prepared", required=True, help="prepare's output folder")
    ap.add_argument("--out", required=True, help="output folder (detect.jsonl, rejects.jsonl)")
    ap.add_argument("--metrics", help="metrics JSON to write (timings go beside it, to <name>.timings.json)")
    ap.add_argument("--limit", type=int, help="only the first N samples")
    args = ap.parse_args()
    p = _common.load(args)
    _common.use_engine(p)
    if p.lists.source == "official":
        return _common.skipped_for_official_lists("detect", args, ("detect.jsonl", "rejects.jsonl"))
    d = p.detect

    from lpoi.listgen.backends import load_detector_backend
    from lpoi.listgen.detect import run_detect
    from lpoi.stage import open_stage, pick_device

    with open_stage("detect", args, models=[d.model]) as st:
        backend = load_detector_backend(d, device=pick_device(p.model.device), dtype=p.model.dtype)
        stats = run_detect(f"{args.prepared}/prepared.jsonl", st.path / "detect.jsonl", st.path / "rejects.jsonl",
                           d, seed=p.seed, limit=args.limit, backend=backend, journal=True)
        st.finish(args.metrics, stats.pop("output"), stats)


if __name__ == "__main__":
    run(main)
