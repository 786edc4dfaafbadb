"""train: LoRA on DPO + Plackett-Luce listwise + anchor (train.method: lpoi | mdpo | dpo), resumable.

Multi-GPU: accelerate launch --config_file conf/accelerate/ddp.yaml stages/train.py ARGS
"""

import _common
from _common import parser, run


def main():
    ap = parser(__doc__)
    ap.add_argument("--lists", required=True, help="the lists stage's folder (lists.jsonl)")
    ap.add_argument("--reference", required=True, help="the reference stage's folder (reference.jsonl)")
    ap.add_argument("--out", required=True, help="output folder: adapter/, checkpoints/ (and merged/)")
    ap.add_argument("--live", required=True, help="dvclive folder (metrics.json, plots/)")
    args = ap.parse_args()
    p = _common.load(args)
    t = p.train

    from lpoi.stage import hold_stage
    from lpoi.train.trainer import train

    # checkpoints survive a kill (persist: true) but never a change of deps, params or model (dvc.yaml entry)
    ckpt = hold_stage("train", args, models=[p.model.name])
    train(lists_path=f"{args.lists}/lists.jsonl", reference_path=f"{args.reference}/reference.jsonl", out_dir=args.out,
          model_name=p.model.name, method=t.method, beta=t.beta, weights=t.weights.model_dump(), delta=t.delta,
          reference=t.reference, lr=t.lr, epochs=t.epochs, max_steps=t.max_steps, batch_size=t.batch_size,
          grad_accum=t.grad_accum, warmup_ratio=t.warmup_ratio, scheduler=t.scheduler, precision=t.precision,
          gradient_checkpointing=t.gradient_checkpointing, micro_batch_sequences=t.micro_batch_sequences,
          max_length=p.reference.max_length, lora=t.lora.model_dump(), seed=t.seed, save_steps=t.save_steps,
          merge=t.merge, mdpo_corruption=t.mdpo_corruption, live_dir=args.live, checkpoint_dir=ckpt,
          max_grad_norm=t.max_grad_norm, weight_decay=t.weight_decay, num_workers=t.num_workers,
          logging_steps=t.logging_steps)
    ckpt.mkdir(parents=True, exist_ok=True)  # dvc.yaml declares it; the trainer clears it when done


if __name__ == "__main__":
    run(main)
