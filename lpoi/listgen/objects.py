"""Critical-object candidates: which object of the image should the list hide?

LPOI (Algorithm 1 and Sec. 3.2 of the paper) picks the critical object from the text, in this order:

1. object nouns in the **first sentence of the chosen answer** (``source="chosen_first"``),
2. then in the **question** (``"question"``),
3. then in the **rest of the chosen answer** (``"chosen_rest"``),
4. and when none of those is detected in the image, a **random detected object** (``"random"``) from an
   open-vocabulary detection over common object classes — that step runs at detection time, with
   :data:`COCO_CLASSES` as the prompt and :func:`pick_random_detection` for a seeded choice.

Extraction (NLTK, offline data: ``punkt_tab``, ``averaged_perceptron_tagger_eng``, ``wordnet``):
``sent_tokenize`` -> ``word_tokenize`` -> ``pos_tag``; a noun phrase is a maximal run of adjective/noun
tags (``JJ*``/``NN*``) trimmed to end in a noun, so "red car" and "fire hydrant" stay whole (better
grounding prompts than the bare head). The head noun is lemmatised with ``WordNetLemmatizer`` (plural ->
singular) and everything is lowercased. Dropped:

* non-visual / positional / meta words (:data:`STOP_NOUNS`: "image", "background", "left", "color", ...)
  as heads, and as modifiers inside a phrase ("background trees" -> "tree");
* quantity-like adjectives (:data:`STOP_ADJECTIVES`: "several people" -> "people");
* abstract nouns: a head noun is kept only if at least one of its WordNet noun senses descends from
  ``physical_entity.n.01`` (a thing you can see) or ``group.n.01`` (so "people", "crowd", "herd" stay).
  Words WordNet does not know at all ("smartphone") are kept — unknown is not evidence of abstractness —
  while words it knows only as verbs/adjectives (an imperative "Describe" mis-tagged as a noun) are dropped.

Candidates are deduplicated by head lemma, keeping the first occurrence (and so its source).
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from typing import Any

from lpoi.nltk_data import NLTK_RESOURCES, NltkDataMissing, ensure_nltk_data

__all__ = [
    "COCO_CLASSES",
    "NLTK_RESOURCES",
    "SOURCES",
    "STOP_ADJECTIVES",
    "STOP_NOUNS",
    "NltkDataMissing",
    "ensure_nltk",
    "extract_candidates",
    "noun_phrases",
    "open_vocab_prompt",
    "pick_random_detection",
]

SOURCES = ("chosen_first", "question", "chosen_rest", "random")

# The 80 COCO detection classes: the open-vocabulary prompt for the "random detected object" fallback.
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

# Nouns that name no object one could hide: the picture itself, positions, parts of the frame,
# attributes, quantities and discourse words. Checked against the lemma, lowercase.
STOP_NOUNS: frozenset[str] = frozenset(
    """
    image images picture photo photograph photography pic snapshot shot frame scene scenery view
    setting environment atmosphere background foreground side left right top bottom middle center
    centre front back corner edge area part portion region section spot place position location
    distance direction color colour shade hue size shape style pattern appearance look feature detail
    way kind type sort variety lot number amount couple pair group set bunch piece bit
    something anything everything nothing someone anyone everyone thing stuff item object objects it
    time day moment event activity game sport occasion situation condition state
    question answer description caption text word letter sentence
    describe explain tell identify provide list name mention count
    overall example total majority rest end
    """.split()  # noqa: SIM905 - a word list reads better as text
)

# Adjectives that quantify or point rather than describe ("several people" -> "people").
STOP_ADJECTIVES: frozenset[str] = frozenset(
    """
    several many few various different other same such certain main only much more most numerous
    multiple entire whole overall visible next first second third last single particular possible
    additional own specific similar
    """.split()  # noqa: SIM905
)

_TAG_PLACEHOLDER = re.compile(r"<[^<>\s]{1,40}>")  # "<image>", "<Image>" tokens in LLaVA/mDPO prompts
_WORD = re.compile(r"[A-Za-z][A-Za-z-]*")


def ensure_nltk(download: bool = False) -> None:
    """punkt_tab, averaged_perceptron_tagger_eng and wordnet, for candidate extraction (see lpoi.nltk_data)."""
    ensure_nltk_data(NLTK_RESOURCES, purpose="critical-object extraction", download=download)


@lru_cache(maxsize=1)
def _nlp():
    ensure_nltk()
    import nltk
    from nltk.corpus import wordnet as wn
    from nltk.stem import WordNetLemmatizer

    lem = WordNetLemmatizer()
    roots = {wn.synset("physical_entity.n.01"), wn.synset("group.n.01")}
    return nltk, wn, lem, roots


@lru_cache(maxsize=8192)
def _is_concrete(lemma: str) -> bool:
    """True if some noun sense of ``lemma`` is a physical entity or a group; unknown words count as concrete."""
    _, wn, _, roots = _nlp()
    synsets = wn.synsets(lemma.replace(" ", "_"), pos="n")
    if not synsets:  # unknown to WordNet ("smartphone"): keep; known only as a verb/adjective: drop
        return not wn.synsets(lemma)
    for s in synsets:
        if s in roots:
            return True
        if roots & set(s.closure(lambda x: x.hypernyms() + x.instance_hypernyms())):
            return True
    return False


def _lemma(word: str) -> str:
    _, _, lem, _ = _nlp()
    return lem.lemmatize(word.lower(), "n")


def noun_phrases(text: str) -> list[tuple[str, str]]:
    """``[(phrase, head_lemma), ...]`` of the object noun phrases in ``text``, in order, with repeats.

    >>> noun_phrases("Two red cars are parked by a fire hydrant.")  # doctest: +SKIP
    [('red car', 'car'), ('fire hydrant', 'hydrant')]
    """
    nltk, _, _, _ = _nlp()
    out: list[tuple[str, str]] = []
    for sent in nltk.sent_tokenize(_TAG_PLACEHOLDER.sub(" ", text)):
        tagged = nltk.pos_tag(nltk.word_tokenize(sent))
        run: list[tuple[str, str]] = []
        for word, tag in [*tagged, ("", ".")]:  # sentinel flushes the last run
            if _WORD.fullmatch(word) and tag.startswith(("NN", "JJ")):
                run.append((word, tag))
                continue
            out.extend(_phrases_from_run(run))
            run = []
    return out


def _phrases_from_run(run: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The phrase of one JJ/NN run. A phrase ends in its head noun. A stop-listed head drops the run
    ("the orange object", "the left side"); a head that is abstract or no noun at all — usually a verb
    the tagger took for one: "A small dog sits" -> NNS "sits" — is cut off and the longest prefix
    ending in an acceptable noun is used instead ("small dog")."""
    while True:
        while run and not run[-1][1].startswith("NN"):
            run = run[:-1]
        if not run:
            return []
        head = _lemma(run[-1][0])
        if head in STOP_NOUNS or len(head) < 2:
            return []
        if _is_concrete(head):
            break
        run = run[:-1]
    mods = [
        w.lower()
        for w, t in run[:-1]
        if w.lower() not in STOP_ADJECTIVES and _lemma(w) not in STOP_NOUNS and w.lower() not in STOP_NOUNS
    ]
    return [(" ".join([*mods, head]), head)]


