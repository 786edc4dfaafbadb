"""report: the run's headline numbers (metrics/summary.json), report/REPORT.md and its figures.

Reads what the other stages wrote (list-generation folders, the score metrics, the train stage's dvclive
folder) plus params.yaml and conf/ (to name the params that differ from the profile's defaults).
"""

import _common
from _common import parser, run

LISTGEN = ("prepare", "detect", "segment", "verify", "lists")


def main():
    from pathlib import Path

    from lpoi.config import BENCHES

    ap = parser(__doc__)
    for s in LISTGEN:
        ap.add_argument(f"--{s}", required=True, type=Path, help=f"the {s} stage's folder")
    ap.add_argument("--prepare-metrics", required=True, type=Path, help="metrics JSON of the prepare stage")
    for b in BENCHES:
        ap.add_argument(f"--{b}", required=True, type=Path, help=f"the {b} score metrics JSON")
    ap.add_argument("--train", required=True, type=Path, help="the train stage's dvclive folder")
    ap.add_argument("--world", type=Path, help="the world_grid stage's table (metrics/world.md; shown when world=shapes)")
    ap.add_argument("--world-metrics", type=Path,
                    help="the world_grid stage's numbers (metrics/world.json; in the summary when world=shapes)")
    ap.add_argument("--conf", default=Path("conf"), type=Path, help="Hydra config folder (default: %(default)s)")
    ap.add_argument("--listgen-out", required=True, type=Path, help="list-generation metrics JSON to write")
    ap.add_argument("--summary", required=True, type=Path, help="headline metrics JSON to write")
    ap.add_argument("--out-dir", required=True, type=Path, help="folder for REPORT.md and the figures")
    args = ap.parse_args()
    p = _common.load(args)

    import yaml

    from lpoi.report.build import ReportPaths, build_report

    paths = ReportPaths(listgen_dirs={s: getattr(args, s) for s in LISTGEN}, prepare_metrics=args.prepare_metrics,
                        scores={b: getattr(args, b) for b in BENCHES}, train=args.train,
                        conf=args.conf, listgen_out=args.listgen_out, summary_out=args.summary, out_dir=args.out_dir,
                        world=args.world, world_metrics=args.world_metrics)
    print(f"report: writing {args.summary}, {args.listgen_out} and {args.out_dir}/ (REPORT.md + figures)", flush=True)
    summary = build_report(paths, p, yaml.safe_load(Path(args.params).read_text()), rows=p.report.contact_sheet_rows)
    if summary["random_model"]:
        print("report: tiny random models: the numbers test the pipeline, not LPOI")


if __name__ == "__main__":
    run(main)
