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

``reference.tokenization: official`` (:class:`Tokenization`, :func:`encode_official`) builds the sequences
the official LPOI trainer trained on instead: the user turn rendered *without* the generation prompt, the
whole assistant turn as the chat template renders it as the scored span ("Assistant: A<end_of_utterance>\n"
for Idefics2), BOS/EOS added when missing, and TRL's 512/128 ``keep_end`` truncation.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lpoi.models.batching import default_offsets, pack, select, trim_token_keys
from lpoi.models.chat import (
    encode_batch,
    processor_kwargs,
    prompt_text,
    response_format,
    text_kwargs,
    tokenizer_of,
)
from lpoi.train.data import ListSample, load_sample_image, mdpo_random_crop

__all__ = [
    "CROP",
    "SequenceBatch",
    "Tokenization",
    "encode_official",
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


@dataclass(frozen=True)
class Tokenization:
    """How the training sequences are built and cut: ``reference.tokenization``, ``reference.max_length``,
    ``reference.max_prompt_length`` (the reference and train stages read the same section, so they build
    identical sequences). ``answer`` (default): the answer + end of turn after the generation prompt, the
    response's tail cut at ``max_length``; ``official``: :func:`encode_official`."""

    mode: str = "answer"
    max_length: int | None = None
    max_prompt_length: int | None = None

    @classmethod
    def of(cls, ref) -> Tokenization:
        """From a :class:`lpoi.config.ReferenceParams`."""
        return cls(ref.tokenization, ref.max_length, ref.max_prompt_length)


def _official_prompt_text(processor, question: str) -> str:
    # lpoi.py (official, ~L80-96): apply_chat_template([user turn], tokenize=False) -- no generation prompt
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt_text(processor, question)  # the same error as the answer mode for a processor without a template
    return processor.apply_chat_template(messages, tokenize=False)


def _official_answer_text(processor, answer: str) -> str:
    # lpoi.py (official): the answer as its own assistant turn, rendered by the chat template (unstripped)
    messages = [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    return processor.apply_chat_template(messages, tokenize=False)


def _legacy_single_image_token(processor) -> bool:
    """LLaVA-1.5: the official scripts pin ``llava-hf/llava-1.5-*-hf`` at revision a272c74, whose processor
    left ``<image>`` as one token (the model expanded it in its forward); today's processor expands it to
    the patch count. TRL's 512/128 lengths counted one token per image there."""
    return type(processor).__name__ == "LlavaProcessor"


def encode_official(
    processor,
    *,
    questions: Sequence[str],
    answers: Sequence[str],
    partners: Sequence[str],
    images: Sequence,
    sample_ids: Sequence[str],
    max_length: int,
    max_prompt_length: int,
) -> SequenceBatch:
    """The sequences the official LPOI trainer scores (lpoi_dpo_trainer_5img.py, a fork of TRL 0.11's
    DPOTrainer: ``_build_tokenized_answer``, ``_add_special_tokens``, ``_truncate_tokens``), one per row:

    1. prompt = the user turn without the generation prompt; full = prompt + the answer's assistant turn
       (lpoi.py ~L80-98), both through the processor (image tokens expanded), the answer's ids = full's ids
       after the prompt's length; where the prompt's ids are not a prefix of full's, the prompt keeps all but
       its last id and the id between is dropped -- TRL's merge handling, which LLaVA-1.5's template meets;
    2. BOS prepended to the prompt when it does not start with it, EOS appended to the answer when it does
       not end with it (``add_bos_token_if_needed``/``add_eos_token_if_needed``);
    3. ``keep_end`` truncation, with ``longer`` the longer answer (EOS included) of the row's pair --
       ``partners[i]`` is the other answer (trainer ~L246-275): if prompt + longer > ``max_length``, keep
       the prompt's last ``max_prompt_length`` tokens; if still too long, keep the answer's first
       ``max_length - max_prompt_length`` tokens. Official defaults 512/128 (trainer ~L723-742).

    Lengths count an image as the official processor emitted it (:func:`_legacy_single_image_token`). A cut
    that would remove image tokens is an error naming the sample (the official model could not have run
    that sequence). The response mask covers the answer's ids, EOS included.
    """
    n = len(questions)
    if not (len(answers) == len(partners) == len(images) == len(sample_ids) == n) or n == 0:
        raise ValueError("questions, answers, partners, images and sample_ids must be non-empty and of equal length")
    if not 0 < max_prompt_length < max_length:
        raise ValueError(f"need 0 < max_prompt_length < max_length, got {max_prompt_length} and {max_length}")
    tok = tokenizer_of(processor)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    image_ids = {i for i in (getattr(processor, "image_token_id", None),
                             tok.convert_tokens_to_ids(getattr(processor, "image_token", None) or "<image>"))
                 if isinstance(i, int) and i != tok.unk_token_id}
    # the image's span starts at its first image or wrapper token (Idefics2's <fake_token_around_image>)
    wrapper = getattr(processor, "fake_image_token", None)
    span_ids = image_ids | ({tok.convert_tokens_to_ids(wrapper)} if wrapper else set())
    kw = processor_kwargs(processor)
    splits: dict[tuple[str, str], tuple[int, bool, list[int]]] = {}

    def split(q: str, a: str) -> tuple[int, bool, list[int]]:
        """(prompt length, merged, answer ids + EOS) by the tokenizer, as ``_build_tokenized_answer`` splits:
        the answer is everything after the prompt's length; when the prompt's ids are not a prefix of the
        full ids (LLaVA's template ends the user turn with a space that merges into "ASSISTANT"), the
        prompt loses its last id and the full sequence's id at that position belongs to neither."""
        if (q, a) not in splits:
            prompt = _official_prompt_text(processor, q)
            full = prompt + _official_answer_text(processor, a)
            p_ids = tok(prompt, **text_kwargs(processor, prompt))["input_ids"]
            f_ids = tok(full, **text_kwargs(processor, full))["input_ids"]
            ids = f_ids[len(p_ids):]
            if eos is not None and (not ids or ids[-1] != eos):
                ids = ids + [eos]
            splits[(q, a)] = (len(p_ids), f_ids[: len(p_ids)] != p_ids, ids)
        return splits[(q, a)]

    encs, spans, n_trunc = [], [], 0
    for q, a, b, image, sid in zip(questions, answers, partners, images, sample_ids):
        p_len, merged, resp = split(q, a)
        longer = max(len(resp), len(split(q, b)[2]))
        full = _official_prompt_text(processor, q) + _official_answer_text(processor, a)
        enc = processor(text=[full], images=[[image]], return_tensors="pt", **kw, **text_kwargs(processor, full))
        enc = {k: v for k, v in enc.items() if hasattr(v, "dim")}
        extra = sorted(k for k, v in enc.items() if k not in ("input_ids", "attention_mask") and v.dim() == 2
                       and v.shape == enc["input_ids"].shape)
        if extra:
            raise ValueError(f"reference.tokenization 'official' rebuilds input_ids only; {type(processor).__name__} "
                             f"also returns token-aligned {extra} (use reference.tokenization: answer)")
        full_ids = enc["input_ids"][0].tolist()
        p_len += len(full_ids) - len(tok(full, **text_kwargs(processor, full))["input_ids"])  # + expanded image
        if full_ids[p_len:] != resp[: len(full_ids) - p_len]:
            raise ValueError(f"sample {sid!r}: the processor's tokens of the answer differ from the tokenizer's; "
                             "cannot locate the response exactly")
        p_ids = full_ids[: p_len - merged]
        if bos is not None and (not p_ids or p_ids[0] != bos):
            p_ids = [bos] + p_ids
        n_image = sum(t in image_ids for t in p_ids)
        counted = len(p_ids) - (n_image - 1 if n_image and _legacy_single_image_token(processor) else 0)
        if counted + longer > max_length:
            cut = max(0, counted - max_prompt_length)
            first_image = next((j for j, t in enumerate(p_ids) if t in span_ids), len(p_ids))
            if cut > first_image:
                raise ValueError(
                    f"sample {sid!r}: reference.tokenization 'official' keeps the prompt's last {max_prompt_length} "
                    f"tokens when prompt ({counted}) + longer answer ({longer}) exceed max_length={max_length}, which "
                    "would cut its image tokens (the official model could not run it); shorten the answers or raise "
                    "reference.max_length")
            p_ids, counted = p_ids[cut:], counted - cut
            if counted + longer > max_length:
                n_trunc += len(resp) > max_length - max_prompt_length  # counted where ids were lost
                resp = resp[: max_length - max_prompt_length]
        ids = torch.tensor([p_ids + resp])
        enc["input_ids"], enc["attention_mask"] = ids, torch.ones_like(ids)
        encs.append(enc)
        spans.append((len(p_ids), len(p_ids) + len(resp)))
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    packed = pack(encs, pad_token_id=int(pad if pad is not None else 0), padding_side="right")
    ids = packed.inputs["input_ids"]
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for i, (start, stop) in enumerate(spans):
        mask[i, start:stop] = True
    if n_trunc:
        warnings.warn(f"{n_trunc} of {n} sequences had their answer cut to max_length - max_prompt_length = "
                      f"{max_length - max_prompt_length} tokens (official keep_end truncation)", stacklevel=2)
    return SequenceBatch(packed.inputs, mask, list(sample_ids), n_trunc, packed.offsets)


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
    tokenization: Tokenization | None = None,
) -> SequenceBatch:
    """Load the images of ``samples`` and encode their ``len(columns) + 1`` sequences each.

    Row ``b * (C + 1) + j`` is sample b's chosen answer on column j for ``j < C`` and its rejected
    answer on the original image for ``j = C``. ``crop_key`` seeds mDPO's crop (with the sample id).
    ``tokenization`` (the ``reference`` section's) replaces ``max_length`` when given.
    """
    if tokenization is not None and max_length is not None and max_length != tokenization.max_length:
        raise ValueError(f"max_length={max_length} contradicts tokenization.max_length={tokenization.max_length}")
    questions, answers, images, ids, partners = [], [], [], [], []
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
            partners.append(s.rejected)
            ids.append(s.id)
        questions.append(s.prompt)
        answers.append(s.rejected)
        partners.append(s.chosen)
        images.append(image(0))
        ids.append(s.id)
    if tokenization is not None and tokenization.mode == "official":
        return encode_official(processor, questions=questions, answers=answers, partners=partners, images=images,
                               sample_ids=ids, max_length=tokenization.max_length,
                               max_prompt_length=tokenization.max_prompt_length)
    if tokenization is not None:
        max_length = tokenization.max_length
    return encode_sequences(
        processor, questions=questions, answers=answers, images=images, sample_ids=ids, max_length=max_length
    )
