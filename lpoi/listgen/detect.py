"""The ``detect`` stage: ground each sample's critical-object candidates with Grounding DINO.

LPOI (Sec. 3.2, Algorithm 1) finds the critical object with Grounding DINO (paper profile:
``IDEA-Research/grounding-dino-tiny`` through transformers' ``GroundingDinoForObjectDetection``).

**One prompt per image.** All of an image's candidates go into one text prompt, lowercase, each phrase
followed by `` .`` — ``"red car . dog . tree ."`` — the format Grounding DINO was trained on (its text
encoder treats ``.`` as a phrase delimiter and masks attention across phrases). Images are batched with
the image processor's padding and the texts with the tokenizer's padding.

**Phrase -> box assignment** (:func:`assign_boxes`, a pure function). With ``P = sigmoid(logits)``
(queries x text tokens) and the token span of each phrase in ``input_ids`` (from the tokenizer's offset
mapping):

* box score of query q = ``max_t P[q, t]`` over all text tokens — the score Grounding DINO's own
  post-processing (``post_process_grounded_object_detection``) thresholds with ``box_threshold``;
* phrase score of q for phrase p = ``max_{t in span(p)} P[q, t]``;
* phrase p keeps the query with the highest phrase score among those with box score > ``box_threshold``,
  phrase score > ``text_threshold`` and a box at least 1 px wide and high after clipping to the image
  (ties -> the lower query index). The detection's ``score`` is that **phrase score** (how sure the model
  is that this box is *this* phrase; the box score is also returned as ``box_score``).

Phrases are assigned independently, so two phrases may share a box (e.g. "man" and "person"); that is
fine for choosing a critical object. Boxes are ``[x0, y0, x1, y1]`` in the original image's pixels
(the model predicts normalised centre/size boxes relative to the unpadded image).

**Truncation.** Grounding DINO reads at most ``config.max_text_len`` tokens (256 for the real model,
[CLS] and [SEP] included). Trailing candidates that do not fit are left out of the prompt (so never
detected) and counted (``truncated`` in the rows and the stats) — never silently.

**Fallback** (the paper's "random detected object"): when none of a sample's candidates is detected,
the image is prompted with the 80 COCO class names (:data:`lpoi.listgen.objects.COCO_CLASSES`), in as
many prompts as ``max_text_len`` requires, and :func:`lpoi.listgen.objects.pick_random_detection` picks
one detection, seeded by ``(seed, sample id)``; it is appended to the candidates with source ``random``.

Rejects (``rejects.jsonl``, ``{"id", "reason", "detail"}``): ``no_candidates`` (the text names no object
and the fallback found nothing), ``no_detection`` (candidates, none detected, fallback found nothing or
is off), ``image_<reason>`` (the image no longer loads; reasons of :func:`lpoi.io.load_image`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lpoi.config import DetectParams, section_of
from lpoi.io import ImageRejected, load_image
from lpoi.runner import Reject, StageOutput, Tally, run_file
from lpoi.stage import pick_device

__all__ = [
    "EncodedBatch",
    "assign_boxes",
    "build_prompt",
    "chunk_phrases",
    "detect_batch",
    "detect_encoded",
    "encode_detection_batch",
    "normalize_phrase",
    "count_row",
    "detect_tally",
    "read_detections",
    "run_detect",
    "tokenize_prompts",
]

MIN_BOX_PX = 1.0  # boxes narrower or lower than this (after clipping) are degenerate and dropped
# A fast tokenizer's padding/truncation settings are mutable state of the Rust object: calls from the
# prefetch thread and the main thread (fallback prompts) must not interleave.
_TOKENIZER_LOCK = threading.Lock()


# ---------------------------------------------------------------------------------------------- prompts


def normalize_phrase(phrase: str) -> str:
    """Lowercase, no ``.``/``?`` (Grounding DINO's delimiter tokens), single spaces."""
    return " ".join(phrase.lower().replace(".", " ").replace("?", " ").split())


def build_prompt(phrases: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """``["Red car", "dog"]`` -> ``("red car . dog .", [(0, 7), (10, 13)])``: the prompt and each
    phrase's character span in it.

    >>> build_prompt(["Red car", "dog"])
    ('red car . dog .', [(0, 7), (10, 13)])
    """
    parts, spans, pos = [], [], 0
    for p in phrases:
        p = normalize_phrase(p)
        spans.append((pos, pos + len(p)))
        parts.append(p + " .")
        pos += len(p) + 3  # phrase, " .", and the joining space
    return " ".join(parts), spans


def _n_tokens(tokenizer, phrase: str) -> int:
    with _TOKENIZER_LOCK:
        return len(tokenizer(normalize_phrase(phrase), add_special_tokens=False)["input_ids"])


def fit_phrases(tokenizer, phrases: Sequence[str], max_text_len: int) -> int:
    """How many leading phrases fit in one prompt of at most ``max_text_len`` tokens.

    Count = [CLS] + [SEP] + for each phrase its tokens + one ``.`` (BERT's pre-tokenizer splits on
    whitespace and punctuation, so a phrase tokenises the same alone and inside the prompt).
    """
    total, k = 2, 0
    for p in phrases:
        total += _n_tokens(tokenizer, p) + 1
        if total > max_text_len:
            break
        k += 1
    return k


def chunk_phrases(tokenizer, phrases: Sequence[str], max_text_len: int) -> list[list[str]]:
    """Split ``phrases`` into consecutive prompts that each fit ``max_text_len`` tokens."""
    chunks, rest = [], list(phrases)
    while rest:
        k = fit_phrases(tokenizer, rest, max_text_len)
        if k == 0:
            raise ValueError(f"phrase {rest[0]!r} alone exceeds the detector's max_text_len={max_text_len}")
        chunks.append(rest[:k])
        rest = rest[k:]
    return chunks


def phrase_token_spans(offsets, char_spans: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Token indices covering each character span; ``offsets``: (T, 2) start/end per token.

    Special and padding tokens have the empty offset ``(0, 0)`` and never match.
    """
    offs = [(int(s), int(e)) for s, e in offsets]
    out = []
    for cs, ce in char_spans:
        out.append([t for t, (s, e) in enumerate(offs) if e > s and s < ce and e > cs])
    return out


# ---------------------------------------------------------------------------------------------- assignment


def assign_boxes(probs, boxes, phrase_token_spans: Sequence[Sequence[int]], box_threshold: float,
                 text_threshold: float, *, min_box_px: float = MIN_BOX_PX) -> list[dict[str, Any] | None]:
    """For each phrase, the best query box or ``None`` (rule in the module docstring).

    ``probs``: (Q, T) sigmoid probabilities of the queries over the text tokens (padding columns 0);
    ``boxes``: (Q, 4) ``[x0, y0, x1, y1]`` in pixels, already clipped to the image;
    ``phrase_token_spans``: for each phrase the token columns that spell it.
    Returns per phrase ``{"query": q, "score": phrase score, "box_score": box score}`` or ``None``.
    """
    import torch

    probs = torch.as_tensor(probs, dtype=torch.float32)
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    if probs.ndim != 2 or boxes.shape != (probs.shape[0], 4):
        raise ValueError(f"probs must be (Q, T) and boxes (Q, 4); got {tuple(probs.shape)} and {tuple(boxes.shape)}")
    box_score = probs.max(dim=1).values if probs.shape[1] else torch.zeros(probs.shape[0])
    wide = (boxes[:, 2] - boxes[:, 0] >= min_box_px) & (boxes[:, 3] - boxes[:, 1] >= min_box_px)
    valid = (box_score > box_threshold) & wide
    out: list[dict[str, Any] | None] = []
    for span in phrase_token_spans:
        if len(span) == 0:
            out.append(None)
            continue
        ps = probs[:, list(span)].max(dim=1).values
        ok = valid & (ps > text_threshold)
        if not bool(ok.any()):
            out.append(None)
            continue
        q = int(torch.argmax(torch.where(ok, ps, torch.full_like(ps, -1.0))))  # first maximum on ties
        out.append({"query": q, "score": float(ps[q]), "box_score": float(box_score[q])})
    return out


# ---------------------------------------------------------------------------------------------- batches


@dataclass
class EncodedBatch:
    """Model inputs of one detection batch plus what is needed to read the outputs back."""

    inputs: dict  # tensors for the model (only the images that have a prompt)
    rows: list[int]  # which input images are in ``inputs``, in order
    spans: list[list[list[int]]]  # per encoded image, per kept phrase: token columns
    kept: list[int]  # per input image: how many leading phrases made it into the prompt
    sizes: list[tuple[int, int]]  # per input image: (width, height)
    truncated: list[int] = field(default_factory=list)  # per input image: phrases left out


def tokenize_prompts(tokenizer, phrases: Sequence[Sequence[str]], max_text_len: int) -> dict:
    """The text half of a detection batch, shared by every Grounding DINO backend: one prompt per image
    (trailing phrases that do not fit ``max_text_len`` are dropped), tokenised with padding.

    Returns ``{"kept", "rows", "truncated", "prompts", "spans", "tokens"}``: per input image the number of
    leading phrases in its prompt and the number left out; the images that have a prompt (``rows``), their
    prompt strings, per kept phrase the token columns (``spans``) and the tokenizer's output (``None`` when
    no image has a prompt)."""
    kept = [fit_phrases(tokenizer, ph, max_text_len) for ph in phrases]
    rows = [i for i, k in enumerate(kept) if k > 0]
    out = {"kept": kept, "rows": rows, "truncated": [len(ph) - k for ph, k in zip(phrases, kept)], "prompts": [],
           "spans": [], "tokens": None}
    if not rows:
        return out
    prompts, char_spans = zip(*(build_prompt(phrases[i][: kept[i]]) for i in rows))
    with _TOKENIZER_LOCK:
        enc = tokenizer(list(prompts), padding="longest", return_offsets_mapping=True, return_token_type_ids=True,
                        return_tensors="pt")
    if enc["input_ids"].shape[1] > max_text_len:  # fit_phrases' count disagrees with the tokenizer
        raise RuntimeError(f"prompt of {enc['input_ids'].shape[1]} tokens exceeds max_text_len={max_text_len}")
    offsets = enc.pop("offset_mapping")
    out.update(prompts=list(prompts), spans=[phrase_token_spans(offsets[j], char_spans[j]) for j in range(len(rows))],
               tokens=enc)
    return out


def encode_detection_batch(processor, images: Sequence, phrases: Sequence[Sequence[str]], max_text_len: int) -> EncodedBatch:
    """Tokenise one prompt per image (trailing phrases that do not fit are dropped) and preprocess the
    images; images without any phrase are left out of the model inputs."""
    if len(images) != len(phrases):
        raise ValueError(f"{len(images)} images but {len(phrases)} phrase lists")
    t = tokenize_prompts(processor.tokenizer, phrases, max_text_len)
    sizes = [im.size for im in images]
    if not t["rows"]:
        return EncodedBatch({}, [], [], t["kept"], sizes, t["truncated"])
    pix = processor.image_processor(images=[images[i] for i in t["rows"]], return_tensors="pt")
    inputs = {"pixel_values": pix["pixel_values"], "pixel_mask": pix["pixel_mask"], **dict(t["tokens"])}
    return EncodedBatch(inputs, t["rows"], t["spans"], t["kept"], sizes, t["truncated"])


def detect_encoded(model, batch: EncodedBatch, *, box_threshold: float = 0.35,
                   text_threshold: float = 0.25) -> list[list[dict[str, Any]]]:
    """Run the detector on an :class:`EncodedBatch`; per input image the detected phrases (see
    :func:`detect_batch`)."""
    import torch

    if not batch.rows:
        return [[] for _ in batch.sizes]
    dev = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    inputs = {k: v.to(dev) for k, v in batch.inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    with torch.inference_mode():
        out = model(**inputs)
    # (B, Q, max_text_len); padded columns are -inf -> 0
    return read_detections(torch.sigmoid(out.logits.float()).cpu(), out.pred_boxes.float().cpu(), batch,
                           box_threshold, text_threshold)


def read_detections(probs, cxcywh, batch: EncodedBatch, box_threshold: float,
                    text_threshold: float) -> list[list[dict[str, Any]]]:
    """Model outputs -> per input image ``[{"index", "box", "score", "box_score"}]``, for any Grounding DINO
    implementation: ``probs`` (B, Q, T >= prompt length) sigmoid token probabilities and ``cxcywh`` (B, Q, 4)
    normalised boxes of the encoded images (``batch.rows``), boxes clipped to the image and assigned with
    :func:`assign_boxes`."""
    import torch

    results: list[list[dict[str, Any]]] = [[] for _ in batch.sizes]
    for j, i in enumerate(batch.rows):
        w, h = batch.sizes[i]
        cx, cy, bw, bh = cxcywh[j].unbind(-1)
        boxes = torch.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], -1)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        assigned = assign_boxes(probs[j], boxes, batch.spans[j], box_threshold, text_threshold)
        for p, a in enumerate(assigned):
            if a is not None:
                results[i].append({"index": p, "box": [round(float(v), 2) for v in boxes[a["query"]]],
                                   "score": round(a["score"], 6), "box_score": round(a["box_score"], 6)})
    return results


def detect_batch(model, processor, images: Sequence, phrases: Sequence[Sequence[str]], *, box_threshold: float = 0.35,
                 text_threshold: float = 0.25, stats: dict | None = None) -> list[list[dict[str, Any]]]:
    """Detect each image's phrases, all of an image's phrases in one prompt, batched over images.

    Returns per image a list of ``{"phrase", "index" (position in that image's phrase list), "box":
    [x0, y0, x1, y1] (original pixels, clipped), "score" (phrase score), "box_score"}`` for the phrases
    detected, in phrase order; an image with no detection gets ``[]``. Coordinates are rounded to 0.01 px
    and scores to 1e-6 (stable JSON). Phrases beyond the model's ``max_text_len`` are not prompted;
    their count is added to ``stats["truncated"]`` when a dict is passed.
    """
    max_text_len = int(getattr(model.config, "max_text_len", 256))
    batch = encode_detection_batch(processor, images, phrases, max_text_len)
    if stats is not None:
        stats["truncated"] = stats.get("truncated", 0) + sum(batch.truncated)
    dets = detect_encoded(model, batch, box_threshold=box_threshold, text_threshold=text_threshold)
    for ph, ds in zip(phrases, dets):
        for d in ds:
            d["phrase"] = normalize_phrase(ph[d["index"]])
    return [[{"phrase": d["phrase"], "index": d["index"], "box": d["box"], "score": d["score"],
              "box_score": d["box_score"]} for d in ds] for ds in dets]


# ---------------------------------------------------------------------------------------------- the stage


def _load_block(rows: list[dict], max_candidates: int, backend) -> dict:
    """CPU part of a block (runs in a prefetch thread): images, candidates, encoded model inputs."""
    from lpoi.listgen.objects import extract_candidates

    images, cands, errors = [], [], {}
    ok_rows = []
    for row in rows:
        try:
            img = load_image(row["image_path"])
        except ImageRejected as e:
            errors[row["id"]] = (f"image_{e.reason}", e.detail)
            continue
        ok_rows.append(row)
        images.append(img)
        cands.append(extract_candidates(row["prompt"], row["chosen"], max_candidates=max_candidates))
    phrases = [[c["phrase"] for c in cs] for cs in cands]
    enc = backend.encode(ok_rows, images, phrases)
    return {"rows": rows, "ok_rows": ok_rows, "images": images, "cands": cands, "errors": errors, "enc": enc}


def _fallback(backend, rows: list[dict], images: list, chunks: list[list[str]], box_threshold: float,
              text_threshold: float) -> list[list[dict[str, Any]]]:
    """All COCO-class detections per image, over as many prompts as ``chunks``."""
    found: list[list[dict[str, Any]]] = [[] for _ in images]
    for chunk in chunks:
        dets = backend.detect(backend.encode(rows, images, [chunk] * len(images)), box_threshold, text_threshold)
        for i, ds in enumerate(dets):
            found[i].extend({"label": normalize_phrase(chunk[d["index"]]), "box": d["box"], "score": d["score"]}
                            for d in ds)
    return found


def count_row(row: dict) -> dict[str, Any]:
    """What a detect row adds to the stage's counts (metrics are these counts over the whole output)."""
    src = row["object"]["source"]
    return {"sources": {src: 1}, "fallback_used": int(src == "random"), "truncated": row["truncated"]}


def detect_tally() -> Tally:
    return Tally(count_row, zero={"sources": {}, "fallback_used": 0, "truncated": 0})


def run_detect(
    prepared_path: str | os.PathLike,
    out_path: str | os.PathLike,
    rejects_path: str | os.PathLike,
    params: DetectParams | None = None,
    *,
    seed: int = 0,
    device: str | None = None,
    dtype: str = "float32",
    progress: bool = True,
    num_workers: int = 1,
    limit: int | None = None,
    model=None,
    processor=None,
    backend=None,
    journal: bool = False,
    **settings: Any,
) -> dict[str, Any]:
    """Stream ``prepared.jsonl`` -> ``detect.jsonl`` + ``rejects`` (resumable).

    ``params``: the ``detect`` section (``model``, ``box_threshold``, ``text_threshold``, ``batch_size``,
    ``max_candidates``, ``fallback``); without it, those settings as keywords (``model_name`` for
    ``model``), validated the same way (:func:`lpoi.config.section_of`).

    Output rows: ``{"id", "image_path", "width", "height", "candidates": [{"phrase", "lemma", "source",
    "box" | null, "score" | null, "box_score" | null}, ...], "object": the first detected
    candidate (a copy, with its ``"index"``), "truncated": candidates left out of the prompt}`` —
    candidates in the paper's order (text ones, then the ``random`` fallback if used), detected or not.
    ``object`` is the detect stage's own pick (the first detected one); verify may move on to later ones.

    ``prepared_path`` rows need ``id``, ``image_path``, ``prompt``, ``chosen``. Blocks of ``batch_size``
    input rows are the unit of work and of
    resume (finished ids are skipped; a partly finished block is recomputed whole so results do not
    depend on where a previous run stopped) — see :mod:`lpoi.runner`. ``num_workers`` threads prepare the
    next blocks (image decoding, candidate extraction, tokenising) while the model runs. ``model``/
    ``processor`` may be passed pre-loaded (then ``model_name``, ``device`` and ``dtype`` are not used to
    load), or a whole ``backend`` (:mod:`lpoi.listgen.backends`); otherwise the transformers port of
    ``model_name`` is loaded. ``journal``: check and keep the output journal (stage runs;
    :class:`lpoi.runner.StageOutput`). Returns this invocation's counts and timings (``samples``,
    ``written``, ``rejected``, ``skipped``, ``resumed``, ``rejects_by_reason``, ``sources``,
    ``fallback_used``, ``truncated``, ``seconds``, ``samples_per_s``) and, under ``"output"``, the same
    counts over the whole output plus ``backend`` (which implementation ran).
    """
    from lpoi.listgen.objects import COCO_CLASSES, pick_random_detection

    d = section_of(DetectParams, params, settings, model_name="model")
    model_name, box_threshold, text_threshold = d.model, d.box_threshold, d.text_threshold
    batch_size, max_candidates, fallback = d.batch_size, d.max_candidates, d.fallback
    if backend is None:
        from lpoi.listgen.backends import TransformersDetector, open_detector

        backend = TransformersDetector(model, processor) if model is not None else \
            open_detector("transformers", model_name, device=pick_device(device), dtype=dtype)
    if fallback and not hasattr(backend, "prompt_chunks"):  # e.g. a backend that reads known boxes: no text prompts
        raise ValueError(f"detect.fallback prompts the detector with the COCO classes, which the "
                         f"{getattr(backend, 'name', 'custom')} detection backend cannot do; turn it off")
    coco_chunks = backend.prompt_chunks(list(COCO_CLASSES)) if fallback else []

    def process(blk: dict, rows: list[dict]) -> list:
        dets = backend.detect(blk["enc"], box_threshold, text_threshold)
        need = [i for i, ds in enumerate(dets) if not ds]
        found = {}
        if need and fallback:
            found = dict(zip(need, _fallback(backend, [blk["ok_rows"][i] for i in need],
                                             [blk["images"][i] for i in need], coco_chunks, box_threshold,
                                             text_threshold)))
        by_id = {row["id"]: _row_result(row, blk["images"][i], blk["cands"][i], dets[i], blk["enc"].truncated[i],
                                        found.get(i), seed, pick_random_detection)
                 for i, row in enumerate(blk["ok_rows"])}
        return [Reject(*blk["errors"][r["id"]]) if r["id"] in blk["errors"] else by_id[r["id"]] for r in rows]

    out = StageOutput(out_path, rejects_path, limit=limit, journal=journal)
    stats = run_file(prepared_path, out, lambda rows: _load_block(rows, max_candidates, backend), process,
                     tally=detect_tally, batch_size=batch_size, workers=num_workers,
                     progress=progress, desc="detect")
    stats["output"]["backend"] = stats["backend"] = backend.name
    return stats


def _row_result(row, image, cands, dets, truncated, fallback_found, seed, pick_random_detection) -> dict | Reject:
    """One sample's output row, or its :class:`~lpoi.runner.Reject`."""
    w, h = image.size
    by_index = {d["index"]: d for d in dets}
    out_cands = []
    for j, c in enumerate(cands):
        d = by_index.get(j)
        out_cands.append({"phrase": c["phrase"], "lemma": c["lemma"], "source": c["source"],
                          "box": d["box"] if d else None, "score": d["score"] if d else None,
                          "box_score": d["box_score"] if d else None})
    first = next((j for j, c in enumerate(out_cands) if c["box"] is not None), None)
    if first is None and fallback_found:
        pick = pick_random_detection(fallback_found, seed, str(row["id"]))
        if pick is not None:
            out_cands.append({"phrase": pick["label"], "lemma": pick["label"], "source": "random",
                              "box": pick["box"], "score": pick["score"], "box_score": None})
            first = len(out_cands) - 1
    if first is None:
        also = " and the COCO-class fallback detected nothing" if fallback_found is not None else ""
        if not cands:
            return Reject("no_candidates", "the question and chosen answer name no object" + also)
        return Reject("no_detection", f"none of {[c['phrase'] for c in cands]} detected" + also)
    return {"id": row["id"], "image_path": row["image_path"], "width": w, "height": h,
            "candidates": out_cands, "object": {**out_cands[first], "index": first}, "truncated": truncated}
