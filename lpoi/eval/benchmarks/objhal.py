"""Object HalBench: CHAIR object hallucination on 300 COCO val2014 images (RLHF-V / RLAIF-V version).

Mirrors ``eval/eval_gpt_obj_halbench.py`` of RLHF-V (github.com/RLHF-V/RLHF-V @ 3d35a91) and
RLAIF-V (github.com/RLHF-V/RLAIF-V @ 1a95383; same CHAIR code, a more lenient JSON parser), which
adapt the CHAIR metric of Rohrbach et al. 2018 (``chair.py``):

- :class:`ChairVocab` = ``CHAIR.__init__``: ``synonyms_refine.txt`` (first token of a line is the
  COCO class, the rest its synonyms; a later line wins for a repeated synonym), two-word names
  (every multi-word synonym, plus "home plate" and "train track" which map to themselves and so
  *block* "plate"/"train"), "baby/adult <animal>" → animal, "passenger jet/train" → jet/train,
  "bow tie" → tie, "toilet seat" → toilet, "wine glas" → wine glass (WordNet's lemma of "glass"
  used to be "glas").
- :func:`caption_to_words` = ``CHAIR.caption_to_words``: ``nltk.word_tokenize(caption.lower())``,
  WordNet-lemmatize every token (noun lemmas), merge two-word names left to right, drop "seat" when
  "toilet" is also in the caption (so "the seat of the toilet" does not fire "chair"), keep the
  words in the synonym list and map each to its COCO class. Every mention counts (not unique).
- ground truth (:func:`build_ground_truth`) = ``get_annotations_from_segments`` +
  ``get_annotations_from_captions``: COCO instance categories of the image plus the classes that
  :func:`caption_to_words` finds in its five reference captions. The official script reads the
  train2014 files too; we read ``instances_val2014.json`` / ``captions_val2014.json`` and the
  train2014 pair only if it is present in the same folder.
- :func:`chair_metrics` = ``CHAIR.compute_chair``: ``CHAIRs`` = hallucinated responses / responses,
  ``CHAIRs_refine`` = hallucinated responses / responses with >= 1 COCO mention (RLAIF-V prints it
  as "Response Hall"), ``CHAIRi`` = hallucinated mentions / COCO mentions ("Object Hall"),
  ``recall`` = sum over responses of the number of distinct correctly mentioned classes / sum of
  ground-truth class counts (``obj_rec``). Reported in percent, as ``summarize_gpt_obj_halbench_review.py``
  prints them; a zero denominator gives 0.0 (the official raises ZeroDivisionError) — the counts
  are in the metrics so the denominators are visible. Responses are ``answer.replace("Assistant:", "").strip()``
  as the official ``load_generated_captions`` does.
- ``extractor="llm"`` = ``gpt_caption_processor`` + ``get_pred_objs_match`` +
  ``caption_objects_to_coco_objects``: responses of <= 3 words get no objects and no call; the
  others go to the judge with the official :data:`EXTRACT_PROMPT` as a *system* message; the reply
  is parsed like ``parse_object_list`` (JSON, else a ```json block (RLAIF-V), else the last line
  when it holds ``["``); each object "x" is re-parsed from "a x": two-word names first, else the
  runs of nouns (lemmatized, joined with spaces); objects are de-duplicated (so in this mode each
  class counts once per response). The official uses spaCy ``en_core_web_trf`` for that re-parse;
  we use NLTK ``pos_tag`` + WordNet noun lemmas on the lower-cased text (no spaCy model needed), which
  can differ on rare words. A failed extraction (judge error or unparsable list) is recorded and
  the response left out of the metrics (the official retries 100 times then asserts).

Ground truth is built once per set of annotation files and cached as JSON (no pickle), keyed by the
sha256 of the annotation files and the synonym list.

Generation error rows (a truthy ``"error"`` key, written by :mod:`lpoi.eval.generate` when an image
could not be loaded) are left out of every metric and counted in ``n_generation_errors`` and
``generation_errors`` (per reason); a file holding nothing but error rows is a ValueError.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpoi.eval.answers import answer_rows, check_error_ratio, reject, require_usable
from lpoi.eval.judge import Judge, all_failed
from lpoi.io import (
    MAX_PIXELS,
    ImageRejected,
    UnsafePathError,
    atomic_write_bytes,
    atomic_write_json,
    read_json,
    read_jsonl,
    safe_join,
    sha256_file,
    to_rgb,
    write_jsonl,
)
from lpoi.nltk_data import ensure_nltk_data

__all__ = [
    "EXTRACT_PROMPT",
    "ChairVocab",
    "build_ground_truth",
    "caption_to_words",
    "chair_metrics",
    "decode_image_b64",
    "ensure_nltk",
    "extract_prompt",
    "find_synonyms",
    "items",
    "load_ground_truth",
    "load_vocab",
    "objects_to_coco",
    "parse_object_list",
    "refine_extracted_objects",
    "score_file",
]

log = logging.getLogger(__name__)

GT_CACHE_FORMAT = 1  # bump when caption_to_words or the cache layout changes
SYNONYMS_FILE = "synonyms_refine.txt"
SYNONYMS_SHA256 = "681041d2958d7871ed6fa69c3108f34aa6a0a354eb53ed4c5a425e65f86bc72a"  # RLHF-V eval/data @ 3d35a91
MAX_IMAGE_BYTES = 32 * 1024 * 1024  # a COCO val2014 JPEG is < 1 MB
ANNOTATION_FILES = ("instances_val2014.json", "captions_val2014.json")
OPTIONAL_ANNOTATION_FILES = ("instances_train2014.json", "captions_train2014.json")

# Verbatim from RLHF-V / RLAIF-V eval/eval_gpt_obj_halbench.py (`prompt_template`), "()" included.
EXTRACT_PROMPT = """You are an expert in image objects extraction according to a question answer pair. We asked an examiner to answer a question about a picture.

