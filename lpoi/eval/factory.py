"""Build a judge from the ``judge`` params section (shared by the MMHal scorer and the llm extractor).

An HTTP judge always keeps its reply cache on disk when given a folder (``stages/score.py`` gives it
one by default), so re-scoring the same answers sends no request. The folder also holds
``judge.json``: which endpoint and model answered, and the UTC dates of the first and last request.
Those dates stay as they are while every reply comes from the cache, so a re-run reports the date the
replies were really obtained (a hosted model behind the same name changes over time).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from lpoi.io import atomic_write_json, read_json

JUDGE_INFO = "judge.json"


def make_judge(p, cache_dir: str | os.PathLike | None = None, device: str = "cpu"):
    """``p`` is a :class:`lpoi.config.JudgeParams`. ``hf`` loads a local causal LM (offline); ``openai``
    talks to any OpenAI-compatible endpoint, its key read from the variable ``p.api_key_env``."""
    from .judge import HFJudge, OpenAIJudge

    if p.backend == "openai":
        judge = OpenAIJudge(p.base_url, p.model, api_key_env=p.api_key_env, cache_dir=cache_dir,
                            max_concurrency=p.max_concurrency, timeout=p.timeout, deadline=p.deadline,
                            max_retries=p.max_retries, progress=True)
        return DatedJudge(judge, Path(cache_dir) / JUDGE_INFO) if cache_dir is not None else judge
    from lpoi.models import load_causal_lm

    model, tok = load_causal_lm(p.model, device=device)
    label = f"hf:{p.model}"
    if p.model.startswith("tiny/"):
        label += " (tiny random model: scores are meaningless)"
    return HFJudge(model, tok, max_new_tokens=p.max_new_tokens, batch_size=p.batch_size, label=label,
                   progress=True)


class DatedJudge:
    """An :class:`~lpoi.eval.judge.OpenAIJudge` that records when its (uncached) replies were obtained.

    ``date``: ``"YYYY-MM-DD"`` or ``"YYYY-MM-DD..YYYY-MM-DD"`` (first..last request), ``None`` before any
    request. Kept in ``info_path`` across runs; a run served entirely from the cache leaves it unchanged.
    """

    def __init__(self, judge, info_path: str | os.PathLike):
        self.judge = judge
        self.info_path = Path(info_path)

    @property
    def label(self) -> str:
        return self.judge.label

    @property
    def stats(self):
        return self.judge.stats

    @property
    def endpoint(self) -> str:
        return self.judge.endpoint

    def _info(self) -> dict:
        try:
            info = read_json(self.info_path)
        except (FileNotFoundError, ValueError):  # none yet, or unreadable (lpoi.io.InputError): start afresh
            return {}
        same = info.get("endpoint") == self.judge.endpoint and info.get("model") == self.judge.model
        return info if same else {}

    @property
    def date(self) -> str | None:
        info = self._info()
        first, last = info.get("first_request"), info.get("last_request")
        if not first:
            return None
        return first if first == last else f"{first}..{last}"

    def complete_many(self, prompts):
        before = self.judge.stats["requests"]
        try:
            return self.judge.complete_many(prompts)
        finally:  # an interrupted run keeps the replies it got: their date is kept with them
            self._record(before)

    def _record(self, before: int) -> None:
        if self.judge.stats["requests"] > before:
            today = datetime.now(timezone.utc).date().isoformat()
            info = self._info()
            atomic_write_json(self.info_path, {"endpoint": self.judge.endpoint, "model": self.judge.model,
                                               "first_request": info.get("first_request") or today,
                                               "last_request": today})
