"""pretrain: train the shapes world's base VLMs from scratch on captions and yes/no questions (world.model,
world.pretrain; world.study.bases of them, seeds world.pretrain.seed + 0, 1, ...) and save each as a Hugging
Face folder (safetensors + processor) under the output folder: base-0, base-1, ... A no-op unless world.name is
shapes (the embedded default's base models are built offline, see lpoi/models/tiny.py)."""

import _common
from _common import parser, run

from lpoi.world.off import world_is_off


def main():
    ap = parser(__doc__)
    ap.add_argument("--data", required=True, help="world_data's folder")
    ap.add_argument("--out", required=True, help="output folder (one model folder per base)")
    ap.add_argument("--metrics", required=True, help="metrics JSON to write (losses per base)")
    args = ap.parse_args()
    p = _common.load(args)

    if world_is_off(p, args.out, metrics=args.metrics):
        return
    import shutil

    from lpoi.stage import write_metrics
    from lpoi.world.pretrain import pretrain_bases

    shutil.rmtree(args.out, ignore_errors=True)  # no base of an earlier run survives
    write_metrics(args.metrics, pretrain_bases(p.world, args.data, args.out, workers=p.world.study.workers))


if __name__ == "__main__":
    run(main)
