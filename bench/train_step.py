"""One LPOI training step, official formulation vs ours: same model, same batch, alternating, one run.

(a) official (LPOI's ``my_dpo_trainer_5img.py``, TRL-style): a policy forward on the text pair
    (chosen and rejected on the original image), a separate policy forward on the K-image list
    (the original-image chosen sequence again among them), and the same two forwards for the
    reference with the LoRA adapter disabled -- 2K + 4 = 14 sequence-forwards per sample at K = 5,
    7 of them with gradients;
(b) ours: the reference log-probs precomputed once (the reference stage), the shared
    (original, chosen) sequence computed once, all K + 1 = 6 sequences in one batched forward.

Both compute DPO + Plackett-Luce list + anchor with the same loss functions, so the losses must
agree; each step is forward + backward (no optimizer update, so every repetition sees the same
weights). Batches are tokenised before timing (data loading is the same CPU work in both and runs in
loader workers in training). LoRA's B matrices get small random values so policy != reference and
the loss is not trivially constant. Prints per-step times, both losses, and ``speedup=X.XX`` last.

    python bench/train_step.py [--model tiny/idefics2] [--batch 2] [--k 5] [--steps 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lpoi.train.collate import SequenceBatch, collate_samples  # noqa: E402
from lpoi.train.logprobs import sequence_logps  # noqa: E402
from lpoi.train.losses import anchor_loss, dpo_loss, listwise_loss, preference_loss  # noqa: E402


def official_step(peft_model, pair: SequenceBatch, lst: SequenceBatch, b: int, k: int, beta: float) -> float:
    """Text pair and list as separate policy forwards + the same two with the adapter disabled."""
    pol_pair = sequence_logps(peft_model, pair).view(b, 2)  # rows: chosen, rejected
    pol_list = sequence_logps(peft_model, lst).view(b, k)
    with torch.no_grad(), peft_model.disable_adapter():
        ref_pair = sequence_logps(peft_model, pair).view(b, 2)
        ref_list = sequence_logps(peft_model, lst).view(b, k)
    loss = (
        dpo_loss(pol_pair[:, 0], pol_pair[:, 1], ref_pair[:, 0], ref_pair[:, 1], beta)
        + listwise_loss(pol_list, ref_list, beta)
        + anchor_loss(pol_pair[:, 0], ref_pair[:, 0], beta)
    ).mean()
    loss.backward()
    return float(loss.detach())


def ours_step(
    peft_model,
    batch: SequenceBatch,
    ref: torch.Tensor,
    b: int,
    k: int,
    beta: float,
    micro_batch_sequences: int | None = None,
) -> float:
    """One batched policy forward over K + 1 sequences per sample; reference precomputed."""
    pol = sequence_logps(peft_model, batch, micro_batch_sequences=micro_batch_sequences).view(b, k + 1)
    out = preference_loss(
        "lpoi",
        policy_list_logps=pol[:, :k],
        policy_rejected_logps=pol[:, k],
        reference_list_logps=ref[:, :k],
        reference_rejected_logps=ref[:, k],
        beta=beta,
    )
    out["loss"].backward()
    return float(out["loss"].detach())


def perturb_lora(peft_model, std: float = 0.05, seed: int = 0) -> None:
    """Give LoRA's B matrices (zero at init) small random values: policy != reference."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_((torch.randn(p.shape, generator=g) * std).to(p.dtype))


def alternate(run_a, run_b, steps: int, warmup: int = 1, zero_grad=None):
    """Time ``run_a``/``run_b`` alternately; returns (times_a, times_b, losses_a, losses_b)."""
    ta, tb, la, lb = [], [], [], []
    for i in range(warmup + steps):
        for fn, times, losses in ((run_a, ta, la), (run_b, tb, lb)):
            if zero_grad:
                zero_grad()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
                losses.append(loss)
    return ta, tb, la, lb


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny/idefics2")
    ap.add_argument("--batch", type=int, default=2, help="samples per step")
    ap.add_argument("--k", type=int, default=5, help="list length")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per formulation")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: stable timings on a shared box)"
    )
    ap.add_argument("--beta", type=float, default=0.1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from peft import get_peft_model

    from lpoi.config import LoraParams
    from lpoi.models import load_vlm
    from lpoi.train.data import load_lists, write_synthetic_lists
    from lpoi.train.lora import lora_config

    b, k = args.batch, args.k
    with tempfile.TemporaryDirectory() as tmp:
        samples = load_lists(write_synthetic_lists(tmp, n_samples=b, k=k, seed=1))
        model, processor = load_vlm(args.model)
        torch.manual_seed(0)
        peft_model = get_peft_model(model, lora_config(LoraParams(r=8, alpha=8, dropout=0.0)))
        perturb_lora(peft_model)
        peft_model.train()
        ours = collate_samples(processor, samples, columns=tuple(range(k)))
        pair = collate_samples(processor, samples, columns=(0,))  # (chosen, original), (rejected, original)
        lst = collate_samples(processor, samples, columns=tuple(range(k)))
        lst = lst.select([r for r in range(len(lst)) if r % (k + 1) < k])  # drop the rejected rows
    with torch.no_grad(), peft_model.disable_adapter():  # the reference stage, done once
        peft_model.eval()
        ref = sequence_logps(peft_model, ours).view(b, k + 1)
        peft_model.train()

    ta, tb, la, lb = alternate(
        lambda: official_step(peft_model, pair, lst, b, k, args.beta),
        lambda: ours_step(peft_model, ours, ref, b, k, args.beta),
        args.steps,
        zero_grad=lambda: peft_model.zero_grad(set_to_none=True),
    )
    n_params = sum(p.numel() for p in peft_model.parameters())
    print(
        f"model={args.model} params={n_params / 1e6:.2f}M batch={b} K={k} threads={args.threads} "
        f"sequence-forwards/sample: official={2 * k + 4} (with grad {k + 2}), ours={k + 1}"
    )
    for i, (a, c, x, y) in enumerate(zip(ta, tb, la, lb)):
        print(f"step {i}: official {a * 1e3:8.1f} ms loss={x:.6f} | ours {c * 1e3:8.1f} ms loss={y:.6f}")
    worst = max(abs(x - y) for x, y in zip(la, lb))
    print(f"loss official={la[0]:.6f} ours={lb[0]:.6f} max|diff|={worst:.2e}")
    if worst > 1e-4:
        raise SystemExit(f"the two formulations disagree: max loss difference {worst:.2e}")
    ma, mb = statistics.median(ta), statistics.median(tb)
    print(f"median step: official={ma * 1e3:.1f} ms ours={mb * 1e3:.1f} ms")
    print(f"speedup={ma / mb:.2f}")


if __name__ == "__main__":
    main()
