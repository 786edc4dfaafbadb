"""Prompts through the model's own processor and chat template, shared by training, verify and generation.

One image per prompt, placed before the question (the convention of every supported family). Idefics2
runs with ``do_image_splitting=False`` as in the LPOI paper (one 980 px view instead of five crops);
SmolVLM/Idefics3 keep their own default (splitting on), Qwen-VL its dynamic resolution, bounded by
``model.max_pixels`` (:func:`apply_resolution_budget`).

Every batch is encoded one sequence at a time and packed (:mod:`lpoi.models.batching`), so the same
code splits Qwen's flat patch tensors, SmolVLM's per-image crops and fixed-size images per sequence.
"""

from __future__ import annotations

import math

from lpoi.models.batching import Packed, pack

__all__ = [
    "apply_resolution_budget",
    "encode_batch",
    "encode_prompts",
    "processor_kwargs",
    "prompt_text",
    "response_format",
    "text_kwargs",
    "tokenizer_of",
    "yes_no_token_ids",
]

_SENTINEL = "LPOISENTINELANSWER"
_IDEFICS2_PAPER = {"do_image_splitting": False}


def tokenizer_of(processor):
    return getattr(processor, "tokenizer", processor)


def processor_kwargs(processor) -> dict:
    """Per-family call-time options: Idefics2 without image splitting (the paper's setting)."""
    ip = getattr(processor, "image_processor", None)
    if type(ip).__name__.startswith("Idefics2ImageProcessor"):
        return dict(_IDEFICS2_PAPER)
    return {}


def text_kwargs(processor, text: str) -> dict:
    """Tokenizer options for an already templated ``text``: no second BOS when the template rendered one.

    Gemma 3's template starts with ``<bos>`` and its tokenizer prepends another by default (what
    ``apply_chat_template(tokenize=True)`` avoids with ``add_special_tokens=False``); Idefics2/LLaVA
    templates render no BOS and rely on the tokenizer's, so they keep it.
    """
    tok = tokenizer_of(processor)
    bos = getattr(tok, "bos_token", None)
    if bos and text.startswith(bos) and _adds_bos(tok):
        return {"add_special_tokens": False}
    return {}


def _adds_bos(tok) -> bool:
    ids = tok("a")["input_ids"]
    return bool(ids) and ids[0] == tok.bos_token_id


