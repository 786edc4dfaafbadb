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

__all__ = ["NonFiniteLossError", "ReferenceMismatchError", "STEP0_TOLERANCE", "check_finite",
           "check_reference_at_step0", "step0_tolerance"]

STEP0_TOLERANCE = {"float32": (1e-3, 1e-5), "bfloat16": (0.1, 2e-2), "float16": (0.02, 5e-3)}
"""dtype -> (atol nats, rtol) of ``|log pi - log pi_ref| <= atol + rtol * |log pi_ref|`` at step 0.

float32: the same weights through differently padded batches agree to ~1e-6 nats per sequence
(measured on the tiny models; sums are float64), while the tiny models' log-probs of the same text
on other images differ by 0.009-0.27 nats. bf16/fp16: a few units of the format's rounding (2^-8,
2^-11) per token's worth of log-prob, as batch-shape-dependent kernels may round differently; at
these tolerances only a reference from another model (or far-off images) is caught."""


class ReferenceMismatchError(ReferenceError):
    """At step 0 the policy (= base model) and the reference log-probs disagree: wrong reference."""


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the message names the batch's sample ids."""


def step0_tolerance(*dtypes: str | None) -> tuple[str, float, float]:
    """(dtype, atol, rtol) for the coarsest of ``dtypes`` (the reference's and the training run's)."""
    known = [d for d in dtypes if d in STEP0_TOLERANCE]
    worst = max(known or ["float32"], key=lambda d: STEP0_TOLERANCE[d][1])
    return (worst, *STEP0_TOLERANCE[worst])


def _any_process(bad: bool, accelerator) -> bool:
    flag = torch.tensor([1.0 if bad else 0.0], device=accelerator.device)
    if accelerator.num_processes > 1:
        flag = accelerator.gather(flag)
    return bool((flag > 0).any())


def check_reference_at_step0(policy: Tensor, reference: Tensor, *, ids: list[str], columns, dtype: str,
                             reference_dtype: str | None, accelerator) -> None:
    """Raise :class:`ReferenceMismatchError` if any ``|policy - reference|`` of the batch ``(B, C + 1)``
    (columns = list images, then the rejected answer) exceeds the dtype's tolerance. NaNs pass here
    (:func:`check_finite` names them)."""
    name, atol, rtol = step0_tolerance(dtype, reference_dtype)
    gap = (policy.detach().double() - reference.double()).abs()
    tol = atol + rtol * reference.double().abs()
    over = gap > tol
    if not _any_process(bool(over.any()), accelerator):
        return
    if not bool(over.any()):
        raise ReferenceMismatchError("the step-0 reference check failed on another process; see its error")
    r, c = (int(x) for x in over.nonzero()[0])
    seq = "the rejected answer" if c == len(columns) else f"list image {columns[c]}"
    raise ReferenceMismatchError(
        f"step 0: sample {ids[r]!r} ({seq}): policy log-prob {float(policy[r, c]):.6g} vs reference "
        f"{float(reference[r, c]):.6g}: gap {float(gap[r, c]):.3g} nats > {float(tol[r, c]):.3g} allowed in "
        f"{name}; the reference log-probs do not belong to this model/data; re-run the reference stage"
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
