"""lists: hide the verified object progressively (k/(L-1) of it in image k) -> PNG lists + lists.jsonl, resumable.
With lists.source: official (data=lpoi-official) the authors' released list images are adopted instead."""

import _common
from _common import parser, run


def main():
    ap = parser(__doc__)
    ap.add_argument("--prepared", required=True, help="prepare's output folder")
    ap.add_argument("--segment", required=True, help="segment's output folder (masks)")
    ap.add_argument("--verify", required=True, help="verify's output folder")
    ap.add_argument("--out", required=True, help="output folder (lists.jsonl, rejects.jsonl, images/)")
    ap.add_argument("--metrics", help="metrics JSON to write (timings go beside it, to <name>.timings.json)")
    args = ap.parse_args()
    p = _common.load(args)
    li, released = p.lists, p.data.lists  # (data.lists is declared for both sources: one fingerprint rule)

    from lpoi.listgen.lists import run_lists
    from lpoi.stage import open_stage

    if li.source == "official":  # the authors' released lists (data=lpoi-official); detect..verify were skipped
        from lpoi.listgen.official import run_official_lists

        with open_stage("lists", args) as st:
            metrics = run_official_lists(f"{args.prepared}/prepared.jsonl", released, st.path, size=li.size)
            st.finish(args.metrics, metrics, {"source": "official"})
        return
    with open_stage("lists", args) as st:
        stats = run_lists(f"{args.prepared}/prepared.jsonl", f"{args.verify}/verify.jsonl", st.path, size=li.size,
                          mode=li.mode, fill=li.fill, highlight=li.highlight, mask_kind=li.mask,
                          num_workers=li.num_workers, journal=True)
        st.finish(args.metrics, stats.pop("output"), stats)


if __name__ == "__main__":
    run(main)
