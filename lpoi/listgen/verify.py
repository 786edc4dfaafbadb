"""The ``verify`` stage: the paper's filter — is the chosen object really critical to the answer?

LPOI (Sec. 3.2) checks each list with a verifier VLM (default: the run's base model; any HF VLM by
name): the verifier sees the image with the object **fully hidden** (the last image of the list, built
with the list's fill by :func:`hidden_image`), the question and the chosen answer, and is asked whether
the answer is correct. The prompt, through the model's own chat template with the image first
(:func:`lpoi.models.chat.prompt_text`), is :data:`VERIFY_PROMPT`::

    Question: {question}
    Answer: {answer}
    Is this answer correct for the image? Answer yes or no.

(``<image>`` placeholders of LLaVA/mDPO-style questions were removed by prepare: the template places
the image.) The decision compares the next-token log-probabilities of "Yes" and "No"
(:func:`lpoi.models.chat.yes_no_token_ids`) at the start of the assistant's turn: ``says_yes`` iff
``logp_yes > logp_no`` (log-probs rounded to 1e-6 first, so the stored numbers always agree with the
stored decision). No sampling, no parsing of generated text.

If the verifier still says *yes* with the object hidden, that object was not needed to answer: the
next candidate (in the paper's order, among those with a mask) is tried, up to ``max_tries``. The first
candidate for which it says *no* is chosen (``verified: true``). If none passes: ``on_fail="keep"``
keeps the first candidate with ``verified: false``; ``"drop"`` writes a reject row
(``verify_failed``). ``enabled=False`` makes no model call at all: the first candidate with a mask is
chosen and ``verified`` is ``null``.

The decision function is injectable (``decide``): any callable mapping a list of :class:`VerifyItem`
to ``[(logp_yes, logp_no), ...]`` — the VLM by default (:func:`vlm_decider`).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpoi.config import VerifyParams, section_of
from lpoi.io import ImageRejected, load_image
from lpoi.runner import Reject, StageOutput, Tally, run_file
from lpoi.stage import pick_device

__all__ = [
    "ON_FAIL",
    "VERIFY_PROMPT",
    "PreparedIndex",
    "VerifyItem",
    "count_row",
    "hidden_image",
    "run_verify",
    "verify_prompt",
    "verify_scores",
    "verify_tally",
    "vlm_decider",
]

VERIFY_PROMPT = "Question: {question}\nAnswer: {answer}\nIs this answer correct for the image? Answer yes or no."
ON_FAIL = ("keep", "drop")


def verify_prompt(question: str, answer: str) -> str:
    """The verifier's user text (the image goes first, via the chat template)."""
    return VERIFY_PROMPT.format(question=" ".join(question.split()), answer=" ".join(answer.split()))


def hidden_image(image, mask, box: Sequence[float], *, fill: str = "black"):
    """The list's last image: every pixel of ``mask`` replaced by ``fill`` (no highlight).

    It is :func:`lpoi.listgen.interpolate.make_list` with ``size=2`` — image 1 of a 2-list hides the
    whole region — so verify sees exactly what the lists stage writes as ``images[-1]`` (without the
    highlight ellipse, which would point the verifier at the object).
    """
    from lpoi.listgen.interpolate import make_list

    return make_list(image, mask, box, size=2, mode="progressive", fill=fill, highlight=False)[-1]


