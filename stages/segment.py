"""segment: SAM masks for the detected candidates (segment.backend: segment-anything | transformers; box prompts,
best multimask by predicted IoU), resumable.

With lists.mask = bbox the paper's box masks are used and SAM is not loaded.
"""

import _common
from _common import parser, run


def main():
    ap = parser(__doc__)
    ap.add_argument("--prepared", required=True, help="prepare's output folder (an input of the fingerprint)")
    ap.add_argument("--detect", required=True, help="detect's output folder")
    ap.add_argument("--out", required=True, help="output folder (segment.jsonl, masks/, rejects.jsonl)")
    ap.add_argument("--metrics", help="metrics JSON to write (timings go beside it, to <name>.timings.json)")
    ap.add_argument("--limit", type=int, help="only the first N samples")
    args = ap.parse_args()
    p = _common.load(args)
    _common.use_engine(p)
    if p.lists.source == "official":
        return _common.skipped_for_official_lists("segment", args, ("segment.jsonl", "rejects.jsonl"))
    s = p.segment

    from lpoi.listgen.backends import load_segmenter_backend
    from lpoi.listgen.segment import run_segment
    from lpoi.stage import open_stage, pick_device

    sam = p.lists.mask == "sam"
    with open_stage("segment", args, models=[s.model] if sam else []) as st:
        backend = None  # lists.mask = bbox: SAM is never loaded
        if sam:
            backend = load_segmenter_backend(s, device=pick_device(p.model.device), dtype=p.model.dtype)
        stats = run_segment(f"{args.detect}/detect.jsonl", st.path / "segment.jsonl", st.path / "masks", s,
                            max_masks_per_sample=p.verify.max_tries, mask_kind=p.lists.mask,
                            rejects_path=st.path / "rejects.jsonl", limit=args.limit, backend=backend, journal=True)
        st.finish(args.metrics, stats.pop("output"), stats)


if __name__ == "__main__":
    run(main)
