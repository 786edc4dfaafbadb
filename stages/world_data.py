"""world_data: draw the shapes world (world.*): pretrain/pairs/val/test splits with layouts, boxes and masks,
preference pairs (inserted and substituted rejections), and AMBER-format benchmarks of the val and test scenes.
A no-op unless world.name is shapes."""

import _common
from _common import parser, run

from lpoi.world.off import world_is_off


def main():
    ap = parser(__doc__)
    ap.add_argument("--out", required=True,
                    help="output folder (pretrain/, pairs/, val/, test/, bench/amber{,-val}/, world.json)")
    args = ap.parse_args()
    p = _common.load(args)

    if world_is_off(p, args.out):
        return
    from lpoi.world.dataset import build_world

    summary = build_world(p.world, args.out)
    for key, name in (("bench_val", "val"), ("bench", "test")):
        b = summary[key]
        print(f"world_data: {name}: {b['generative']} scenes, {b['discriminative']} yes/no questions {b['kinds']}")


if __name__ == "__main__":
    run(main)