def verify_scores(model, processor, images: Sequence, questions: Sequence[str], answers: Sequence[str],
                  batch_size: int = 8) -> list[tuple[float, float]]:
    """``[(logp_yes, logp_no), ...]``: next-token log-probs of "Yes"/"No" after :data:`VERIFY_PROMPT`.

    Batched (``batch_size`` prompts per forward, left padding so the last position is every prompt's
    last token); log-softmax in float32 over the full vocabulary. "Yes"/"No" are the first tokens the
    model emits for them after its answer prefix (:func:`lpoi.models.chat.yes_no_token_ids`).
    """
    import torch

    from lpoi.models.chat import encode_prompts, prompt_text, yes_no_token_ids
    from lpoi.models.logits import last_logits

    if not (len(images) == len(questions) == len(answers)):
        raise ValueError(f"got {len(images)} images, {len(questions)} questions, {len(answers)} answers")
    if batch_size < 1:
        raise ValueError(f"verify.batch_size must be >= 1, got {batch_size}")
    yes_id, no_id = yes_no_token_ids(processor)
    dev = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    out: list[tuple[float, float]] = []
    for s in range(0, len(images), batch_size):
        prompts = [prompt_text(processor, verify_prompt(q, a)) for q, a in
                   zip(questions[s:s + batch_size], answers[s:s + batch_size])]
        enc = encode_prompts(processor, prompts, list(images[s:s + batch_size]), padding_side="left")
        enc = {k: (v.to(dev, dtype) if torch.is_floating_point(v) else v.to(dev)) for k, v in enc.items()}
        with torch.inference_mode():
            logits = last_logits(model, enc)
        logp = torch.log_softmax(logits.float(), dim=-1).cpu()
        out.extend((float(lp[yes_id]), float(lp[no_id])) for lp in logp)
    return out


@dataclass(frozen=True)
class VerifyItem:
    """One question to the verifier: sample ``sample_id`` with candidate ``candidate`` hidden."""

    sample_id: str
    candidate: int  # index into the sample's candidates
    phrase: str
    image: Any  # PIL image with the candidate fully hidden
    question: str
    answer: str


Decider = Callable[[list[VerifyItem]], list[tuple[float, float]]]


def vlm_decider(model, processor, batch_size: int = 8) -> Decider:
    """The default ``decide``: :func:`verify_scores` of a VLM."""

    def decide(items: list[VerifyItem]) -> list[tuple[float, float]]:
        return verify_scores(model, processor, [it.image for it in items], [it.question for it in items],
                             [it.answer for it in items], batch_size=batch_size)

    return decide


class PreparedIndex:
    """Random access to ``prepared.jsonl`` rows by id: one pass records each line's byte offset.

    Memory is one small int per sample (not the rows), so verify can join with prepared in any order.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._off: dict[str, int] = {}
        with open(self.path, "rb") as f:
            pos = 0
            for line in f:
                if line.strip():
                    sid = json.loads(line).get("id")
                    self._off[sid] = pos
                pos += len(line)
        self._f = open(self.path, "rb")  # noqa: SIM115 -- kept open for seeks; closed by close()
        self._lock = threading.Lock()  # seek + readline from several prefetch threads

    def get(self, sample_id: str) -> dict:
        if sample_id not in self._off:
            raise KeyError(f"sample {sample_id!r} is not in {self.path} (segment and prepared outputs from different runs?)")
        with self._lock:
            self._f.seek(self._off[sample_id])
            line = self._f.readline()
        return json.loads(line)

    def close(self) -> None:
        self._f.close()

    # a Ray actor (compute.engine: ray) gets the offsets and reopens the file (same path: a shared filesystem)
    def __getstate__(self) -> dict:
        return {"path": self.path, "_off": self._off}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._f = open(self.path, "rb")  # noqa: SIM115 -- as in __init__
        self._lock = threading.Lock()


# ---------------------------------------------------------------------------------------------- the stage


def _masked(row: dict, max_tries: int) -> list[int]:
    return [j for j, c in enumerate(row["candidates"]) if c.get("mask")][:max_tries]


def _load_block(rows: list[dict], seg_dir: Path, prepared: PreparedIndex | None, max_tries: int) -> dict:
    """CPU part of a block (prefetch thread): images, question/answer, masks of the candidates to try."""
    from lpoi.listgen.interpolate import load_mask

    data, errors = {}, {}
    for row in rows:
        sid = row["id"]
        tries = _masked(row, max_tries)
        if not tries or prepared is None:
            continue
        try:
            img = load_image(row["image_path"])
        except ImageRejected as e:
            errors[sid] = (f"image_{e.reason}", e.detail)
            continue
        rec = prepared.get(sid)
        try:
            masks = [load_mask(seg_dir / row["candidates"][j]["mask"]) for j in tries]
        except FileNotFoundError as e:
            errors[sid] = ("missing_mask", str(e))
            continue
        data[sid] = {"image": img, "question": rec["prompt"], "answer": rec["chosen"], "masks": masks}
    return {"rows": rows, "data": data, "errors": errors}


def _object(row: dict, j: int, seg_dir: Path, out_dir: Path) -> dict:
    """Candidate ``j`` with its mask path re-expressed relative to the verify output's folder."""
    c = dict(row["candidates"][j], index=j)
    if c.get("mask"):
        c["mask"] = Path(os.path.relpath(seg_dir / c["mask"], out_dir)).as_posix()
    c.setdefault("mask_kind", row.get("mask_kind"))
    return c