def prompt_text(processor, question: str) -> str:
    """The user turn with one image and ``question``, ending where the assistant's answer starts."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    if getattr(processor, "chat_template", None) is None and getattr(tokenizer_of(processor), "chat_template", None) is None:
        raise ValueError(
            f"{type(processor).__name__} has no chat template; LPOI needs one to place the image and the answer"
        )
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def response_format(processor) -> tuple[str, str]:
    """``(prefix, end_of_turn)`` around an answer, read from the processor's chat template.

    The template is rendered with and without an assistant turn holding a sentinel; ``prefix`` is what
    sits between the generation prompt and the answer (``" "`` after Idefics2's ``Assistant:``, ``""``
    after Qwen's ``<|im_start|>assistant\\n``), ``end_of_turn`` the first special token after it
    (``<end_of_utterance>``, ``<|im_end|>``, ``<end_of_turn>``), or the tokenizer's EOS when the
    template closes the turn with plain text (LLaVA-1.5's hub template).

    Cached by what the answer depends on -- the template, the special tokens and the processor class --
    never by the object's ``id`` (ids are reused after garbage collection, and a template can be edited).
    """
    tok = tokenizer_of(processor)
    template = getattr(processor, "chat_template", None) or getattr(tok, "chat_template", None)
    key = (type(processor).__qualname__, str(template), tuple(tok.all_special_tokens), tok.eos_token, tok.bos_token)
    if key not in _FORMAT_CACHE:
        _FORMAT_CACHE[key] = _render_format(processor)
    return _FORMAT_CACHE[key]


_FORMAT_CACHE: dict[tuple, tuple[str, str]] = {}


def _render_format(processor) -> tuple[str, str]:
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
    return prefix, end


def encode_batch(processor, texts: list[str], images: list, padding_side: str = "left") -> Packed:
    """Encode templated ``texts`` with one image each, one processor call per sequence, packed.

    Left padding for generation and next-token scoring (every prompt ends at the last column), right
    padding for training sequences. The offsets of the result split it back per sequence.
    """
    if len(texts) != len(images) or not texts:
        raise ValueError(f"need one image per text, got {len(texts)} texts and {len(images)} images")
    tok = tokenizer_of(processor)
    kw = processor_kwargs(processor)
    encs = []
    for text, image in zip(texts, images):
        enc = processor(text=[text], images=[[image]], return_tensors="pt", **kw, **text_kwargs(processor, text))
        encs.append({k: v for k, v in enc.items() if hasattr(v, "dim")})
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pad is None:
        raise ValueError(f"{type(tok).__name__} has neither a pad nor an EOS token; cannot pad a batch")
    return pack(encs, pad_token_id=int(pad), padding_side=padding_side)


def encode_prompts(processor, prompts: list[str], images: list, padding_side: str = "left") -> dict:
    """Batch-encode prompts (already templated) with one image each; left padding for generation."""
    return encode_batch(processor, list(prompts), list(images), padding_side=padding_side).inputs


def yes_no_token_ids(processor) -> tuple[int, int]:
    """Ids of the first token the model emits for an answer "Yes" and for "No".

    That is the first answer token of ``prompt + prefix + "Yes"`` after the prompt's own tokens, with the
    family's answer ``prefix`` (:func:`response_format`): ``" Yes"`` after Idefics2/LLaVA/SmolVLM's
    ``Assistant:``, ``"Yes"`` after Qwen's and Gemma's newline -- not the bare word, which for a
    space-prefixed template is a token the model never emits there.
    """
    tok = tokenizer_of(processor)
    prefix, _ = response_format(processor)
    prompt = prompt_text(processor, "Q")
    kw = text_kwargs(processor, prompt)
    p_ids = tok(prompt, **kw)["input_ids"]
    ids = []
    for word in ("Yes", "No"):
        f_ids = tok(prompt + prefix + word, **kw)["input_ids"]
        if f_ids[: len(p_ids)] != p_ids or len(f_ids) == len(p_ids):
            raise ValueError(f"the answer {word!r} merges with the end of the prompt; use the generate mode")
        ids.append(f_ids[len(p_ids)])
    if ids[0] == ids[1]:
        raise ValueError("the tokenizer maps 'Yes' and 'No' to the same first token; use the generate mode")
    return ids[0], ids[1]


# ---------------------------------------------------------------------------------------------- resolution


def apply_resolution_budget(processor, max_pixels: int | None):
    """Bound the pixels per image of a dynamic-resolution processor (``model.max_pixels``), in place.

    Mapped onto each image processor's own size keys:

    * Qwen2-VL/2.5-VL/3-VL (``Qwen2VLImageProcessor``): ``size.longest_edge`` *is* a pixel count there
      (the old ``max_pixels``); ``shortest_edge`` (``min_pixels``) is lowered to it when larger;
    * Idefics3/SmolVLM: ``size.longest_edge`` is an edge in px, cut into crops of
      ``max_image_size.longest_edge``: the largest multiple of the crop edge whose square fits the
      budget (at least one crop);
    * Idefics2: ``size.longest_edge`` = ``floor(sqrt(max_pixels))`` (and ``shortest_edge`` not above it);
    * fixed-size processors (LLaVA's CLIP, Gemma 3's 896 px): nothing to change when the fixed size
      fits the budget; a budget below it is an error (it cannot be honoured).

    Returns the processor. ``None`` keeps the processor's own setting.
    """
    if max_pixels is None:
        return processor
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"model.max_pixels must be a positive integer or null, got {max_pixels!r}")
    ip = getattr(processor, "image_processor", None)
    if ip is None:
        raise ValueError(f"{type(processor).__name__} has no image processor to apply model.max_pixels to")
    name = type(ip).__name__
    size = dict(ip.size) if ip.size is not None else {}
    size = {k: v for k, v in size.items() if v is not None}
    if name.startswith("Qwen2VLImageProcessor"):
        size["longest_edge"] = max_pixels
        size["shortest_edge"] = min(size.get("shortest_edge", max_pixels), max_pixels)
    elif name.startswith(("Idefics3ImageProcessor", "SmolVLMImageProcessor")):
        crop = int(dict(ip.max_image_size)["longest_edge"])
        size["longest_edge"] = max(crop, math.isqrt(max_pixels) // crop * crop)
    elif name.startswith("Idefics2ImageProcessor"):
        edge = math.isqrt(max_pixels)
        size["longest_edge"] = edge
        size["shortest_edge"] = min(size.get("shortest_edge", edge), edge)
    else:
        fixed = _fixed_pixels(ip)
        if fixed is None:
            raise ValueError(f"model.max_pixels: don't know how to bound the resolution of {name}; set it to null")
        if fixed > max_pixels:
            raise ValueError(
                f"model.max_pixels={max_pixels} is below the fixed input size of {name} ({fixed} px per image); "
                "this family cannot be run at a lower resolution -- set model.max_pixels: null"
            )
        return processor
    ip.size = type(ip.size)(**size) if hasattr(ip.size, "__dataclass_fields__") else size
    return processor


def _fixed_pixels(ip) -> int | None:
    crop = getattr(ip, "crop_size", None) if getattr(ip, "do_center_crop", False) else None
    for s in (crop, getattr(ip, "size", None)):
        if s is None:
            continue
        s = dict(s)
        if s.get("height") and s.get("width"):
            return int(s["height"]) * int(s["width"])
        if s.get("shortest_edge") and len([v for v in s.values() if v]) == 1:
            return int(s["shortest_edge"]) ** 2  # CLIP: shortest edge resized, then centre-cropped (above)
    return None

