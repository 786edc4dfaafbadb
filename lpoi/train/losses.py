"""Preference losses for LPOI and its baselines (DPO, mDPO), as pure tensor functions.

Every function takes per-sequence log-probabilities -- the *sum* of the response tokens'
log-probs, prompt and padding masked -- and returns a per-sample loss of shape ``(B,)``;
reducing over the batch is the caller's business (``preference_loss`` does it for training).

References
----------
- DPO: Rafailov et al., "Direct Preference Optimization", NeurIPS 2023, Eq. 7 (sigmoid loss).
- mDPO: Wang et al., "mDPO: Conditional Preference Optimization for Multimodal LLMs",
  EMNLP 2024 -- the conditional image preference term and the reward anchor.
- LPOI: Pesaran Zadeh, Oh & Kim, "LPOI: Listwise Preference Optimization for Vision Language
  Models", ACL 2025 (arXiv:2505.21061) -- a Plackett-Luce ranking of K images in which the
  critical object is progressively hidden, plus the text DPO term and mDPO's anchor.
  The official code (``dpo_pl5_loss`` in ``my_dpo_trainer_5img.py``) unrolls K = 5 by hand as
  ``log(exp(s0) + ... + exp(s4))``, which overflows to inf/nan once a score passes ~88 in
  float32; here K is a tensor dimension and the suffix log-sum-exp uses ``torch.logcumsumexp``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

METHODS = ("lpoi", "mdpo", "dpo")
"""Training objectives accepted by :func:`preference_loss` (``train.method``)."""

LOSS_TERMS = ("dpo", "list", "anchor")
"""The loss terms :func:`preference_loss` weighs (``train.weights`` keys) and returns by name; the
recipe logs each as ``loss_<name>``."""


def _check_beta(beta: float) -> None:
    if not beta > 0:  # also rejects NaN
        raise ValueError(f"beta must be > 0, got {beta}")


def _check_same_shape(ndim: int, **tensors: Tensor) -> None:
    """Raise a ValueError naming the offending argument unless all tensors share one ``ndim``-D shape."""
    names = list(tensors)
    for name in names:
        if tensors[name].dim() != ndim:
            raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(tensors[name].shape)}")
    first = names[0]
    for name in names[1:]:
        if tensors[name].shape != tensors[first].shape:
            raise ValueError(
                f"{name} has shape {tuple(tensors[name].shape)} but {first} has shape "
                f"{tuple(tensors[first].shape)}; they must match"
            )


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    beta: float,
) -> Tensor:
    """Sigmoid DPO loss (Rafailov et al. 2023, Eq. 7).

    ``L = -log sigmoid(beta * ((pi_w - ref_w) - (pi_l - ref_l)))``

    Args:
        policy_chosen_logps: policy log-probs of the chosen responses, shape ``(B,)``.
        policy_rejected_logps: policy log-probs of the rejected responses, shape ``(B,)``.
        reference_chosen_logps: reference log-probs of the chosen responses, shape ``(B,)``.
        reference_rejected_logps: reference log-probs of the rejected responses, shape ``(B,)``.
        beta: temperature (> 0); the paper uses 0.1.

    Returns:
        Per-sample loss, shape ``(B,)``.

    Example (equal log-probs give ``log 2``):
        >>> z = torch.zeros(1)
        >>> dpo_loss(z, z, z, z, beta=0.1)
        tensor([0.6931])
    """
    _check_beta(beta)
    _check_same_shape(
        1,
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        reference_chosen_logps=reference_chosen_logps,
        reference_rejected_logps=reference_rejected_logps,
    )
    logits = (policy_chosen_logps - reference_chosen_logps) - (
        policy_rejected_logps - reference_rejected_logps
    )
    return -F.logsigmoid(beta * logits)


def listwise_loss(policy_logps: Tensor, reference_logps: Tensor, beta: float) -> Tensor:
    """LPOI's Plackett-Luce listwise loss over K images of decreasing object visibility.

    Column 0 is the most visible (original) image and must rank first; column K-1 has the
    critical object fully hidden. With scores ``S_k = beta * (pi_k - ref_k)`` (the implicit
    DPO reward of the chosen answer given image k), the negative log-likelihood of the
    ranking 0 > 1 > ... > K-1 under Plackett-Luce is

    ``L = sum_{k=0}^{K-2} ( logsumexp(S_k, ..., S_{K-1}) - S_k )``

    (the k = K-1 term is identically 0). For K = 2 this is DPO: ``-log sigmoid(S_0 - S_1)``.
    The suffix log-sum-exp is ``logcumsumexp`` on the reversed columns, stable for any score.

    Args:
        policy_logps: policy log-probs of the chosen answer given each list image, ``(B, K)``, K >= 2.
        reference_logps: reference log-probs of the same sequences, ``(B, K)``.
        beta: temperature (> 0).

    Returns:
        Per-sample loss, shape ``(B,)``.

    Examples (``beta = 1``, zero reference, so ``S = policy_logps``):
        K = 2, S = (1, 0): ``log(e + 1) - 1 = log(1 + e^-1) = 0.31326``, i.e. ``-log sigmoid(1)``.

        >>> ref = torch.zeros(1, 2)
        >>> listwise_loss(torch.tensor([[1.0, 0.0]]), ref, beta=1.0)
        tensor([0.3133])

        K = 3, equal scores: ``-log(1/3) - log(1/2) = log 6 = 1.79176``.

        >>> listwise_loss(torch.zeros(1, 3), torch.zeros(1, 3), beta=1.0)
        tensor([1.7918])
    """
    _check_beta(beta)
    _check_same_shape(2, policy_logps=policy_logps, reference_logps=reference_logps)
    if policy_logps.shape[1] < 2:
        raise ValueError(
            f"listwise_loss needs K >= 2 list images, got policy_logps of shape {tuple(policy_logps.shape)}"
        )
    scores = beta * (policy_logps - reference_logps)  # (B, K)
    suffix_lse = torch.logcumsumexp(scores.flip(-1), dim=-1).flip(-1)  # [:, k] = logsumexp(S_k..S_{K-1})
    return (suffix_lse - scores)[:, :-1].sum(-1)


def anchor_loss(
    policy_chosen_logps: Tensor,
    reference_chosen_logps: Tensor,
    beta: float,
    delta: float = 0.0,
) -> Tensor:
    """mDPO's reward anchor: keeps the chosen answer's reward above ``delta``.

    ``L = -log sigmoid(beta * (pi_w - ref_w) - delta)``. Without it, DPO-style objectives can
    lower the chosen likelihood as long as the rejected one falls faster (mDPO, Wang et al. 2024).
    LPOI applies it to the chosen answer on the original image with ``delta = 0``.

    Args:
        policy_chosen_logps: policy log-probs of (original image, chosen answer), ``(B,)``.
        reference_chosen_logps: reference log-probs of the same sequences, ``(B,)``.
        beta: temperature (> 0).
        delta: reward threshold (0 in mDPO and LPOI).

    Returns:
        Per-sample loss, shape ``(B,)``.

    Example (zero reward and ``delta = 0`` give ``log 2``):
        >>> anchor_loss(torch.zeros(1), torch.zeros(1), beta=0.1)
        tensor([0.6931])
    """
    _check_beta(beta)
    _check_same_shape(
        1, policy_chosen_logps=policy_chosen_logps, reference_chosen_logps=reference_chosen_logps
    )
    return -F.logsigmoid(beta * (policy_chosen_logps - reference_chosen_logps) - delta)


def image_pair_loss(
    policy_original_logps: Tensor,
    policy_corrupted_logps: Tensor,
    reference_original_logps: Tensor,
    reference_corrupted_logps: Tensor,
    beta: float,
) -> Tensor:
    """mDPO's conditional image preference: the chosen answer should be likelier on the real image.

    DPO in which the "chosen" sequence is (original image, chosen answer) and the "rejected"
    one is (corrupted image, chosen answer) -- same text, only the image differs, so the model
    cannot satisfy it from the text alone. mDPO corrupts by random cropping; here the caller
    passes whichever corrupted image it uses (e.g. the fully hidden LPOI list image).

    Args:
        policy_original_logps: policy log-probs of the chosen answer on the original image, ``(B,)``.
        policy_corrupted_logps: policy log-probs of the chosen answer on the corrupted image, ``(B,)``.
        reference_original_logps: reference log-probs, original image, ``(B,)``.
        reference_corrupted_logps: reference log-probs, corrupted image, ``(B,)``.
        beta: temperature (> 0).

    Returns:
        Per-sample loss, shape ``(B,)``.
    """
    return dpo_loss(
        policy_original_logps,
        policy_corrupted_logps,
        reference_original_logps,
        reference_corrupted_logps,
        beta,
    )


def _weights(method: str, weights: Mapping[str, float] | None) -> dict[str, float]:
    if weights is None:
        return dict.fromkeys(LOSS_TERMS, 1.0)
    unknown = sorted(set(weights) - set(LOSS_TERMS))
    if unknown:
        raise ValueError(f"unknown loss weight(s) {unknown}; allowed keys are {list(LOSS_TERMS)}")
    needed = ("dpo",) if method == "dpo" else LOSS_TERMS
    missing = [k for k in needed if k not in weights]
    if missing:
        raise ValueError(f"loss weights for method {method!r} are missing {missing}")
    return {k: float(weights.get(k, 0.0)) for k in LOSS_TERMS}


def preference_loss(
    method: str,
    *,
    policy_list_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_list_logps: Tensor,
    reference_rejected_logps: Tensor,
    beta: float,
    weights: Mapping[str, float] | None = None,
    delta: float = 0.0,
) -> dict[str, Tensor]:
    """The training objective of ``train.method``, reduced over the batch, with diagnostics.

    Column 0 of the list log-probs is the (original image, chosen answer) sequence, shared by
    the text pair and the list, so it is computed once by the caller.

    - ``lpoi`` (the paper): ``w_dpo * DPO + w_list * listwise + w_anchor * anchor``.
    - ``mdpo``: ``w_dpo * DPO + w_list * image_pair(column 0 vs column K-1) + w_anchor * anchor``;
      the last column is the corrupted image (the fully hidden one, or mDPO's crop).
    - ``dpo``: ``w_dpo * DPO`` only; list columns beyond 0 are not used and K = 1 is allowed.

    Args:
        method: one of ``METHODS``.
        policy_list_logps: policy log-probs of the chosen answer on each list image, ``(B, K)``.
        policy_rejected_logps: policy log-probs of (original image, rejected answer), ``(B,)``.
        reference_list_logps: reference log-probs matching ``policy_list_logps``, ``(B, K)``.
        reference_rejected_logps: reference log-probs matching ``policy_rejected_logps``, ``(B,)``.
        beta: temperature (> 0).
        weights: ``{"dpo", "list", "anchor"}`` -> weight (``train.weights``); None means all 1.
            ``dpo`` needs only the ``"dpo"`` key.
        delta: anchor threshold.

    Returns:
        ``"loss"``: scalar, batch mean of the weighted sum (the value to backpropagate).
        ``"dpo"``, ``"list"``, ``"anchor"``: scalar batch means of the *unweighted* components
        the method uses (for mdpo ``"list"`` is the image-pair term).
        Diagnostics, all detached: ``"rewards"`` ``(B, K)`` = ``beta * (policy - reference)`` per
        list position; ``"rewards_rejected"`` ``(B,)``; ``"margin"`` = mean of
        ``rewards[:, 0] - rewards_rejected``; ``"reward_accuracy"`` = share of samples with
        ``rewards[:, 0] > rewards_rejected``; ``"ranking_accuracy"`` (only when K >= 2) = share of
        adjacent list pairs ``(k, k+1)`` with ``rewards[:, k] > rewards[:, k+1]``, over batch and pairs.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {list(METHODS)}")
    _check_beta(beta)
    _check_same_shape(2, policy_list_logps=policy_list_logps, reference_list_logps=reference_list_logps)
    _check_same_shape(
        1, policy_rejected_logps=policy_rejected_logps, reference_rejected_logps=reference_rejected_logps
    )
    batch, k = policy_list_logps.shape
    if policy_rejected_logps.shape[0] != batch:
        raise ValueError(
            f"policy_rejected_logps has batch size {policy_rejected_logps.shape[0]} but policy_list_logps "
            f"has shape {tuple(policy_list_logps.shape)}; the batch sizes must match"
        )
    min_k = 1 if method == "dpo" else 2
    if k < min_k:
        raise ValueError(
            f"method {method!r} needs K >= {min_k} list columns, got policy_list_logps of shape {(batch, k)}"
        )
    w = _weights(method, weights)

    pol_chosen, ref_chosen = policy_list_logps[:, 0], reference_list_logps[:, 0]
    components = {
        "dpo": dpo_loss(pol_chosen, policy_rejected_logps, ref_chosen, reference_rejected_logps, beta)
    }
    if method == "lpoi":
        components["list"] = listwise_loss(policy_list_logps, reference_list_logps, beta)
    elif method == "mdpo":
        components["list"] = image_pair_loss(
            pol_chosen, policy_list_logps[:, -1], ref_chosen, reference_list_logps[:, -1], beta
        )
    if method != "dpo":
        components["anchor"] = anchor_loss(pol_chosen, ref_chosen, beta, delta)

    total = sum(w[name] * per_sample for name, per_sample in components.items())
    out: dict[str, Tensor] = {"loss": total.mean()}
    out.update({name: per_sample.mean() for name, per_sample in components.items()})

    out.update(reward_stats(policy_list_logps, policy_rejected_logps, reference_list_logps,
                            reference_rejected_logps, beta))
    return out


def reward_stats(
    policy_list_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_list_logps: Tensor,
    reference_rejected_logps: Tensor,
    beta: float,
) -> dict[str, Tensor]:
    """The detached reward diagnostics of :func:`preference_loss` (same arguments, same shapes, unchecked):
    ``"rewards"`` ``(B, K)``, ``"rewards_rejected"`` ``(B,)``, ``"margin"``, ``"reward_accuracy"`` and, when
    K >= 2, ``"ranking_accuracy"`` (see :func:`preference_loss`). Also the held-out rewards of the shapes
    world (:func:`lpoi.world.study.heldout_rewards`)."""
    with torch.no_grad():
        rewards = (beta * (policy_list_logps - reference_list_logps)).detach()
        rewards_rejected = (beta * (policy_rejected_logps - reference_rejected_logps)).detach()
        out = {"rewards": rewards, "rewards_rejected": rewards_rejected,
               "margin": (rewards[:, 0] - rewards_rejected).mean(),
               "reward_accuracy": (rewards[:, 0] > rewards_rejected).float().mean()}
        if rewards.shape[1] >= 2:
            out["ranking_accuracy"] = (rewards[:, :-1] > rewards[:, 1:]).float().mean()
    return out