def _load_model(model_name: str, dtype: str, device: str | None, batch_size: int,
                max_pixels: int | None = None, trust_remote_code: bool = False) -> Decider:
    """The stage's one model load: the VLM as a :data:`Decider`."""
    from lpoi.models import load_vlm

    model, processor = load_vlm(model_name, dtype=dtype, device=pick_device(device), max_pixels=max_pixels,
                                trust_remote_code=trust_remote_code)
    return vlm_decider(model, processor, batch_size=batch_size)


def count_row(row: dict) -> dict[str, int]:
    """What a verify row adds to the stage's counts (metrics are these counts over the whole output)."""
    key = {True: "verified_true", False: "verified_false", None: "verified_null"}[row["verified"]]
    return {key: 1, "calls": len(row["tries"])}


def verify_tally() -> Tally:
    return Tally(count_row, lambda rej: {"calls": len(rej.get("tries", []))},
                 zero={"verified_true": 0, "verified_false": 0, "verified_null": 0, "calls": 0})


def _row_result(row: dict, blk: dict, results: dict, *, enabled: bool, max_tries: int, on_fail: str,
                seg_dir: Path, out_dir: Path) -> dict | Reject:
    """A sample's verify row, or its reject (image, missing mask, no mask, verifier said yes throughout)."""
    sid = row["id"]
    if sid in blk["errors"]:
        return Reject(*blk["errors"][sid])
    masked = _masked(row, max_tries)
    if not masked:
        return Reject("no_mask", "no candidate of this sample has a mask")
    tries, choice = results.get(sid, ([], None))
    if enabled and choice is None and on_fail == "drop":
        return Reject("verify_failed", f"the verifier still says yes with each of {[t['phrase'] for t in tries]} "
                      "hidden", {"tries": tries})
    j = masked[0] if choice is None else choice
    return {"id": sid, "image_path": row.get("image_path"), "width": row.get("width"), "height": row.get("height"),
            "choice": j, "verified": None if not enabled else choice is not None, "tries": tries,
            "object": _object(row, j, seg_dir, out_dir)}