[Start of Question]

<image> {question}

[End of Question]

[Start of Examiner's Answer]

{answer}

[End of Examiner's Answer]


Assume that the answer is correct, please identify all visible objects that are directly shown in the image. Please following the instructions in below:

1. You should only mention objects that are explicitly mentioned in the examiner's answer.
2. You should only extract the object names without the attributes of the objects.
3. You should not include the properties of the object, like the color, material, etc. as part of the object name in your result.
4. Make your answer precise. Present the results in a JSON list format: [\"object_1\", ..., \"object_n\"].
5. You should return an empty JSON list () if no visible objects can be found.
"""


# ---------------------------------------------------------------------------------------------- NLTK


def ensure_nltk(resources: Sequence[str] = ("tokenizers/punkt_tab", "corpora/wordnet"), download: bool = True) -> None:
    """Make sure the NLTK data the CHAIR parsing needs is there (see lpoi.nltk_data); ``resources`` are
    ``nltk.data.find`` paths."""
    ensure_nltk_data({r.rsplit("/", 1)[-1]: r for r in resources}, purpose="the Object HalBench scorer",
                     download=download)


_lemmatizer = None


def _lemmatize(word: str) -> str:
    global _lemmatizer
    if _lemmatizer is None:
        from nltk.stem import WordNetLemmatizer

        _lemmatizer = WordNetLemmatizer()
    return _lemmatizer.lemmatize(word)


# ---------------------------------------------------------------------------------------------- vocabulary


@dataclass(frozen=True)
class ChairVocab:
    """COCO classes, their synonyms and the two-word names (``CHAIR.__init__``)."""

    objects: frozenset[str]  # every COCO class name and synonym ("mscoco_objects")
    inverse: dict[str, str]  # synonym -> COCO class ("inverse_synonym_dict")
    double: dict[str, str]  # two-word name -> word it stands for ("double_word_dict")
    sha256: str = ""
    classes: tuple[str, ...] = field(default=())


def load_vocab(synonyms_path: str | os.PathLike) -> ChairVocab:
    """Parse ``synonyms_refine.txt`` exactly as ``CHAIR.__init__`` does (blank lines skipped)."""
    path = Path(synonyms_path)
    if not path.is_file():
        raise FileNotFoundError(f"CHAIR synonym list not found: {path}")
    objects: list[str] = []
    inverse: dict[str, str] = {}
    classes: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        syn = [s.strip() for s in line.strip().split(", ")]
        objects.extend(syn)
        classes.append(syn[0])
        for s in syn:
            inverse[s] = syn[0]
    double_words = [w for w in inverse if len(w.strip().split(" ")) >= 2] + ["home plate", "train track"]
    double = {w: w for w in double_words}
    for animal in ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub"):
        double[f"baby {animal}"] = animal
        double[f"adult {animal}"] = animal
    for vehicle in ("jet", "train"):
        double[f"passenger {vehicle}"] = vehicle
    double["bow tie"] = "tie"
    double["toilet seat"] = "toilet"
    double["wine glas"] = "wine glass"
    return ChairVocab(frozenset(objects), inverse, double, sha256_file(path), tuple(classes))


def find_synonyms(coco_dir: str | os.PathLike | None = None) -> Path:
    """Where the synonym list is: ``<coco_dir>/synonyms_refine.txt``, else the committed sample copy."""
    tried = []
    if coco_dir is not None:
        p = Path(coco_dir) / SYNONYMS_FILE
        tried.append(p)
        if p.is_file():
            return p
    repo_copy = Path(__file__).resolve().parents[3] / "data" / "sample" / "bench" / "objhal" / SYNONYMS_FILE
    tried.append(repo_copy)
    if repo_copy.is_file():
        return repo_copy
    raise FileNotFoundError(
        f"CHAIR synonym list {SYNONYMS_FILE} not found (looked at {[str(t) for t in tried]}). It is "
        "RLHF-V's eval/data/synonyms_refine.txt (github.com/RLHF-V/RLHF-V); put it in the COCO annotation folder."
    )


# ---------------------------------------------------------------------------------------------- parsing


def _merge_double_words(words: list[str], vocab: ChairVocab, keep_singles: bool) -> list[str]:
    """Left-to-right two-word merge (the ``while i < len(words)`` loop of the official code)."""
    out, i = [], 0
    while i < len(words):
        pair = " ".join(words[i : i + 2])
        if pair in vocab.double:
            out.append(vocab.double[pair])
            i += 2
        else:
            if keep_singles:
                out.append(words[i])
            i += 1
    return out


def objects_to_coco(words: Iterable[str], vocab: ChairVocab) -> list[tuple[str, str]]:
    """``caption_objects_to_coco_objects``: toilet/seat rule, keep known words, map to classes."""
    words = list(words)
    if "toilet" in words and "seat" in words:
        words = [w for w in words if w != "seat"]
    return [(w, vocab.inverse[w]) for w in words if w in vocab.objects]


def caption_to_words(caption: str, vocab: ChairVocab) -> list[tuple[str, str]]:
    """``CHAIR.caption_to_words``: the (word, COCO class) of every COCO mention in ``caption``."""
    import nltk

    tokens = [_lemmatize(w) for w in nltk.word_tokenize(caption.lower())]
    return objects_to_coco(_merge_double_words(tokens, vocab, keep_singles=True), vocab)


def parse_object_list(content: str) -> list:
    """``parse_object_list`` of RLHF-V (plain JSON) and RLAIF-V (```json block), last-line fallback.

    Raises ``ValueError`` when nothing parses to a JSON list.
    """
    candidates = [content]
    m = re.search(r"```json\n(.*?)\n```", content, re.DOTALL)
    if m:
        candidates.append(m.group(1))
    if '["' in content:
        candidates.append(content.strip().split("\n")[-1])
    for c in candidates:
        try:
            val = json.loads(c)
        except ValueError:
            continue
        if isinstance(val, list):
            return val
    raise ValueError("Content is not json interpretable")


def refine_extracted_objects(objs: Sequence[Any], vocab: ChairVocab) -> list[str]:
    """``get_pred_objs_match``: re-parse every extracted object "x" as "a x", de-duplicated in order.

    Two-word names found in the lemmas win; otherwise each run of nouns (NN, NNS, NNP, NNPS), as
    lemmas joined by spaces. NLTK stands in for the official spaCy ``en_core_web_trf``.
    """
    import nltk

    refined: list[str] = []
    for obj in objs:
        text = f"a {obj}".lower()
        tokens = nltk.word_tokenize(text)
        tags = nltk.pos_tag(tokens)
        lemmas = [_lemmatize(t) if tag.startswith("NN") else t for t, tag in tags]
        doubles = _merge_double_words(lemmas, vocab, keep_singles=False)
        if doubles:
            refined += doubles
            continue
        run: list[str] = []
        for (tok, tag), lem in zip(tags, lemmas):
            if tag in ("NNP", "NNPS", "NN", "NNS"):
                run.append(lem)
            elif run:
                refined.append(" ".join(run))
                run = []
        if run:
            refined.append(" ".join(run))
    out: list[str] = []
    for r in refined:
        if r not in out:
            out.append(r)
    return out


def extract_prompt(question: str, answer: str) -> list[dict]:
    """The official extraction request: the filled template as one *system* message."""
    return [{"role": "system", "content": EXTRACT_PROMPT.replace("{question}", question).replace("{answer}", answer)}]


# ---------------------------------------------------------------------------------------------- ground truth


def build_ground_truth(
    instances: Sequence[dict], captions: Sequence[dict], image_ids: Iterable[int], vocab: ChairVocab
) -> dict[int, list[str]]:
    """COCO classes per image: instance categories + classes parsed from the reference captions.

    ``instances`` / ``captions`` are loaded COCO annotation dicts (val2014, optionally train2014).
    """
    wanted = set(image_ids)
    objs: dict[int, set[str]] = {i: set() for i in wanted}
    for inst in instances:
        id_to_name = {c["id"]: c["name"] for c in inst.get("categories", [])}
        for ann in inst.get("annotations", []):
            imid = ann.get("image_id")
            if imid in objs:
                name = id_to_name.get(ann.get("category_id"))
                if name not in vocab.inverse:
                    raise ValueError(
                        f"COCO category {name!r} (id {ann.get('category_id')}) of image {imid} is not in the synonym list"
                    )
                objs[imid].add(vocab.inverse[name])
    for caps in captions:
        for ann in caps.get("annotations", []):
            imid = ann.get("image_id")
            if imid in objs and isinstance(ann.get("caption"), str):
                objs[imid].update(cls for _, cls in caption_to_words(ann["caption"], vocab))
    return {i: sorted(v) for i, v in objs.items()}


def load_ground_truth(
    coco_dir: str | os.PathLike,
    image_ids: Iterable[int],
    vocab: ChairVocab,
    cache_path: str | os.PathLike | None = None,
) -> tuple[dict[int, list[str]], set[int]]:
    """Ground truth for ``image_ids`` and the ids that no annotation file knows, cached as JSON.

    The cache holds every image computed so far under a key made of the sha256 of each annotation
    file, of the synonym list, the NLTK version and :data:`GT_CACHE_FORMAT`; a different key
    rebuilds it, new ids are added to it.
    """
    coco_dir = Path(coco_dir)
    files = [coco_dir / n for n in ANNOTATION_FILES]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"COCO 2014 annotations missing: {missing}. Get annotations_trainval2014.zip from "
            "https://cocodataset.org/#download (only instances_val2014.json and captions_val2014.json "
            "are needed), e.g. `python stages/download.py objhal`, and pass that folder as --coco-dir."
        )
    files += [coco_dir / n for n in OPTIONAL_ANNOTATION_FILES if (coco_dir / n).is_file()]
    import nltk

    key = {
        "format": GT_CACHE_FORMAT,
        "files": {f.name: sha256_file(f) for f in files},
        "synonyms_sha256": vocab.sha256,
        "nltk": nltk.__version__,
    }
    wanted = {int(i) for i in image_ids}
    cache: dict[str, Any] = {"key": key, "images": {}, "unknown": []}
    if cache_path is not None and Path(cache_path).is_file():
        try:
            old = read_json(cache_path)
            if isinstance(old, dict) and old.get("key") == key:
                cache = old
            else:
                log.info("objhal: ground-truth cache %s is for other annotation files; rebuilding", cache_path)
        except ValueError as e:
            log.warning("objhal: unreadable ground-truth cache (%s); rebuilding", e)
    have = {int(k) for k in cache["images"]} | set(cache["unknown"])
    todo = wanted - have
    if todo:
        inst = [read_json(f) for f in files if f.name.startswith("instances_")]
        caps = [read_json(f) for f in files if f.name.startswith("captions_")]
        known = {img["id"] for d in inst + caps for img in d.get("images", []) if isinstance(img, dict)}
        gt = build_ground_truth(inst, caps, todo & known, vocab)
        cache["images"].update({str(k): v for k, v in gt.items()})
        cache["unknown"] = sorted(set(cache["unknown"]) | (todo - known))
        if cache_path is not None:
            atomic_write_json(cache_path, cache, indent=None)
    unknown = wanted & set(cache["unknown"])
    return {i: cache["images"][str(i)] for i in wanted - unknown}, unknown


# ---------------------------------------------------------------------------------------------- metrics


def chair_metrics(records: Sequence[dict], gt: dict[int, Sequence[str]]) -> tuple[dict[str, Any], list[dict]]:
    """``CHAIR.compute_chair`` over records ``{"image_id", "response", "mentions": [(word, class)]}``.

    Returns (metrics in percent with their counts, one detail row per record).
    """
    n = n_coco = n_hall_resp = hall_mentions = mentions = gt_count = correct_cls = words_total = 0
    details = []
    for rec in records:
        gt_objects = set(gt[rec["image_id"]])
        ms = rec["mentions"]
        words_total += len(rec["response"].strip().split(" "))
        gt_count += len(gt_objects)
        mentions += len(ms)
        hallucinated = [(w, c) for w, c in ms if c not in gt_objects]
        correct = {c for _, c in ms if c in gt_objects}
        hall_mentions += len(hallucinated)
        correct_cls += len(correct)
        n += 1
        n_hall_resp += bool(hallucinated)
        n_coco += bool(ms)
        details.append(
            {
                "image_id": rec["image_id"],
                "response": rec["response"],
                "mentions": [list(m) for m in ms],
                "hallucinated": [list(m) for m in hallucinated],
                "gt_objects": sorted(gt_objects),
                "CHAIRs": int(bool(hallucinated)),
                "CHAIRi": len(hallucinated) / len(ms) if ms else 0.0,
            }
        )

    def pct(a: float, b: float) -> float:
        return 100.0 * a / b if b else 0.0

    metrics = {
        "CHAIRs": pct(n_hall_resp, n),
        "CHAIRs_refine": pct(n_hall_resp, n_coco),
        "CHAIRi": pct(hall_mentions, mentions),
        "recall": pct(correct_cls, gt_count),
        "n": n,
        "n_with_coco_objects": n_coco,  # official coco_sentence_num
        "n_hallucinated_responses": n_hall_resp,
        "n_mentions": mentions,
        "n_hallucinated_mentions": hall_mentions,
        "n_correct_objects": correct_cls,  # official coco_word_count
        "n_gt_objects": gt_count,  # official gt_word_count
        "avg_word_len": words_total / n if n else 0.0,
    }
    return metrics, details


# ---------------------------------------------------------------------------------------------- items


def decode_image_b64(data: Any, *, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_PIXELS):
    """Validated ``(jpeg_bytes, RGB PIL image)`` from a base64 string (a ``data:`` prefix is allowed).

    Raises :class:`lpoi.io.ImageRejected` with reason ``bad_base64``, ``too_large`` or ``unreadable``.
    """
    from PIL import Image

    if not isinstance(data, str) or not data:
        raise ImageRejected("bad_base64", f"expected a base64 string, got {type(data).__name__}")
    s = data.strip()
    if s.startswith("data:") and "," in s[:100]:
        s = s.split(",", 1)[1]
    s = "".join(s.split())
    if len(s) > (max_bytes * 4) // 3 + 4:
        raise ImageRejected("too_large", f"base64 image of {len(s)} chars exceeds {max_bytes} bytes")
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageRejected("bad_base64", str(e)) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageRejected("too_large", f"{w}x{h} = {w * h} px exceeds {max_pixels}")
            img.load()
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageRejected("too_large", str(e)) from None
    except Exception as e:  # noqa: BLE001 - PIL raises assorted errors on garbage
        raise ImageRejected("unreadable", f"{type(e).__name__}: {e}") from None
    return raw, to_rgb(img)


def coco_filename(image_id: int) -> str:
    return f"COCO_val2014_{int(image_id):012d}.jpg"


def items(
    question_file: str | os.PathLike,
    images_dir: str | os.PathLike | None = None,
    question_file_with_images: str | os.PathLike | None = None,
    *,
    limit: int | None = None,
    extract_dir: str | os.PathLike | None = None,
    max_image_bytes: int = MAX_IMAGE_BYTES,
) -> list[dict]:
    """Work list ``{"id", "image_id", "question", "image"}`` for generation.

    ``question_file``: the index (``{"idx", "image_id", "question"}`` lines) or the official
    ``obj_halbench_300_with_image.jsonl`` (same plus base64 ``"image"``). Images come from, in order:
    ``images_dir`` (a COCO val2014 folder, ``COCO_val2014_{image_id:012d}.jpg``), else the row's own
    base64 ``image``, else the row of ``question_file_with_images`` with the same ``image_id``.
    A decoded image is a PIL image, or — with ``extract_dir`` — its validated bytes written there
    under the COCO file name and returned as a path. Missing/bad images fail at once, naming them.
    """
    rows = list(read_jsonl(question_file))
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        rows = rows[:limit]
    b64_by_id: dict[int, str] = {}
    if question_file_with_images is not None and images_dir is None:
        for r in read_jsonl(question_file_with_images):
            if "image_id" in r and isinstance(r.get("image"), str):
                b64_by_id[int(r["image_id"])] = r["image"]
    out, problems = [], []
    for lineno, r in enumerate(rows, 1):
        where = f"{question_file}:{lineno}"
        try:
            image_id = int(r["image_id"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{where}: image_id missing or not an integer: {r.get('image_id')!r}") from None
        question = r.get("question")
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{where}: question missing or empty")
        idx = r.get("idx", lineno - 1)
        item = {"id": idx, "image_id": image_id, "question": question}
        if images_dir is not None:
            try:
                p = safe_join(images_dir, coco_filename(image_id))
            except UnsafePathError as e:
                raise ValueError(f"{where}: {e}") from None
            if not p.is_file():
                problems.append(f"{coco_filename(image_id)} (missing)")
                continue
            item["image"] = str(p)
        else:
            b64 = r.get("image") if isinstance(r.get("image"), str) else b64_by_id.get(image_id)
            if b64 is None:
                problems.append(f"image_id {image_id} (no base64 image)")
                continue
            try:
                raw, img = decode_image_b64(b64, max_bytes=max_image_bytes)
            except ImageRejected as e:
                problems.append(f"image_id {image_id} ({e.reason}: {e.detail})")
                continue
            if extract_dir is not None:
                Path(extract_dir).mkdir(parents=True, exist_ok=True)
                dest = safe_join(extract_dir, coco_filename(image_id))
                if not dest.is_file() or dest.read_bytes() != raw:
                    atomic_write_bytes(dest, raw)
                item["image"] = str(dest)
            else:
                item["image"] = img
        out.append(item)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} in all)" if len(problems) > 5 else "")
        src = images_dir if images_dir is not None else (question_file_with_images or question_file)
        raise FileNotFoundError(
            f"Object HalBench images unavailable from {src}: {shown}. Use a COCO val2014 image folder "
            "(images.cocodataset.org/zips/val2014.zip) as bench.objhal.images_dir, or the official "
            "obj_halbench_300_with_image.jsonl (RLHF-V eval/data) which embeds them."
        )
    return out


# ---------------------------------------------------------------------------------------------- scoring


def score_file(
    answers_path: str | os.PathLike,
    coco_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    extractor: str = "rules",
    judge: Judge | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    synonyms_path: str | os.PathLike | None = None,
    questions_path: str | os.PathLike | None = None,
    details_path: str | os.PathLike | None = None,
    nltk_download: bool = True,
    max_error_ratio: float | None = None,
    labels: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score ANSWERS (``{"image_id": int, "response": str}`` lines), write the metrics JSON, return it.

    ``extractor``: ``rules`` (offline CHAIR parsing) or ``llm`` (the official object extraction
    through ``judge``; the question comes from the answer's ``question`` field or ``questions_path``).
    ``cache_dir``: where the ground-truth cache goes (default: ``<out dir>/.objhal_cache``).
    Bad lines are rejected with a reason (``bad_image_id``, ``bad_response``, ``unknown_image_id``,
    ``missing_question``) and counted in ``rejects``; no usable line → error.
    Generation error rows (truthy ``"error"``: the image could not be used, the empty response is
    not an answer) are counted in ``n_generation_errors`` / ``generation_errors`` {reason: count}
    and left out of every metric; a file of error rows only is a ValueError naming the reasons.
    Generation plus extraction errors above ``max_error_ratio`` of the rows raise
    :class:`~lpoi.eval.answers.ErrorRatioExceeded`. ``labels`` are added to the metrics as given.
    """
    if extractor not in ("rules", "llm"):
        raise ValueError(f"objhal.extractor must be 'rules' or 'llm', got {extractor!r}")
    if extractor == "llm" and judge is None:
        raise ValueError("objhal.extractor=llm needs a judge (judge.backend: openai or hf)")
    ensure_nltk(
        ("tokenizers/punkt_tab", "corpora/wordnet")
        + (("taggers/averaged_perceptron_tagger_eng",) if extractor == "llm" else ()),
        download=nltk_download,
    )
    syn = Path(synonyms_path) if synonyms_path is not None else find_synonyms(coco_dir)
    vocab = load_vocab(syn)
    if vocab.sha256 != SYNONYMS_SHA256:
        log.warning("objhal: %s differs from the official synonyms_refine.txt (sha256 %s)", syn, vocab.sha256[:16])

    answers, rejects, generation_errors = _read_answers(answers_path)  # (no usable line: an error there)
    n_rows = len(answers) + sum(generation_errors.values())
    check_error_ratio(answers_path, n_rows, max_error_ratio, generation=generation_errors)

    cache_root = Path(cache_dir) if cache_dir is not None else Path(out_path).parent / ".objhal_cache"
    gt, unknown = load_ground_truth(
        coco_dir, {a["image_id"] for a in answers}, vocab, cache_root / "ground_truth.json"
    )
    if unknown:
        log.warning("objhal: %d image id(s) not in the COCO annotations, rejected: %s", len(unknown), sorted(unknown)[:10])
        rejects["unknown_image_id"] += sum(a["image_id"] in unknown for a in answers)
        answers = [a for a in answers if a["image_id"] not in unknown]
    if not answers:
        raise ValueError(
            f"{answers_path}: none of the image ids is in the COCO annotations under {coco_dir} "
            f"(e.g. {sorted(unknown)[:5]}); wrong --coco-dir?"
        )

    extract_errors: Counter = Counter()
    if extractor == "rules":
        for a in answers:
            a["mentions"] = caption_to_words(a["response"], vocab)
    else:
        answers = _llm_mentions(answers, judge, vocab, questions_path, answers_path, rejects, extract_errors)

    check_error_ratio(answers_path, n_rows, max_error_ratio, generation=generation_errors, extraction=extract_errors)
    metrics, details = chair_metrics(answers, gt)
    metrics.update(
        {
            "extractor": extractor,
            "n_extract_errors": sum(extract_errors.values()),
            "extract_errors": dict(extract_errors),
            "n_rejected": sum(rejects.values()),
            "rejects": dict(rejects),
            "synonyms_sha256": vocab.sha256,
            "n_generation_errors": sum(generation_errors.values()),
            "generation_errors": dict(generation_errors),
        }
    )
    if extractor == "llm":
        metrics["judge"] = judge.label
        metrics["judge_date"] = getattr(judge, "date", None)
    metrics.update(labels or {})
    if details_path is not None:
        write_jsonl(details_path, details)
    atomic_write_json(out_path, metrics)
    return metrics


def _read_answers(answers_path) -> tuple[list[dict], Counter, Counter]:
    """Usable answer rows (``line``, ``image_id``, cleaned ``response``, ``question``), rejects, generation errors."""
    rejects: Counter = Counter()
    generation_errors: Counter = Counter()
    answers: list[dict] = []
    for lineno, row in answer_rows(answers_path, generation_errors):  # error rows are never scored
        iid, resp = row.get("image_id"), row.get("response")
        if isinstance(iid, str) and iid.strip().isdigit():
            iid = int(iid)  # the official does int(image_id)
        if isinstance(iid, bool) or not isinstance(iid, int):
            reject(rejects, answers_path, lineno, "bad_image_id", repr(iid))
        elif not isinstance(resp, str):
            reject(rejects, answers_path, lineno, "bad_response", "response must be a string")
        else:
            answers.append({"line": lineno, "image_id": iid, "response": resp.replace("Assistant:", "").strip(),
                            "question": row.get("question")})
    require_usable(answers_path, generation_errors, rejects, len(answers))
    return answers, rejects, generation_errors


def _llm_mentions(answers, judge, vocab, questions_path, answers_path, rejects: Counter,
                  extract_errors: Counter) -> list[dict]:
    """``extractor="llm"``: the judge lists each response's objects; returns the answers that got ``mentions``."""
    if questions_path is not None:
        q_by_id = {int(r["image_id"]): r.get("question") for r in read_jsonl(questions_path) if "image_id" in r}
        for a in answers:
            a["question"] = a["question"] or q_by_id.get(a["image_id"])
    kept = []
    for a in answers:
        if not isinstance(a["question"], str):
            reject(rejects, answers_path, a["line"], "missing_question", "the llm extractor needs the question")
        else:
            kept.append(a)
    to_ask = [a for a in kept if len(a["response"].strip().split()) > 3]  # official short-answer rule
    for a in kept:
        a["extracted"] = []
    replies = judge.complete_many([extract_prompt(a["question"], a["response"]) for a in to_ask])
    first_error = None
    for a, reply in zip(to_ask, replies):
        if not reply.ok:
            a["error"] = reply.error
            extract_errors[reply.error or "judge_error"] += 1
            first_error = first_error or f"{reply.error}: {reply.detail}"
            continue
        try:
            a["extracted"] = parse_object_list(reply.text or "")
        except ValueError:
            a["error"] = "unparsable_object_list"
            extract_errors["unparsable_object_list"] += 1
            first_error = first_error or f"unparsable_object_list: {(reply.text or '')[:120]!r}"
    answers_ok = []
    for a in kept:
        if "error" in a:
            continue
        a["mentions"] = objects_to_coco(refine_extracted_objects(a["extracted"], vocab), vocab)
        answers_ok.append(a)
    if not answers_ok:
        raise all_failed("objhal (llm object extraction)", judge, len(to_ask), extract_errors, first_error)
    return answers_ok
