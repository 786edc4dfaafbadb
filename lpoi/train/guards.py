"""Checks that stop a run with one line naming the sample, instead of training on something wrong.

* :func:`check_reference_at_step0` -- LoRA starts as the identity (``B = 0``), so before the first
  update the policy *is* the base model and every ``log pi - log pi_ref`` must be ~0. A larger gap
  means the precomputed reference log-probs come from another model, other images or another
  tokenisation than this run's, and the rewards would be measured against the wrong baseline.
* :func:`check_finite` -- a NaN/inf loss or log-prob.

Both are collective under DDP/FSDP: every process learns whether any failed (so none hangs in the
next all-reduce), and the process that saw the problem names its samples.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lpoi.train.reference import ReferenceError

__all__ = ["NonFiniteLossError", "ReferenceMismatchError", "STEP0_ONLINE_TOLERANCE", "STEP0_TOLERANCE", "check_finite",
           "check_reference_at_step0", "step0_tolerance"]

STEP0_TOLERANCE = {"float32": (1e-3, 1e-5), "bfloat16": (0.1, 2e-2), "float16": (0.02, 5e-3)}
"""dtype -> (atol nats, rtol) of ``|log pi - log pi_ref| <= atol + rtol * |log pi_ref|`` at step 0.

float32: the same weights through differently padded batches agree to ~1e-6 nats per sequence
(measured on the tiny models; sums are float64), while the tiny models' log-probs of the same text
on other images differ by 0.009-0.27 nats. bf16/fp16: a few units of the format's rounding (2^-8,
2^-11) per token's worth of log-prob, as batch-shape-dependent kernels may round differently; at
these tolerances only a reference from another model (or far-off images) is caught.

Measured (issue 20; CPU, 8 samples, K = 5, |log pi_ref| ~ 61 nats), max step-0 gap of a reference precomputed
in the run's dtype: tiny LLaVA 0 nats in bf16, fp16 and fp32; tiny Idefics2 3.0e-3 nats in bf16 (a reward of
3.0e-4 at beta 0.1), 2.3e-4 in fp16, 9.5e-7 in fp32 -- the reference stage's batches are not the training
batches, and some kernels round per batch shape (more of them on a GPU, not measured here). The online
reference gave exactly 0 in every case. So these tolerances stay for the precomputed path; at bf16 they
are as large as the list signal (0.1 + 2 % of a ~100-300-nat real answer = 2-6 nats, a reward of 0.2-0.6,
against a list signal |S_k - S_k+1| of ~1e-3..1e-2 early in training; on tiny Idefics2 the measured bf16 gap
alone, 3e-4, is the size of the mean |S_k - S_k+1| after one update, 4e-4) -- which is why the paper presets
use the online reference, checked at :data:`STEP0_ONLINE_TOLERANCE`."""

STEP0_ONLINE_TOLERANCE = (1e-4, 0.0)
"""(atol nats, rtol) of the step-0 check when the reference is computed online (``train.reference: online``,
the official way: the base with the adapter disabled, the same batch through the same forward, no grad). LoRA's
``B = 0`` adds exact zeros (peft casts the sum back to the layer's dtype), so the two forwards are the same
computation: measured gap exactly 0 nats in fp32, bf16 and fp16 (CPU, tiny LLaVA and Idefics2). 1e-4 nats
leaves room for non-deterministic float64 accumulation order on a GPU (~1e-12) and is a reward of 1e-5 at
beta 0.1, over an order below the smallest list signal measured after one update (mean |S_k - S_k+1| at
steps 2/3/4-6: tiny LLaVA 3.6e-4 / 1.6e-3 / 3e-3..7e-3; tiny Idefics2 4.0e-4 / 7.1e-4 / 7e-4..1.9e-3; fp32,
lr 2e-3, batch 4). A larger gap means the policy is not the
base model at step 0 (dropout left on, an adapter that is not the identity)."""


class ReferenceMismatchError(ReferenceError):
    """At step 0 the policy (= base model) and the reference log-probs disagree: wrong reference."""


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the message names the batch's sample ids."""


def step0_tolerance(*dtypes: str | None, online: bool = False) -> tuple[str, float, float]:
    """(dtype, atol, rtol) for the coarsest of ``dtypes`` (the reference's and the training run's);
    ``online``: every reference value of the batch comes from the same forward (:data:`STEP0_ONLINE_TOLERANCE`)."""
    if online:
        return ("the online reference", *STEP0_ONLINE_TOLERANCE)
    known = [d for d in dtypes if d in STEP0_TOLERANCE]
    worst = max(known or ["float32"], key=lambda d: STEP0_TOLERANCE[d][1])
    return (worst, *STEP0_TOLERANCE[worst])


def _any_process(bad: bool, accelerator) -> bool:
    flag = torch.tensor([1.0 if bad else 0.0], device=accelerator.device)
    if accelerator.num_processes > 1:
        flag = accelerator.gather(flag)
    return bool((flag > 0).any())


def check_reference_at_step0(policy: Tensor, reference: Tensor, *, ids: list[str], columns, dtype: str,
                             reference_dtype: str | None, accelerator, online: bool = False) -> None:
    """Raise :class:`ReferenceMismatchError` if any ``|policy - reference|`` of the batch ``(B, C + 1)``
    (columns = list images, then the rejected answer) exceeds the dtype's tolerance (``online``: the online
    reference's). NaNs pass here (:func:`check_finite` names them)."""
    name, atol, rtol = step0_tolerance(dtype, reference_dtype, online=online)
    gap = (policy.detach().double() - reference.double()).abs()
    tol = atol + rtol * reference.double().abs()
    over = gap > tol
    if not _any_process(bool(over.any()), accelerator):
        return
    if not bool(over.any()):
        raise ReferenceMismatchError("the step-0 reference check failed on another process; see its error")
    r, c = (int(x) for x in over.nonzero()[0])
    seq = "the rejected answer" if c == len(columns) else f"list image {columns[c]}"
    why = ("the adapter-disabled forward differs from the policy's before any update (dropout left on? an adapter "
           "that is not the identity?)" if online else
           "the reference log-probs do not belong to this model/data; re-run the reference stage")
    raise ReferenceMismatchError(
        f"step 0: sample {ids[r]!r} ({seq}): policy log-prob {float(policy[r, c]):.6g} vs reference "
        f"{float(reference[r, c]):.6g}: gap {float(gap[r, c]):.3g} nats > {float(tol[r, c]):.3g} allowed in "
        f"{name}; {why}"
    )


def check_finite(loss: Tensor, policy: Tensor, ids: list[str], step: int, accelerator) -> None:
    bad = not bool(torch.isfinite(loss.detach()).all() & torch.isfinite(policy.detach()).all())
    if not _any_process(bad, accelerator):
        return
    if bad:
        raise NonFiniteLossError(
            f"non-finite loss ({float(loss.detach())}) at optimizer step {step + 1} on samples {ids}; "
            "check these rows' answers and images, or lower the learning rate"
        )
    raise NonFiniteLossError(f"non-finite loss on another process at optimizer step {step + 1}; see its log")
