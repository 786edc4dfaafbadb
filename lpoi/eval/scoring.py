"""The score stage: one benchmark's answers → its metrics file, with the run's params.

What every benchmark shares here: the benchmark files' default locations (``bench.root/<bench>/...``),
the judge and its reply cache (**on by default**: ``<work>/judge_cache``, or ``<out>.judge_cache``
beside the output without ``--work``, so re-scoring the same answers sends no request), the bound on
items left out (``score.max_error_ratio``) and the honest ``random_model`` label.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpoi.config import BENCHES
from lpoi.labels import label

__all__ = ["BENCHES", "ScoreJob", "run_score"]


@dataclass(frozen=True)
class ScoreJob:
    """What ``stages/score.py`` was asked; ``None`` fields fall back to the params."""

    bench: str
    answers: Path
    out: Path
    work: Path | None = None
    data_dir: Path | None = None  # amber: annotations.json, relation.json, safe_words.txt
    coco_dir: Path | None = None  # objhal: instances/captions_val2014.json
    template: Path | None = None  # mmhal: the answer template
    yes_no: str | None = None  # amber: normalize the yes/no replies at scoring time with this rule
    judge_base_url: str | None = None
    judge_model: str | None = None
    judge_cache: bool = True

    @property
    def cache_dir(self) -> Path | None:
        if not self.judge_cache:
            return None
        if self.work is not None:
            return self.work / "judge_cache"
        return self.out.with_name(self.out.stem + ".judge_cache")


def run_score(job: ScoreJob, p) -> dict[str, Any]:
    """Score ``job.answers`` for ``job.bench`` under params ``p`` (a :class:`lpoi.config.Params`),
    write ``job.out`` and return the metrics."""
    if job.bench not in BENCHES:
        raise ValueError(f"benchmark must be one of {BENCHES}, got {job.bench!r}")
    if job.work is not None:
        job.work.mkdir(parents=True, exist_ok=True)
    details = job.work / "details.jsonl" if job.work is not None else None
    b, ratio = p.bench, p.score.max_error_ratio
    if job.bench == "amber":
        from lpoi.eval.benchmarks.amber import score_file

        return score_file(job.answers, job.data_dir or b.path("amber", "."), job.out, similarity=p.amber.similarity,
                          yes_no=job.yes_no, max_error_ratio=ratio, labels=label(p, ("vlm",)), details_path=details)
    if job.yes_no is not None:
        raise ValueError("--yes-no applies to amber only")
    if job.bench == "objhal":
        from lpoi.eval.benchmarks.objhal import score_file

        llm = p.objhal.extractor == "llm"
        return score_file(job.answers, job.coco_dir or b.path("objhal", b.objhal.coco_dir), job.out,
                          extractor=p.objhal.extractor, judge=_judge(job, p, p.objhal.model) if llm else None,
                          cache_dir=job.work,
                          details_path=details, synonyms_path=_first_existing(b.path("objhal", "synonyms_refine.txt")),
                          max_error_ratio=ratio, labels=label(p, ("vlm", "judge") if llm else ("vlm",)))
    from lpoi.eval.benchmarks.mmhal import load_template, score_file

    template = job.template or b.path("mmhal", b.mmhal.template)
    load_template(template)  # a bad template fails before a judge model is loaded
    return score_file(job.answers, template, job.out, _judge(job, p, None), details_path=details,
                      max_error_ratio=ratio, labels=label(p, ("vlm", "judge")))


def _judge(job: ScoreJob, p, override: str | None):
    """The judge of ``job.bench``: the ``judge`` section, its model resolved per benchmark (``override`` =
    ``objhal.model``; null = the authors' judge, :data:`lpoi.config.OFFICIAL_JUDGES`)."""
    from lpoi.eval.factory import make_judge
    from lpoi.stage import pick_device

    jp = p.judge
    if job.judge_base_url:
        jp = jp.model_copy(update={"backend": "openai", "base_url": job.judge_base_url,
                                   "model": job.judge_model or jp.model})
    jp = jp.model_copy(update={"model": jp.model_for(job.bench, job.judge_model or override)})
    if jp.backend != "openai":  # a local model: nothing to cache, no request to save
        return make_judge(jp, device=pick_device(p.model.device))
    cache = job.cache_dir
    if cache is not None:
        print(f"[lpoi] judge replies cached in {cache} (a re-run sends no request)", file=sys.stderr)
    return make_judge(jp, cache_dir=cache)


def _first_existing(*paths):
    return next((x for x in paths if x is not None and x.exists()), None)
