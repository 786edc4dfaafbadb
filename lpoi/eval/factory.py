"""Build a judge from the ``judge`` params section (shared by the MMHal scorer and the llm extractor)."""

from __future__ import annotations

import os


def make_judge(p, cache_dir: str | os.PathLike | None = None, device: str = "cpu"):
    """``p`` is a :class:`lpoi.config.JudgeParams`. ``hf`` loads a local causal LM (offline); ``openai``
    talks to any OpenAI-compatible endpoint, its key read from the variable ``p.api_key_env``."""
    from .judge import HFJudge, OpenAIJudge

    if p.backend == "openai":
        return OpenAIJudge(p.base_url, p.model, api_key_env=p.api_key_env, cache_dir=cache_dir,
                           max_concurrency=p.max_concurrency, timeout=p.timeout, deadline=p.deadline,
                           max_retries=p.max_retries,
                           progress=True)
    from lpoi.models import load_causal_lm

    model, tok = load_causal_lm(p.model, device=device)
    label = f"hf:{p.model}"
    if p.model.startswith("tiny/"):
        label += " (tiny random model: scores are meaningless)"
    return HFJudge(model, tok, max_new_tokens=p.max_new_tokens, batch_size=p.batch_size, label=label,
                   progress=True)
