"""world_lists: the pipeline's list generation (prepare -> detect -> segment -> verify -> lists) on the world's
training and held-out pairs, with the oracle detector/segmenter (the generator's boxes and masks; or the
pipeline's models, world.detector) and the world's base model as the verifier. A no-op unless world.name is
shapes."""

import _common
from _common import parser, run

from lpoi.world.off import world_is_off


def main():
    ap = parser(__doc__)
    ap.add_argument("--data", required=True, help="world_data's folder")
    ap.add_argument("--base", required=True, help="the pretrain stage's model folder (the verifier)")
    ap.add_argument("--out", required=True, help="output folder ({pairs,test}/{prepared,...,lists})")
    ap.add_argument("--metrics", required=True, help="metrics JSON to write")
    args = ap.parse_args()
    p = _common.load(args)

    if world_is_off(p, args.out, metrics=args.metrics):
        return
    import torch

    from lpoi.stage import write_metrics
    from lpoi.world.lists import build_world_lists, list_metrics

    torch.set_num_threads(p.world.threads)  # a fixed float reduction order (world.threads)
    write_metrics(args.metrics, list_metrics(build_world_lists(p, args.data, args.base, args.out), p.world.detector))


if __name__ == "__main__":
    run(main)
