"""Token sequences for preference training: (prompt, image, response) rows, right-padded, response mask.

A sequence is ``prompt_text(processor, question) + prefix + answer + end_of_turn``, where ``prefix``
and ``end_of_turn`` come from the model's own chat template (rendered once with a sentinel answer):
Idefics2 and SmolVLM give ``" " ... "<end_of_utterance>"``, Qwen2.5-VL/Qwen3-VL ``"" ... "<|im_end|>"``,
Gemma 3 ``"" ... "<end_of_turn>"``, LLaVA-1.5 ``" " ... "</s>"`` (its hub template ends the assistant
turn with a space only, so the tokenizer's EOS is appended -- what LLaVA-1.5 was trained with). The
answer's tokens are everything after the prompt's tokens: prompt and full text are tokenised the same
way and the prompt's ids must be a prefix of the full ids, else an error (a template whose answer merges
with the prompt's last token cannot give an exact boundary).

Image placeholders are expanded by the processor inside the prompt only, so the response length found
by the tokenizer alone is the number of trailing real tokens of each processed row (checked token by
token). Truncation to ``max_length`` cuts the response's tail, never the prompt, and is counted.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lpoi.models.batching import default_offsets, select, trim_token_keys
from lpoi.models.chat import encode_batch, prompt_text, response_format, text_kwargs, tokenizer_of
from lpoi.train.data import ListSample, load_sample_image, mdpo_random_crop

__all__ = [
    "CROP",
    "SequenceBatch",
    "collate_samples",
    "encode_sequences",
    "method_columns",
]

CROP = "crop"
"""Column label of mDPO's randomly cropped original image (``train.mdpo_corruption: crop``)."""


@dataclass
class SequenceBatch:
    """N (prompt, image, response) sequences ready for one or more forwards.

    ``inputs`` are the processor's tensors (``input_ids``, ``attention_mask``, ``pixel_values``, ...),
    right-padded; ``response_mask[i, t]`` is True where token t of row i belongs to the response.
    ``offsets`` say which slice of every input tensor belongs to which row (:mod:`lpoi.models.batching`),
    so a batch of any family -- Qwen's flat patches, SmolVLM's crops -- splits per sequence.
    """

    inputs: dict[str, Tensor]
    response_mask: Tensor
    sample_ids: list[str] = field(default_factory=list)
    """Owner of each row, for error messages."""
    n_truncated: int = 0
    """Rows whose response was cut at ``max_length``."""
    offsets: dict[str, Tensor] | None = None
    """Per input tensor, int64 ``(N + 1,)`` row offsets along dim 0 (CPU); None = one entry per row."""

    def __len__(self) -> int:
        return int(self.response_mask.shape[0])

    def to(self, device) -> SequenceBatch:
        return SequenceBatch(
            {k: v.to(device) for k, v in self.inputs.items()},
            self.response_mask.to(device),
            self.sample_ids,
            self.n_truncated,
            self.offsets,
        )

    def rows(self, start: int, stop: int) -> SequenceBatch:
        """Rows ``start:stop``, trimmed to their longest sequence (less padding per forward)."""
        return self.select(range(start, min(stop, len(self))))

    def select(self, rows: Sequence[int]) -> SequenceBatch:
        """The given rows (any order), trimmed to their longest sequence."""
        rows = list(rows)
        if rows == list(range(len(self))):
            return self
        offsets = self.offsets if self.offsets is not None else default_offsets(self.inputs, len(self))
        if offsets is None:
            shapes = {k: tuple(v.shape) for k, v in self.inputs.items()}
            raise ValueError(
                f"cannot split inputs {shapes} of {len(self)} sequences without their offsets; pass the "
                "SequenceBatch's offsets along (SequenceLogps(..., offsets=batch.offsets))"
            )
        part = select(self.inputs, offsets, rows)
        length = int(part.inputs["attention_mask"].sum(-1).max())
        ids = [self.sample_ids[i] for i in rows] if self.sample_ids else []
        return SequenceBatch(trim_token_keys(part.inputs, length), self.response_mask[rows][:, :length], ids, 0,
                             part.offsets)


def _response_length(processor, prompt: str, full: str, sample_id: str) -> tuple[int, list[int]]:
    tok = tokenizer_of(processor)
    p_ids = tok(prompt, **text_kwargs(processor, prompt))["input_ids"]
    f_ids = tok(full, **text_kwargs(processor, full))["input_ids"]
    if f_ids[: len(p_ids)] != p_ids:
        raise ValueError(
            f"sample {sample_id!r}: the prompt's tokens are not a prefix of prompt+answer's tokens "
            f"(the answer merges with the prompt's last token), so the response boundary is not exact"
        )
    return len(f_ids) - len(p_ids), f_ids


