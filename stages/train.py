"""train: LoRA on DPO + Plackett-Luce listwise + anchor (train.method: lpoi | mdpo | dpo), resumable.

Multi-GPU: compute.train_processes > 1 re-launches this script under accelerate launch (compute.accelerate:
ddp | fsdp), so dvc repro / dvc exp run record it (docs/scaling.md).
"""

import _common
from _common import parser, run


def main():
    ap = parser(__doc__)
    ap.add_argument("--lists", required=True, help="the lists stage's folder (lists.jsonl)")
    ap.add_argument("--reference", required=True, help="the reference stage's folder (reference.jsonl)")
    ap.add_argument("--out", required=True, help="output folder: adapter/, checkpoints/ (and merged/)")
    ap.add_argument("--live", required=True, help="dvclive folder (metrics.json, plots/)")
    ap.add_argument("--accelerate-config", help="accelerate config when compute.train_processes > 1 "
                    "(default: conf/accelerate/<compute.accelerate>.yaml)")
    args = ap.parse_args()
    p = _common.load(args)

    import os
    import sys

    from lpoi.train.launch import relaunch, should_launch

    if should_launch(p.compute):  # this process only waits: the launched ranks take the stage folder
        relaunch(p.compute, args.accelerate_config, __file__, sys.argv[1:])
        return

    from pathlib import Path

    from lpoi.stage import hold_stage, write_timings
    from lpoi.train.recipe import TrainPaths, train

    # checkpoints survive a kill (persist: true) but never a change of deps, params or model (dvc.yaml entry)
    ckpt = hold_stage("train", args, models=[p.model.name])
    paths = TrainPaths(lists=f"{args.lists}/lists.jsonl", reference=f"{args.reference}/reference.jsonl",
                       out=args.out, live=args.live, checkpoints=ckpt)
    summary = train(p.train, p.model, p.reference, paths)
    ckpt.mkdir(parents=True, exist_ok=True)  # dvc.yaml declares it; the recipe removes the checkpoints when done
    # and keeps the fingerprint marker (an empty folder makes DVC warn on every run)
    if os.environ.get("RANK", "0") != "0":
        return
    # timings are not results: beside the metrics (metrics/train.timings.json, git-ignored), not in the curves
    write_timings(Path(args.live).with_suffix(".json"), {
        "stage": "train", "seconds": summary["seconds"], "samples_per_s": summary["samples_per_s"],
        "steps": summary["steps"], "resumed": summary["resumed_from"], "global_batch": summary["global_batch"]})


if __name__ == "__main__":
    run(main)