def run_verify(
    segment_path: str | os.PathLike,
    prepared_path: str | os.PathLike,
    out_path: str | os.PathLike,
    rejects_path: str | os.PathLike,
    params: VerifyParams | None = None,
    *,
    model_name: str | None = None,
    fill: str = "black",
    device: str | None = None,
    dtype: str = "float32",
    progress: bool = True,
    decide: Decider | None = None,
    num_workers: int = 1,
    limit: int | None = None,
    max_pixels: int | None = None,
    journal: bool = False,
    trust_remote_code: bool = False,
    **settings: Any,
) -> dict[str, Any]:
    """Stream ``segment.jsonl`` (+ questions/answers from ``prepared.jsonl``) -> ``verify.jsonl`` + rejects.

    ``params``: the ``verify`` section (``enabled``, ``model``, ``max_tries``, ``on_fail``, ``batch_size``);
    without it, those settings as keywords, validated the same way (:func:`lpoi.config.section_of`).
    The verifier is the section's ``model``, else ``model_name`` (the stage passes the run's base model).

    Output rows: ``{"id", "image_path", "width", "height", "choice": candidate index | null,
    "verified": true | false | null, "tries": [{"index", "phrase", "logp_yes", "logp_no", "says_yes"}],
    "object": the chosen candidate (detect + segment fields, ``index``, ``mask_kind``; its ``mask`` path
    relative to ``out_path``'s folder)}``. Rejects: ``verify_failed`` (``on_fail="drop"``; with the
    tries), ``no_mask`` (no candidate has a mask), ``missing_mask`` (a mask file is gone),
    ``image_<reason>``.

    ``decide`` replaces the VLM (see the module docstring); when it is ``None`` and ``enabled``, the VLM
    ``model_name`` is loaded. Retries are done in rounds over a block (round r asks about the r-th
    candidate of every sample still undecided), so each round is one batched call. Resume, blocks,
    ``journal`` and the returned counts as in :func:`lpoi.listgen.detect.run_detect` (counts:
    ``verified_true``, ``verified_false``, ``verified_null``, ``calls`` = verifier questions of the rows).
    """
    v = section_of(VerifyParams, params, settings)
    enabled, max_tries, on_fail, batch_size = v.enabled, v.max_tries, v.on_fail, v.batch_size
    model_name = v.model or model_name
    if on_fail not in ON_FAIL:
        raise ValueError(f"verify.on_fail must be one of {ON_FAIL}, got {on_fail!r}")
    if max_tries < 1 or batch_size < 1:
        raise ValueError(f"verify.max_tries and verify.batch_size must be >= 1, got {max_tries}, {batch_size}")
    from lpoi.listgen.interpolate import FILLS

    if fill not in FILLS:
        raise ValueError(f"lists.fill must be one of {FILLS}, got {fill!r}")
    if enabled and decide is None:
        if not model_name:
            raise ValueError("verify is enabled but no verifier model_name was given")
        decide = _load_model(model_name, dtype, device, batch_size, max_pixels, trust_remote_code)
    seg_dir = Path(segment_path).parent
    prepared = PreparedIndex(prepared_path) if enabled else None
    out = StageOutput(out_path, rejects_path, limit=limit, journal=journal)
    opts = {"enabled": enabled, "max_tries": max_tries, "on_fail": on_fail, "seg_dir": seg_dir,
            "out_dir": out.out_path.parent}

    def process(blk: dict, rows: list[dict]) -> list:
        results = _decide_block(blk, decide if enabled else None, max_tries, fill)
        return [_row_result(r, blk, results, **opts) for r in rows]

    try:
        return run_file(segment_path, out, lambda rows: _load_block(rows, seg_dir, prepared, max_tries), process,
                        tally=verify_tally, batch_size=batch_size, workers=num_workers,
                        progress=progress, desc="verify")
    finally:
        if prepared is not None:
            prepared.close()


def _decide_block(blk: dict, decide: Decider | None, max_tries: int,
                  fill: str) -> dict[str, tuple[list[dict], int | None]]:
    """Ask the verifier about a block in rounds; per sample ``(tries, chosen index or None)``."""
    if decide is None:
        return {}
    rows = [r for r in blk["rows"] if r["id"] in blk["data"]]
    state = {r["id"]: {"row": r, "cands": _masked(r, max_tries), "pos": 0, "tries": [], "choice": None}
             for r in rows}
    pending = [r["id"] for r in rows]
    while pending:
        items = []
        for sid in pending:
            st, d = state[sid], blk["data"][sid]
            j = st["cands"][st["pos"]]
            cand = st["row"]["candidates"][j]
            img = hidden_image(d["image"], d["masks"][st["pos"]], cand["box"], fill=fill)
            items.append(VerifyItem(sid, j, cand["phrase"], img, d["question"], d["answer"]))
        scores = decide(items)
        if len(scores) != len(items):
            raise RuntimeError(f"the verifier returned {len(scores)} scores for {len(items)} items")
        nxt = []
        for it, (ly, ln) in zip(items, scores):
            st = state[it.sample_id]
            ly, ln = round(float(ly), 6), round(float(ln), 6)
            yes = ly > ln
            st["tries"].append({"index": it.candidate, "phrase": it.phrase, "logp_yes": ly, "logp_no": ln,
                                "says_yes": yes})
            if not yes:
                st["choice"] = it.candidate
            else:
                st["pos"] += 1
                if st["pos"] < len(st["cands"]):
                    nxt.append(it.sample_id)
        pending = nxt
    return {sid: (st["tries"], st["choice"]) for sid, st in state.items()}
