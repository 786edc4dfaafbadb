"""Token sequences for preference training: (prompt, image, response) rows, right-padded, response mask.

A sequence is ``prompt_text(processor, question) + prefix + answer + end_of_turn``, where ``prefix``
and ``end_of_turn`` come from the model's own chat template (rendered once with a sentinel answer):
Idefics2 gives ``" " ... "<end_of_utterance>"``, LLaVA-1.5 gives ``" " ... "</s>"`` (its hub template
ends the assistant turn with a space only, so the tokenizer's EOS is appended -- what LLaVA-1.5 was
trained with). The answer's tokens are everything after the prompt's tokens: prompt and full text are
tokenised the same way and the prompt's ids must be a prefix of the full ids, else an error (a template
whose answer merges with the prompt's last token cannot give an exact boundary).

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

from lpoi.models.chat import encode_prompts, prompt_text, tokenizer_of
from lpoi.train.data import ListSample, load_sample_image, mdpo_random_crop

__all__ = [
    "CROP",
    "SequenceBatch",
    "collate_samples",
    "encode_sequences",
    "method_columns",
    "response_format",
]

CROP = "crop"
"""Column label of mDPO's randomly cropped original image (``train.mdpo_corruption: crop``)."""

_SENTINEL = "LPOISENTINELANSWER"


@dataclass
class SequenceBatch:
    """N (prompt, image, response) sequences ready for one or more forwards.

    ``inputs`` are the processor's tensors (``input_ids``, ``attention_mask``, ``pixel_values``, ...),
    right-padded; ``response_mask[i, t]`` is True where token t of row i belongs to the response.
    """

    inputs: dict[str, Tensor]
    response_mask: Tensor
    sample_ids: list[str] = field(default_factory=list)
    """Owner of each row, for error messages."""
    n_truncated: int = 0
    """Rows whose response was cut at ``max_length``."""

    def __len__(self) -> int:
        return int(self.response_mask.shape[0])

    def to(self, device) -> SequenceBatch:
        return SequenceBatch(
            {k: v.to(device) for k, v in self.inputs.items()},
            self.response_mask.to(device),
            self.sample_ids,
            self.n_truncated,
        )

    def rows(self, start: int, stop: int) -> SequenceBatch:
        """Rows ``start:stop``, trimmed to their longest sequence (less padding per forward)."""
        return self._take(slice(start, stop), whole=start == 0 and stop >= len(self))

    def select(self, rows: Sequence[int]) -> SequenceBatch:
        """The given rows (any order), trimmed to their longest sequence."""
        rows = list(rows)
        return self._take(rows, whole=rows == list(range(len(self))))

    def _take(self, index, whole: bool) -> SequenceBatch:
        n = len(self)
        inputs = {}
        for k, v in self.inputs.items():
            if v.dim() == 0 or v.shape[0] != n:
                if whole:
                    inputs[k] = v
                    continue
                raise ValueError(
                    f"cannot split input {k!r} of shape {tuple(v.shape)} per sequence (first dim != {n}); "
                    "use a micro_batch_sequences that covers the whole batch for this model"
                )
            inputs[k] = v[index]
        length = int(inputs["attention_mask"].sum(-1).max())
        for k in ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids"):
            if k in inputs and inputs[k].dim() == 2:
                inputs[k] = inputs[k][:, :length]
        picked = range(n)[index] if isinstance(index, slice) else index
        ids = [self.sample_ids[i] for i in picked] if self.sample_ids else []
        return SequenceBatch(inputs, self.response_mask[index][:, :length], ids, 0)


_FORMAT_CACHE: dict[int, tuple[str, str]] = {}


def response_format(processor) -> tuple[str, str]:
    """``(prefix, end_of_turn)`` around an answer, read from the processor's chat template.

    The template is rendered with and without an assistant turn holding a sentinel; ``prefix`` is what
    sits between the generation prompt and the answer, ``end_of_turn`` the first special token after it
    (``<end_of_utterance>`` for Idefics2), or the tokenizer's EOS when the template closes the turn with
    plain text (LLaVA-1.5's hub template).
    """
    key = id(processor)
    if key in _FORMAT_CACHE:
        return _FORMAT_CACHE[key]
    tok = tokenizer_of(processor)
    prompt = prompt_text(processor, "Q")
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]},
        {"role": "assistant", "content": [{"type": "text", "text": _SENTINEL}]},
    ]
    full = processor.apply_chat_template(messages, tokenize=False)
    at = full.find(_SENTINEL)
    prefix = full[len(prompt) : at] if at >= 0 and full.startswith(prompt) else " "
    tail = full[at + len(_SENTINEL) :] if at >= 0 else ""
    specials = sorted((s for s in tok.all_special_tokens if s and s in tail), key=tail.find)
    end = specials[0] if specials else tok.eos_token
    if not end:
        raise ValueError(f"{type(tok).__name__} has no EOS token and the chat template no end-of-turn token")
    _FORMAT_CACHE[key] = (prefix, end)
    return prefix, end


def _response_length(tok, prompt: str, full: str, sample_id: str) -> tuple[int, list[int]]:
    p_ids = tok(prompt)["input_ids"]
    f_ids = tok(full)["input_ids"]
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
            r, f_ids = _response_length(tok, prompt, full, sid)
            cache[(q, a)] = (full, r, f_ids[len(f_ids) - r :])
        full, r, tail = cache[(q, a)]
        fulls.append(full)
        resp_len.append(r)
        tails.append(tail)

    enc = encode_prompts(processor, fulls, list(images), padding_side="right")
    inputs = {k: v for k, v in enc.items() if isinstance(v, Tensor)}
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
    for k in ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids"):
        if k in inputs and inputs[k].dim() == 2:
            inputs[k] = inputs[k][:, :width]
    if n_trunc:
        warnings.warn(
            f"{n_trunc} of {n} sequences had their response truncated to max_length={max_length}",
            stacklevel=2,
        )
    return SequenceBatch(inputs, mask[:, :width], list(sample_ids), n_trunc)


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