def _split_first_sentence(text: str) -> tuple[str, str]:
    nltk, _, _, _ = _nlp()
    sents = nltk.sent_tokenize(_TAG_PLACEHOLDER.sub(" ", text))
    if not sents:
        return "", ""
    return sents[0], " ".join(sents[1:])


def extract_candidates(question: str, chosen: str, max_candidates: int = 8) -> list[dict[str, str]]:
    """Ordered, deduplicated critical-object candidates ``[{"phrase", "lemma", "source"}, ...]``.

    Order (the paper's): first sentence of ``chosen``, then ``question``, then the rest of ``chosen``;
    within a source, order of appearance. A lemma seen earlier is skipped (first source wins).
    The ``random`` fallback is not produced here; see :func:`pick_random_detection`.
    """
    if max_candidates < 1:
        raise ValueError(f"max_candidates must be >= 1, got {max_candidates}")
    first, rest = _split_first_sentence(chosen)
    seen: set[str] = set()
    out: list[dict[str, str]] = []
    for source, text in (("chosen_first", first), ("question", question), ("chosen_rest", rest)):
        for phrase, lemma in noun_phrases(text):
            if lemma in seen:
                continue
            seen.add(lemma)
            out.append({"phrase": phrase, "lemma": lemma, "source": source})
            if len(out) >= max_candidates:
                return out
    return out


def open_vocab_prompt(classes: tuple[str, ...] | list[str] = COCO_CLASSES) -> str:
    """Grounding-DINO style text prompt: lowercase class names separated by " . ", ending with ".".

    Note: Grounding DINO reads at most 256 text tokens; all 80 COCO names fit (about 190 BERT tokens).
    """
    return " . ".join(c.lower().strip() for c in classes) + " ."


def pick_random_detection(
    detections: list[dict[str, Any]], seed: int, sample_id: str
) -> dict[str, Any] | None:
    """The paper's fallback: a random detected object, deterministic per ``(seed, sample_id)``.

    ``detections``: dicts with at least ``"box"`` (``[x0, y0, x1, y1]``) and ``"score"``, usually
    ``"label"``. They are put in a canonical order (score descending, then label, then box) before the
    choice, so the pick does not depend on the detector's output order; the index comes from
    ``sha256(f"{seed}:{sample_id}")`` (not Python's ``hash``, which is salted per process).
    Returns ``None`` when there is nothing to pick.
    """
    if not detections:
        return None
    canon = sorted(
        detections,
        key=lambda d: (-float(d["score"]), str(d.get("label", "")), [float(v) for v in d["box"]]),
    )
    digest = hashlib.sha256(f"{int(seed)}:{sample_id}".encode()).digest()
    return canon[int.from_bytes(digest[:8], "big") % len(canon)]
