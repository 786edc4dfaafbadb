"""The fast LM-head path: logits at chosen positions only, for any supported VLM class.

A model capability, not training's: training sums response log-probs over it
(:mod:`lpoi.train.logprobs`), verification and AMBER's yes/no answers read the next-token logits at the
last prompt position (:func:`last_logits`). For a supported class the backbone's hidden states are taken
at the kept positions and the LM head is applied there alone; for a 32k vocabulary and 600-token image
prompts this skips ~80 % of the head's work and of the float32 logits memory of the full forward.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

__all__ = ["FAST_PATH_CLASSES", "kept_logits", "last_logits", "token_logps_from_logits"]

FAST_PATH_CLASSES = frozenset({
    "Idefics2ForConditionalGeneration",
    "Idefics3ForConditionalGeneration",
    "LlavaForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration",
    "Qwen3VLForConditionalGeneration",
    "Gemma3ForConditionalGeneration",
})
"""Classes whose forward is ``lm_head(backbone(...)[0])`` with nothing after the head (read in the
transformers source; note Gemma 3's VLM applies no final logit soft-capping, unlike its text-only
``Gemma3ForCausalLM``), so the head can be applied at the kept positions alone. ``tests/families``
checks, for each, that this path is taken and equals the full forward's logits."""

_WARNED: set[str] = set()


def token_logps_from_logits(logits: Tensor, targets: Tensor) -> Tensor:
    """``log_softmax(logits)[target]`` per row, in float32 (``logits`` ``(P, V)``, ``targets`` ``(P,)``)."""
    logits = logits.float()
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _backbone_and_head(model) -> tuple[nn.Module, nn.Module] | None:
    """The (backbone, LM head) of a supported class, through a peft wrapper; None for any other class."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if type(base).__name__ not in FAST_PATH_CLASSES:
        return None
    backbone = getattr(base, getattr(base, "base_model_prefix", "model"), None)
    head = base.get_output_embeddings()
    if not isinstance(backbone, nn.Module) or head is None:
        return None
    return backbone, head


def kept_logits(model, inputs: dict[str, Tensor], keep: Tensor) -> Tensor:
    """Logits at the True positions of ``keep`` ``(n, T)``, flattened to ``(P, V)`` in row-major order.

    Supported classes (:data:`FAST_PATH_CLASSES`): the backbone's last hidden states at the kept
    positions through the LM head. Any other class: its own full forward, sliced (with a one-time
    warning that the saving is lost) -- never a guess at what its forward does after the head.
    """
    parts = _backbone_and_head(model)
    if parts is None:
        name = type(model.get_base_model() if hasattr(model, "get_base_model") else model).__name__
        if name not in _WARNED:
            _WARNED.add(name)
            warnings.warn(f"{name}: no fast log-prob path for this class; computing full-sequence logits",
                          stacklevel=2)
        return model(**inputs, use_cache=False).logits[keep]
    backbone, head = parts
    hidden = backbone(**inputs, use_cache=False, return_dict=True)[0]
    return head(hidden[keep])


def last_logits(model, inputs: dict[str, Tensor]) -> Tensor:
    """Next-token logits ``(n, V)`` at the last column of a left-padded batch (every prompt's last token)."""
    keep = torch.zeros_like(inputs["input_ids"], dtype=torch.bool)
    keep[:, -1] = True
    return kept_logits(model, inputs, keep)
