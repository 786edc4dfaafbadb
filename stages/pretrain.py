"""pretrain: train the shapes world's base VLM from scratch on captions and yes/no questions (world.model,
world.pretrain) and save it as a Hugging Face folder (safetensors + processor). A no-op unless world.name is
shapes (the embedded default's base models are built offline, see lpoi/models/tiny.py)."""

import _common
from _common import parser, run

from lpoi.world.off import world_is_off


def main():
    ap = parser(__doc__)
    ap.add_argument("--data", required=True, help="world_data's folder")
    ap.add_argument("--out", required=True, help="output model folder")
    ap.add_argument("--metrics", required=True, help="metrics JSON to write (losses)")
    args = ap.parse_args()
    p = _common.load(args)

    if world_is_off(p, args.out, metrics=args.metrics):
        return
    import torch

    from lpoi.stage import write_metrics
    from lpoi.world.pretrain import run_pretrain

    torch.set_num_threads(p.world.threads)  # a fixed float reduction order (world.threads)
    stats = run_pretrain(p.world, args.data, args.out)
    stats.pop("history")  # in the model folder (pretrain_history.json), not in the metrics
    print(f"pretrain: {stats['steps']} steps in {stats.pop('seconds'):.0f}s")
    write_metrics(args.metrics, stats)


if __name__ == "__main__":
    run(main)
