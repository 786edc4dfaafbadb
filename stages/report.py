"""report: list-generation metrics (metrics/listgen.json) and the contact sheet of the lists (a DVC image plot)."""

import _common
from _common import parser, run

STAGES = ("prepare", "detect", "segment", "verify", "lists")


def main():
    ap = parser(__doc__)
    for s in STAGES:
        ap.add_argument(f"--{s}", required=True, help=f"the {s} stage's folder")
    ap.add_argument("--stage-metrics", required=True, help="folder holding <stage>.json of the stages above")
    ap.add_argument("--out", required=True, help="metrics JSON to write")
    ap.add_argument("--sheet", required=True, help="contact sheet PNG to write")
    args = ap.parse_args()
    p = _common.load(args)

    from lpoi.listgen.report import run_report

    run_report(prepared_dir=args.prepare, detect_dir=args.detect, segment_dir=args.segment, verify_dir=args.verify,
               lists_dir=args.lists, stage_metrics={s: f"{args.stage_metrics}/{s}.json" for s in STAGES},
               out_path=args.out, sheet_path=args.sheet, rows=p.report.contact_sheet_rows)


if __name__ == "__main__":
    run(main)
