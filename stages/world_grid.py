"""world_grid: the miniature's study. Every method of world.study.methods is tuned with the same grid
(world.study.tune) on the validation scenes, its configuration picked by the pre-registered rule
(world.study.select), then trained from every pretrained base with every seed and scored on the test scenes by
the project's AMBER scorer; writes paired bootstrap intervals (metrics/world.json), the table (metrics/world.md),
the held-out list log-ratios and the Pareto plot. Resumable: finished cells are kept while inputs, params and code
are unchanged. A no-op unless world.name is shapes."""

import _common
from _common import parser, run

from lpoi.world.off import world_is_off


def main():
    ap = parser(__doc__)
    ap.add_argument("--data", required=True, help="world_data's folder (benchmarks, images)")
    ap.add_argument("--lists", required=True, help="world_lists' folder")
    ap.add_argument("--bases", required=True, help="the pretrain stage's folder (base-0, base-1, ...)")
    ap.add_argument("--out", required=True, help="persisted work folder (manifests/, reference/, base/, cells/)")
    ap.add_argument("--metrics", required=True, help="metrics JSON to write (the study's numbers)")
    ap.add_argument("--table", required=True, help="Markdown table to write")
    ap.add_argument("--plot", required=True, help="held-out log-ratio by visibility PNG to write")
    ap.add_argument("--pareto", required=True, help="Pareto PNG to write (Cog and CHAIR against Cover)")
    args = ap.parse_args()
    p = _common.load(args)

    if world_is_off(p, args.out, metrics=args.metrics, text=args.table, png=[args.plot, args.pareto]):
        return
    from pathlib import Path

    from lpoi.io import atomic_write_json, atomic_write_text
    from lpoi.stage import open_stage
    from lpoi.world.readme import table_markdown
    from lpoi.world.results import plot_pareto, plot_rewards, summarize, world_metrics
    from lpoi.world.study import StudyPaths, run_study

    # finished cells are kept only under the same fingerprint: the dvc.yaml entry's deps (data, lists, bases,
    # code) and params, like every resumable stage
    with open_stage("world_grid", args, models=[args.bases]) as st:
        study = run_study(p, StudyPaths(Path(args.data), Path(args.lists), Path(args.bases), st.path))
        metrics = world_metrics(p, study)
        atomic_write_json(st.path / "summary.json", summarize(p, study))  # every cell's numbers
        table = table_markdown(metrics)
        atomic_write_text(args.table, table)
        plot_rewards(p, study, args.plot)
        plot_pareto(p, study, metrics, args.pareto)
        st.finish(args.metrics, metrics, {})
    print(table)


if __name__ == "__main__":
    run(main)
