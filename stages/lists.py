"""lists: hide the verified object progressively (k/(L-1) of it in image k) -> PNG lists + lists.jsonl."""

import _common
from _common import parser, run


def main():
    ap = parser(__doc__)
    ap.add_argument("--prepared", required=True, help="prepare's output folder")
    ap.add_argument("--segment", required=True, help="segment's output folder (masks)")
    ap.add_argument("--verify", required=True, help="verify's output folder")
    ap.add_argument("--out", required=True, help="output folder (lists.jsonl, rejects.jsonl, images/)")
    ap.add_argument("--metrics", help="metrics JSON to write")
    args = ap.parse_args()
    p = _common.load(args)
    li = p.lists

    from lpoi.listgen.lists import run_lists
    from lpoi.stage import Stopwatch, fingerprint, resumable_dir, write_metrics

    clock = Stopwatch()
    out = resumable_dir(args.out, fingerprint({"lists": li.model_dump(exclude={"num_workers"})}, [args.prepared, args.segment, args.verify]))
    stats = run_lists(f"{args.prepared}/prepared.jsonl", f"{args.verify}/verify.jsonl", out, size=li.size,
                      mode=li.mode, fill=li.fill, highlight=li.highlight, mask_kind=li.mask,
                      num_workers=li.num_workers)
    if args.metrics:
        write_metrics(args.metrics, {**stats, "samples_per_s": clock.rate(stats["lists"] + stats["rejected"])})


if __name__ == "__main__":
    run(main)
