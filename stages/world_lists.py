"""world_lists: the world's training and held-out lists (world.lists): the critical object of every pairs and test
scene erased in world.lists.k steps (and, for "No" pairs, an absent partner drawn in), checked on the pixels; one
manifest per split and rejection mode. A no-op unless world.name is shapes."""

import _common
from _common import parser, run

from lpoi.world.off import world_is_off


def main():
    ap = parser(__doc__)
    ap.add_argument("--data", required=True, help="world_data's folder")
    ap.add_argument("--out", required=True, help="output folder ({pairs,test}/lists-<mode>.jsonl, images/)")
    ap.add_argument("--metrics", required=True, help="metrics JSON to write")
    args = ap.parse_args()
    p = _common.load(args)

    if world_is_off(p, args.out, metrics=args.metrics):
        return
    from lpoi.stage import write_metrics
    from lpoi.world.lists import build_world_lists

    metrics = build_world_lists(p.world, args.data, args.out)
    write_metrics(args.metrics, metrics)
    for split in ("pairs", "test"):
        m = metrics[split]
        print(f"world_lists: {split}: {m['rows']} rows {m['kinds']}, {m['hide']['lists']} erasing lists "
              f"(object gone at visibility 0: {m['hide']['no_object_pixels_left']}), {m['rejected']} rejected")


if __name__ == "__main__":
    run(main)
