"""world_grid: DPO, mDPO and LPOI from the same base (world.train, world.grid) over several seeds, each scored
with the world's AMBER-format benchmark by the project's AMBER scorer, plus the base; writes the comparison
(mean +- std over seeds) as metrics, a Markdown table and the list-position rewards plot. Resumable: finished
cells are kept while inputs, params and code are unchanged. A no-op unless world.name is shapes."""

import _common
from _common import parser, run

from lpoi.world.off import world_is_off


def main():
    ap = parser(__doc__)
    ap.add_argument("--data", required=True, help="world_data's folder (benchmark, held-out images)")
    ap.add_argument("--lists", required=True, help="world_lists' folder")
    ap.add_argument("--base", required=True, help="the pretrain stage's model folder")
    ap.add_argument("--out", required=True, help="persisted work folder (reference/, base/, cells/)")
    ap.add_argument("--metrics", required=True, help="metrics JSON to write (the table's numbers)")
    ap.add_argument("--table", required=True, help="Markdown table to write")
    ap.add_argument("--plot", required=True, help="rewards-by-visibility PNG to write")
    args = ap.parse_args()
    p = _common.load(args)

    if world_is_off(p, args.out, metrics=args.metrics, text=args.table, png=args.plot):
        return
    from pathlib import Path

    import torch

    from lpoi.io import atomic_write_json, atomic_write_text
    from lpoi.stage import open_stage
    from lpoi.world.grid import GridPaths, run_grid
    from lpoi.world.results import metrics_view, plot_rewards, summarize, table_markdown

    torch.set_num_threads(p.world.threads)  # a fixed float reduction order (world.threads)
    # finished cells are kept only under the same fingerprint: the dvc.yaml entry's deps (data, lists, base
    # model, code) and params, like every resumable stage
    with open_stage("world_grid", args, models=[args.base]) as st:
        grid = run_grid(p, GridPaths(Path(args.data), Path(args.lists), args.base, st.path))
        summary = summarize(grid)
        atomic_write_json(st.path / "summary.json", summary)  # per-seed values too
        atomic_write_text(args.table, table_markdown(summary))
        plot_rewards(summary, args.plot)
        st.finish(args.metrics, metrics_view(summary), grid["timings"])  # cells: those trained by this run
    print(table_markdown(summary))


if __name__ == "__main__":
    run(main)
