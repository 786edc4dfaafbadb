"""world_data: draw the shapes world (world.*): pretrain/pairs/test splits with boxes and masks, preference
pairs, and an AMBER-format benchmark of the held-out scenes. A no-op unless world.name is shapes."""

import _common
from _common import parser, run

from lpoi.world.off import world_is_off


def main():
    ap = parser(__doc__)
    ap.add_argument("--out", required=True, help="output folder (pretrain/, pairs/, test/, bench/amber/, world.json)")
    args = ap.parse_args()
    p = _common.load(args)

    if world_is_off(p, args.out):
        return
    from lpoi.world.dataset import build_world

    summary = build_world(p.world, args.out)
    print(f"world_data: {summary['bench']['generative']} held-out scenes, "
          f"{summary['bench']['discriminative']} yes/no questions")


if __name__ == "__main__":
    run(main)
