"""Prompts through the model's own processor and chat template, shared by training, verify and generation.

One image per prompt, placed before the question (the LLaVA-1.5 and Idefics2 convention). Idefics2
runs with ``do_image_splitting=False`` as in the LPOI paper (one 980 px view instead of five crops).
"""

from __future__ import annotations

__all__ = ["encode_prompts", "processor_kwargs", "prompt_text", "tokenizer_of", "yes_no_token_ids"]


def tokenizer_of(processor):
    return getattr(processor, "tokenizer", processor)


def processor_kwargs(processor) -> dict:
    """Per-family call-time options: Idefics2 without image splitting (the paper's setting)."""
    ip = getattr(processor, "image_processor", None)
    if ip is not None and hasattr(ip, "do_image_splitting"):
        return {"do_image_splitting": False}
    return {}


def prompt_text(processor, question: str) -> str:
    """The user turn with one image and ``question``, ending where the assistant's answer starts."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    if getattr(processor, "chat_template", None) is None and getattr(tokenizer_of(processor), "chat_template", None) is None:
        raise ValueError(
            f"{type(processor).__name__} has no chat template; LPOI needs one to place the image and the answer"
        )
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_prompts(processor, prompts: list[str], images: list, padding_side: str = "left"):
    """Batch-encode prompts (already templated) with one image each; left padding for generation."""
    tok = tokenizer_of(processor)
    old = tok.padding_side
    tok.padding_side = padding_side
    try:
        return processor(text=prompts, images=[[im] for im in images], return_tensors="pt", padding=True,
                         **processor_kwargs(processor))
    finally:
        tok.padding_side = old


def yes_no_token_ids(tokenizer) -> tuple[int, int]:
    """Ids of the first token of "Yes" and "No" as the answer's first word (no leading space after
    ``Assistant:``-style prompts would be wrong for some templates, so both spellings are tried and the
    single-token one wins)."""
    ids = []
    for word in ("Yes", "No"):
        cands = [tokenizer.encode(w, add_special_tokens=False) for w in (word, " " + word)]
        single = [c for c in cands if len(c) == 1]
        ids.append((single or cands)[0][0])
    if ids[0] == ids[1]:
        raise ValueError("the tokenizer maps 'Yes' and 'No' to the same first token; use the generate mode")
    return ids[0], ids[1]
