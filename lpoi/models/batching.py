"""Variable-size visual inputs: encode each sequence alone, pack them into one batch, split it back per sequence.

Processors disagree on how a batch's images are laid out: LLaVA and Gemma 3 give one fixed-size image per
row (``pixel_values`` ``(N, 3, H, W)``), Idefics2 pads every image to the batch's largest, SmolVLM/Idefics3
give each row a variable number of crops (``(N, max_crops, 3, H, W)``, zero crops as padding), and the
Qwen-VL models give one flat tensor of patches for the whole batch (``(sum of patches, D)``) plus
``image_grid_thw``. Cutting such a batch into micro-batches needs to know which slice of every tensor
belongs to which sequence, and a batch-level processor call does not say.

So there is one mechanism for all of them: the processor runs once per sequence (its own output is
unambiguous) and :func:`pack` concatenates the results, recording for every tensor the offsets of each
sequence's slice along dim 0 (:class:`Packed`). Two kinds of tensor, told apart by shape alone:

* **token-aligned** -- 2-D, one row of the sequence's length (``input_ids``, ``attention_mask``,
  ``token_type_ids``, ``mm_token_type_ids``, ...): padded to the longest sequence on ``padding_side``
  (``input_ids`` with the pad id, the others with 0);
* **everything else** (``pixel_values``, ``pixel_attention_mask``, ``image_grid_thw``, ...): concatenated
  along dim 0, trailing dims zero-padded at their end to the largest -- what the processors do themselves
  (Idefics2 pads images bottom/right, Idefics3 pads the crop dimension with zero crops). ``tests/families``
  checks the packed batch equals the processor's own batch call for every supported family.

:func:`select` takes any rows (in any order) back out through the offsets, so micro-batching and
per-sequence selection work the same way for every family.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Packed", "default_offsets", "is_token_aligned", "pack", "select", "trim_token_keys"]


@dataclass
class Packed:
    """A batch of processor outputs and, per tensor, where each sequence's slice starts along dim 0."""

    inputs: dict[str, Tensor]
    offsets: dict[str, Tensor]
    """``offsets[key]``: int64 ``(N + 1,)`` on the CPU; sequence i owns ``inputs[key][off[i]:off[i + 1]]``."""

    def __len__(self) -> int:
        return int(self.inputs["input_ids"].shape[0])


def is_token_aligned(key: str, value: Tensor, input_ids: Tensor) -> bool:
    """True for tensors that hold one value per token (same 2-D shape as ``input_ids``)."""
    return key == "input_ids" or (value.dim() == 2 and tuple(value.shape) == tuple(input_ids.shape))


def pack(encodings: Sequence[dict[str, Tensor]], *, pad_token_id: int, padding_side: str = "right") -> Packed:
    """One batch from per-sequence processor outputs (each with a leading dim of 1 for its tokens)."""
    if not encodings:
        raise ValueError("nothing to pack")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    keys = list(encodings[0])
    for i, enc in enumerate(encodings):
        if list(enc) != keys:
            raise ValueError(f"sequence {i} has processor outputs {sorted(enc)}, sequence 0 has {sorted(keys)}")
    width = max(int(enc["input_ids"].shape[1]) for enc in encodings)
    inputs, offsets = {}, {}
    for key in keys:
        parts = [enc[key] for enc in encodings]
        if all(is_token_aligned(key, p, enc["input_ids"]) for p, enc in zip(parts, encodings)):
            fill = pad_token_id if key == "input_ids" else 0
            inputs[key] = torch.cat([_pad_tokens(p, width, fill, padding_side) for p in parts])
        else:
            inputs[key] = _cat_padded(key, parts)
        offsets[key] = torch.tensor([0, *torch.tensor([p.shape[0] for p in parts]).cumsum(0).tolist()])
    return Packed(inputs, offsets)


def _pad_tokens(row: Tensor, width: int, fill: int, side: str) -> Tensor:
    pad = row.new_full((row.shape[0], width - row.shape[1]), fill)
    return torch.cat([pad, row] if side == "left" else [row, pad], dim=1)


def _cat_padded(key: str, parts: list[Tensor]) -> Tensor:
    if any(p.dim() != parts[0].dim() for p in parts):
        raise ValueError(f"processor output {key!r} has a different number of dims per sequence")
    if parts[0].dim() == 0:
        raise ValueError(f"processor output {key!r} is a scalar; cannot tell which sequence it belongs to")
    shape = [max(p.shape[d] for p in parts) for d in range(1, parts[0].dim())]
    out = []
    for p in parts:
        pad = []  # F.pad order: last dim first, (before, after) pairs; zeros at the end of every trailing dim
        for d in range(p.dim() - 1, 0, -1):
            pad += [0, shape[d - 1] - p.shape[d]]
        out.append(torch.nn.functional.pad(p, pad) if any(pad) else p)
    return torch.cat(out)


def default_offsets(inputs: dict[str, Tensor], n: int) -> dict[str, Tensor] | None:
    """Offsets of a batch whose every tensor has one entry per sequence along dim 0; None otherwise."""
    if any(v.dim() == 0 or v.shape[0] != n for v in inputs.values()):
        return None
    step = torch.arange(n + 1)
    return {k: step for k in inputs}


def select(inputs: dict[str, Tensor], offsets: dict[str, Tensor], rows: Sequence[int]) -> Packed:
    """The given sequences (any order, repeats allowed) with their slices of every tensor."""
    rows = [int(r) for r in rows]
    out, out_off = {}, {}
    for key, v in inputs.items():
        off = offsets[key].cpu()  # DDP moves forward kwargs to the device; the index math stays on the CPU
        starts, stops = off[rows], off[[r + 1 for r in rows]]
        index = torch.cat([torch.arange(int(a), int(b)) for a, b in zip(starts, stops)])
        out[key] = v.index_select(0, index.to(v.device))
        out_off[key] = torch.cat([torch.zeros(1, dtype=torch.long), (stops - starts).cumsum(0)])
    return Packed(out, out_off)


def trim_token_keys(inputs: dict[str, Tensor], width: int) -> dict[str, Tensor]:
    """Right-padded batch cut to its first ``width`` columns (token-aligned tensors only)."""
    ids = inputs["input_ids"]
    return {k: (v[:, :width] if is_token_aligned(k, v, ids) else v) for k, v in inputs.items()}
