"""Sequence log-probabilities: the sum of the response tokens' log-probs, prompt and padding masked.

All sequences of a step go through as few forwards as memory allows (``micro_batch_sequences`` rows
per forward, each chunk trimmed to its own longest row, split per sequence by the batch's offsets, so
Qwen's flat patch tensors and SmolVLM's crops are cut correctly). Only the positions that predict a
response token reach the LM head: the backbone's hidden states are taken at those positions and the
head is applied there alone (:func:`lpoi.models.logits.kept_logits`), and the log-softmax is taken in float32 on those
positions only (summed per sequence in float64). For a 32k vocabulary and 600-token image prompts this
skips ~80 % of the LM-head work and of the float32 logits memory of the full-sequence forward.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lpoi.models.logits import kept_logits, token_logps_from_logits
from lpoi.train.collate import SequenceBatch

__all__ = ["SequenceLogps", "sequence_logps"]


def _chunk_logps(model, batch: SequenceBatch) -> Tensor:
    resp = batch.response_mask
    if resp[:, 0].any():
        raise ValueError("a response starts at position 0: every sequence needs a prompt before its answer")
    ids = batch.inputs["input_ids"]
    keep = torch.zeros_like(resp)
    keep[:, :-1] = resp[:, 1:]  # position t predicts token t+1
    targets = ids[:, 1:][resp[:, 1:]]
    rows = torch.arange(resp.shape[0], device=resp.device)[:, None].expand_as(resp)[keep]
    tok = token_logps_from_logits(kept_logits(model, batch.inputs, keep), targets).double()
    return torch.zeros(resp.shape[0], dtype=tok.dtype, device=tok.device).index_add(0, rows, tok)


def sequence_logps(model, batch: SequenceBatch, *, micro_batch_sequences: int | None = None) -> Tensor:
    """Summed response log-probs of every row of ``batch``, shape ``(N,)``, float64.

    Token log-probs are float32; their sum is float64, because a float32 sum of a few hundred terms
    of ~-5 each (``|sum|`` ~ 1000, ulp ~1e-4) would blur the small policy - reference differences
    the losses are made of.

    Args:
        model: any ``AutoModelForImageTextToText`` (or a peft wrapper of one) taking the processor's
            tensors; gradients flow when grad mode is on.
        batch: right-padded sequences with their response mask and offsets (``collate.encode_sequences``).
        micro_batch_sequences: most rows per forward; None = all rows in one forward.
    """
    n = len(batch)
    if n == 0:
        raise ValueError("empty batch")
    m = n if not micro_batch_sequences else max(1, int(micro_batch_sequences))
    parts = [_chunk_logps(model, batch.rows(s, min(n, s + m))) for s in range(0, n, m)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class SequenceLogps(nn.Module):
    """``sequence_logps`` as a module, so a DDP/FSDP wrapper sees one forward per micro-step
    (all chunks inside it) and synchronises gradients once in the following backward.

    ``reference=True`` computes the frozen base model's log-probs instead: the peft adapter disabled,
    eval mode, no gradients -- through the same (wrapped) forward, so FSDP gathers its shards as usual.
    ``offsets`` are the batch's (``SequenceBatch.offsets``): without them a family whose inputs are not
    one row per sequence (Qwen-VL, SmolVLM) cannot be cut into micro-batches.
    """

    def __init__(self, model: nn.Module, micro_batch_sequences: int | None = None):
        super().__init__()
        self.model = model
        self.micro_batch_sequences = micro_batch_sequences

    def forward(self, inputs: dict[str, Tensor], response_mask: Tensor, reference: bool = False,
                offsets: dict[str, Tensor] | None = None) -> Tensor:
        batch = SequenceBatch(inputs, response_mask, offsets=offsets)
        if not reference:
            return sequence_logps(self.model, batch, micro_batch_sequences=self.micro_batch_sequences)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self.model.disable_adapter():
                return sequence_logps(self.model, batch, micro_batch_sequences=self.micro_batch_sequences)
        finally:
            self.model.train(was_training)