def encode_sequences(
    processor,
    *,
    questions: Sequence[str],
    answers: Sequence[str],
    images: Sequence,
    sample_ids: Sequence[str],
    max_length: int | None = None,
) -> SequenceBatch:
    """Encode N (question, image, answer) sequences, right-padded, with the response mask.

    Args:
        processor: the model's processor (chat template, tokenizer, image processor).
        questions, answers, images, sample_ids: one entry per sequence (answers are stripped).
        max_length: longest sequence in tokens (image tokens included); a longer response is cut at
            its tail and counted in ``n_truncated`` (with a warning); a prompt that leaves no room for
            a single response token is an error naming the sample.
    """
    n = len(questions)
    if not (len(answers) == len(images) == len(sample_ids) == n) or n == 0:
        raise ValueError("questions, answers, images and sample_ids must be non-empty and of equal length")
    tok = tokenizer_of(processor)
    prefix, end = response_format(processor)
    fulls, resp_len, tails = [], [], []
    cache: dict[tuple[str, str], tuple[str, int, list[int]]] = {}
    for q, a, sid in zip(questions, answers, sample_ids):
        if (q, a) not in cache:
            prompt = prompt_text(processor, q)
            full = prompt + prefix + a.strip() + end
            r, f_ids = _response_length(processor, prompt, full, sid)
            cache[(q, a)] = (full, r, f_ids[len(f_ids) - r :])
        full, r, tail = cache[(q, a)]
        fulls.append(full)
        resp_len.append(r)
        tails.append(tail)

    packed = encode_batch(processor, fulls, list(images), padding_side="right")
    inputs = packed.inputs
    ids, att = inputs["input_ids"], inputs["attention_mask"]
    lengths = att.sum(-1).tolist()
    mask = torch.zeros_like(ids, dtype=torch.bool)
    n_trunc = 0
    for i, (length, r, tail) in enumerate(zip(lengths, resp_len, tails)):
        if int(att[i, :length].sum()) != length:
            raise ValueError("the processor did not right-pad the batch; cannot locate the responses")
        if ids[i, length - r : length].tolist() != tail:
            raise ValueError(
                f"sample {sample_ids[i]!r}: the processor's tokens of the answer differ from the "
                "tokenizer's; "
                "cannot locate the response exactly"
            )
        start = length - r
        if max_length is not None and length > max_length:
            if start >= max_length:
                raise ValueError(
                    f"sample {sample_ids[i]!r}: the prompt alone has {start} tokens (image tokens included), "
                    f"which leaves no room for the answer within max_length={max_length}"
                )
            att[i, max_length:] = 0
            ids[i, max_length:] = tok.pad_token_id if tok.pad_token_id is not None else 0
            length = max_length
            n_trunc += 1
        mask[i, start:length] = True
    width = int(att.sum(-1).max())
    if n_trunc:
        warnings.warn(
            f"{n_trunc} of {n} sequences had their response truncated to max_length={max_length}",
            stacklevel=2,
        )
    return SequenceBatch(trim_token_keys(inputs, width), mask[:, :width], list(sample_ids), n_trunc, packed.offsets)


def method_columns(method: str, k: int, mdpo_corruption: str = "hidden") -> tuple[int | str, ...]:
    """Which images the chosen answer is scored on, per method (column 0 is always the original).

    ``lpoi``: every list image 0..K-1. ``mdpo``: the original and the corrupted image -- the fully
    hidden list image (K-1) or ``CROP`` (mDPO's random crop). ``dpo``: the original only.
    """
    if method == "lpoi":
        return tuple(range(k))
    if method == "mdpo":
        if mdpo_corruption == "hidden":
            return (0, k - 1)
        if mdpo_corruption == "crop":
            return (0, CROP)
        raise ValueError(f"mdpo_corruption must be 'hidden' or 'crop', got {mdpo_corruption!r}")
    if method == "dpo":
        return (0,)
    raise ValueError(f"unknown method {method!r}")


def collate_samples(
    processor,
    samples: Sequence[ListSample],
    *,
    columns: Sequence[int | str],
    max_length: int | None = None,
    crop_key: str = "0",
) -> SequenceBatch:
    """Load the images of ``samples`` and encode their ``len(columns) + 1`` sequences each.

    Row ``b * (C + 1) + j`` is sample b's chosen answer on column j for ``j < C`` and its rejected
    answer on the original image for ``j = C``. ``crop_key`` seeds mDPO's crop (with the sample id).
    """
    questions, answers, images, ids = [], [], [], []
    for b, s in enumerate(samples):
        cache: dict[int, object] = {}

        def image(k: int, s=s, cache=cache):
            if k not in cache:
                cache[k] = load_sample_image(s, k)
            return cache[k]

        for c in columns:
            if c == CROP:
                images.append(mdpo_random_crop(image(0), key=f"{crop_key}:{s.id}"))
            else:
                if not 0 <= int(c) < s.k:
                    raise ValueError(f"sample {s.id!r}: list column {c} out of range for K={s.k}")
                images.append(image(int(c)))
            questions.append(s.prompt)
            answers.append(s.chosen)
            ids.append(s.id)
        questions.append(s.prompt)
        answers.append(s.rejected)
        images.append(image(0))
        ids.append(s.id)
    return encode_sequences(
        processor, questions=questions, answers=answers, images=images, sample_ids=ids, max_length=max_length
    )
