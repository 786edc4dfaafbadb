"""AMBER (Wang et al., 2023): the work list for generation, yes/no parsing, and a scorer that
reproduces the official ``inference.py`` (github.com/junyangwang0410/AMBER, commit 5e1fd52) exactly.

AMBER has 15,220 items over 1,004 images. Ids 1..1004 are *generative* ("Describe this image.");
ids 1005..15220 are *discriminative* yes/no questions of the types existence
(``discriminative-hallucination``), attribute (``discriminative-attribute-{state,number,action}``)
and relation (``discriminative-relation`` with truth "yes" and ``relation`` with truth "no").
The official LPOI script decoded the prompt into the answer, mapped answers to "No" by substring
("not", "know", "snow" all became "No") and mis-handled item 1004 (an off-by-one at the
generative/discriminative boundary); here the boundary is the annotation's ``type``.

Yes/no normalization is visible and separate from scoring: the generate stage stores the raw reply
(``raw_response``) and the normalized answer (``response``) under ``amber.yes_no`` — ``first-word``
(default, :func:`parse_yes_no`), ``lpoi`` (the LPOI script's substring rule, to compare with the
paper) or ``exact`` — see :func:`normalize_yes_no`. The scorer then scores ``response`` exactly as
``inference.py`` does, so on any answers file it agrees with the official scorer; a normalization
is applied at scoring time only when asked for (``score(..., yes_no=rule)``, ``stages/score.py amber
--yes-no RULE``), from ``raw_response`` when the row has one.

How the official scorer works, and the quirks reproduced here on purpose
------------------------------------------------------------------------
Quoted lines are the official logic (paraphrased where long); each quirk changes numbers, so we
keep it and say so.

Generative items (CHAIR ↓, Cover ↑, Hal ↓, Cog ↓):

1. Nouns: ``nltk.word_tokenize`` → ``nltk.pos_tag`` → tags starting with ``NN`` →
   ``WordNetLemmatizer().lemmatize(word)`` (noun lemma), **no lowercasing**. So a capitalised
   "Dog" at the start of a sentence stays "Dog", is not in the vocabulary and is silently ignored.
   (We tag with one cached ``PerceptronTagger``; ``pos_tag(tokens)`` is exactly ``tagger.tag(tokens)``.)
2. Only nouns in the vocabulary are kept: "if noun in hallucination_words", where the vocabulary is
   every key and every value of ``relation.json``. All other nouns are not counted anywhere.
3. Per item, the candidate lists are *association words first, then the annotated words*:
   ``safe_words = assoc(truth[0]) + assoc(truth[1]) + ... + truth`` (same for ``hallu`` →
   ``ha_words``). A match at position j inside the association part marks the truth word it belongs
   to ("safe_list[safe_list[j] + len(safe_list) - safe_len] = 1"); a match in the last part marks
   that position. Matching takes the **first** j. Consequences:

   * **duplicate truth words** (e.g. item 2 has "ship" twice) stay twice in the Cover denominator
     ("safe_cover_num += len(safe_list[-safe_len:])"), but only the first copy can ever be marked,
     so such an item can never reach 100 % Cover;
   * **association before identity**: if a truth word is also an association of an earlier-listed
     truth word's list, mentioning it marks the *other* word. Item 5 (truth person, sea, beach,
     child, toy; child's associations include "person"): "person" marks *child*, and "person"
     itself stays uncovered.
4. Per noun, in this order:

   a. "if noun in global_safe_words: continue" — the 9 words of ``safe_words.txt`` are never
      hallucinations and never cover anything, **but still count in the CHAIR denominator**
      ("chair_num += len(safe_flag_list)" counts every kept noun). A truth word that is a safe word
      (e.g. "sign") can therefore never be covered.
   b. "if noun in safe_words": mark the truth word, ``continue`` (not a hallucination) — also when
      the noun is *also* an annotated hallucination or its association (item 9: "ground" is both
      hallu and an association of the truth word grass → covers grass, adds nothing to Cog).
   c. "if noun in ha_words": mark the hallucination word — **no continue**: the flow goes on to
   d. the similarity loop over ``ha_words`` (first j with ``similarity > 0.8`` marks), then
   e. the similarity loop over ``safe_words``; a hit marks that truth word and ``continue``.
   f. otherwise the noun is a hallucination (``safe_flag_list[idx] = 1``), whether or not it was
      annotated as one: CHAIR counts any vocabulary noun not supported by the truth.

   Similarity is ``nlp(w1).similarity(nlp(w2)) > 0.8`` with spaCy ``en_core_web_lg``. spaCy's
   ``Doc.similarity`` returns exactly 1.0 for identical texts, so when that model is not installed
   we use the **exact** similarity (1.0 for identical words, 0.0 otherwise) and still run loops d
   and e as the official flow does (with exact similarity they cannot change the result after
   steps b/c; with spaCy they add near-synonyms). The mode is written into the metrics as
   ``similarity``: ``"spacy-lg"`` or ``"exact"``; only ``"spacy-lg"`` reproduces published numbers
   bit for bit.
5. Aggregation is over mentions (a noun said twice counts twice) and over items:
   ``CHAIR = hallucinated mentions / kept mentions``, ``Cover = covered truth words / truth words``,
   ``Cog = covered hallu words / hallu words``, ``Hal = 100 - share of responses with no
   hallucinated mention``.

Discriminative items (Accuracy, Precision, Recall, F1 ↑ — "No" is the positive class):

6. The response must be **exactly** ``"Yes"`` or ``"No"`` ("if response == 'Yes'"); anything else
   is wrong for both truths ("yes", "No.", "Maybe" and "" included). ``n_unparsed`` counts those;
   ``n_normalized`` counts the answers that differ from the raw reply (``raw_response``).
7. Precision = correct "No" answers / all "No" answers ("qa_ans_no_score / qa_ans_no_num"),
   Recall = correct "No" answers / items whose truth is "no" ("qa_no_score / qa_no_num").
   Categories: existence = ``discriminative-hallucination``; state/number/action =
   ``discriminative-attribute-*``; relation = **every other type** (the "else" branch), i.e.
   ``discriminative-relation`` and ``relation``. Attribute sums the counters of state, number and
   action. "overall" has its own counters over all discriminative items.

Numerics (all from the official ``metrics.txt`` and print block):

8. **0.001 denominators**: every ``*_num`` counter starts at 0.001 (``metrics.txt``), so
   ``CHAIR = round(score / (n + 0.001) * 100, 1)`` — slightly low, and 0.0 (not a division error)
   for an empty category. Attribute sums three counters, so its denominators carry **0.003**.
   ``Hal = round(100 - non_hallu / (n + 0.001) * 100, 1)``.
9. **Rounding order of F1**: Precision and Recall are first rounded to one decimal (percent), and F1
   is computed from the *rounded* values:
   ``F1 = round(2 * (P/100) * (R/100) / ((P/100) + (R/100) + eps) * 100, 1)``.
10. **F1 epsilon**: ``eps = 0.0001`` everywhere **except existence, which uses 0.001**.
11. All values are Python ``round(x, 1)`` of the same float expression, in the same operation order
    (``a / b * 100``), so ties round exactly as the official prints.
12. AMBER score (from the AMBER paper, not in inference.py): ``(100 - CHAIR + F1) / 2`` with the
    printed CHAIR and overall F1.

Our deviations, all about robustness and none about numbers: the annotation is looked up by its
``id`` field instead of ``ground_truth[id-1]`` (identical on the official file, where entry k has
id k+1 — checked at load time when the file is complete; it lets the mini set in
``data/sample/bench/amber`` keep only a subset at the original ids); an answer id that is unknown
or appears twice is an error naming the id (the official script would crash or count it twice);
"overall" is reported whenever discriminative answers exist (the official prints it only for
``--evaluation_type a|d``), and sections with no answers are omitted instead of printed as 0.0.
Generation error rows (a truthy ``"error"`` key, written by :mod:`lpoi.eval.generate` when an image
could not be loaded) are left out of every metric and counted in ``n_generation_errors`` and
``generation_errors`` (per reason); a file holding nothing but error rows is a ValueError.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from lpoi.config import YES_NO_RULES
from lpoi.eval.answers import check_error_ratio
from lpoi.io import atomic_write_json, read_json, read_jsonl, safe_join, write_jsonl
from lpoi.nltk_data import NLTK_RESOURCES
from lpoi.nltk_data import ensure_nltk_data as _ensure

__all__ = [
    "CATEGORIES",
    "NLTK_RESOURCES",
    "N_GENERATIVE",
    "N_ITEMS",
    "YES_NO_RULES",
    "GenerativeItem",
    "Normalized",
    "amber_score",
    "answer_row_normalizer",
    "ensure_nltk_data",
    "extract_nouns",
    "generation_items",
    "generative_item",
    "is_generative",
    "items",
    "load_annotations",
    "load_association",
    "load_queries",
    "load_safe_words",
    "normalize_answer",
    "normalize_yes_no",
    "parse_yes_no",
    "resolve_similarity",
    "SpacyModelMissing",
    "score",
    "score_file",
]

N_GENERATIVE = 1004  # ids 1..1004 are "Describe this image."
N_ITEMS = 15220  # ids 1005..15220 are yes/no questions
GENERATIVE_QUERY = "Describe this image."
NUM_INIT = 0.001  # metrics.txt: every *_num counter starts at 0.001 (quirk 8)
F1_EPS = 0.0001  # inference.py F1 denominators ...
F1_EPS_EXISTENCE = 0.001  # ... except existence (quirk 10)
SIMILARITY_THRESHOLD = 0.8  # inference.py --similarity_score default
SPACY_MODEL = "en_core_web_lg"
SIMILARITY_MODES = ("auto", "exact", "spacy-lg")
IMAGES_HELP = (
    "AMBER images are not in the repository: download the official image zip (README of "
    "https://github.com/junyangwang0410/AMBER, section 'Image Download': "
    "https://drive.google.com/file/d/1MaCHgtupcZUjf007anNl4_MV0o4DjXvl/view), unzip it so that the "
    "folder directly holds AMBER_1.jpg ... AMBER_1004.jpg, and point bench.amber.images_dir at that "
    "folder (or fetch it with `python stages/download.py amber`)."
)

# annotation type -> category (the official if/elif chain; anything else is relation, quirk 7)
_TYPE_TO_CATEGORY = {
    "discriminative-hallucination": "existence",
    "discriminative-attribute-state": "state",
    "discriminative-attribute-number": "number",
    "discriminative-attribute-action": "action",
}
CATEGORIES = ("overall", "existence", "attribute", "state", "number", "action", "relation")


# ============================================================================ ids, queries, images


def is_generative(id: int) -> bool:
    """True for ids 1..1004 ("Describe this image."), False for 1005..15220; other ids are an error."""
    if isinstance(id, bool) or not isinstance(id, int) or not 1 <= id <= N_ITEMS:
        raise ValueError(f"AMBER id must be an int in 1..{N_ITEMS}, got {id!r}")
    return id <= N_GENERATIVE


def load_queries(data_dir: str | os.PathLike) -> list[dict]:
    """``query/query_all.json``: ``[{"id", "image", "query"}, ...]`` checked for shape and unique ids."""
    path = Path(data_dir) / "query" / "query_all.json"
    rows = read_json(path)
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of queries")
    seen: set[int] = set()
    for k, q in enumerate(rows):
        if not isinstance(q, dict) or not all(isinstance(q.get(f), str) for f in ("image", "query")):
            raise ValueError(f"{path}: entry {k} must have string 'image' and 'query' fields, got {q!r}")
        is_generative(q.get("id"))  # validates the id
        if q["id"] in seen:
            raise ValueError(f"{path}: id {q['id']} appears twice")
        seen.add(q["id"])
    return rows


def items(
    data_dir: str | os.PathLike,
    images_dir: str | os.PathLike,
    limit: int | None = None,
    ids: Iterable[int] | None = None,
) -> list[dict]:
    """The generation work list: ``[{"id", "image", "question", "task"}, ...]`` in query-file order.

    ``image`` is an absolute path confined to ``images_dir``; ``task`` is ``"generative"`` or
    ``"discriminative"``. ``ids`` restricts to those ids (unknown ids are an error), ``limit`` keeps
    the first N after that. Every selected image is checked up front, so a missing image fails before
    hours of generation, with instructions where to get the official zip.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
    queries = load_queries(data_dir)
    if ids is not None:
        wanted = set(ids)
        unknown = sorted(wanted - {q["id"] for q in queries})
        if unknown:
            raise ValueError(f"ids not in {Path(data_dir) / 'query' / 'query_all.json'}: {unknown[:10]}")
        queries = [q for q in queries if q["id"] in wanted]
    if limit is not None:
        queries = queries[:limit]
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"AMBER images folder not found: {images_dir}. {IMAGES_HELP}")
    out, missing = [], []
    for q in queries:
        path = safe_join(images_dir, q["image"])
        if not path.is_file():
            missing.append(q["image"])
        out.append(
            {
                "id": q["id"],
                "image": str(path),
                "question": q["query"],
                "task": "generative" if is_generative(q["id"]) else "discriminative",
            }
        )
    if missing:
        uniq = sorted(set(missing), key=missing.index)
        raise FileNotFoundError(
            f"{len(uniq)} AMBER image(s) missing from {images_dir}, e.g. {uniq[:5]}. {IMAGES_HELP}"
        )
    return out


def generation_items(
    data_dir: str | os.PathLike,
    images_dir: str | os.PathLike,
    limit: int | None = None,
    ids: Iterable[int] | None = None,
    rule: str | None = None,
) -> list[dict]:
    """:func:`items` ready for :func:`lpoi.eval.generate.generate_answers`: each item also carries
    ``"yes_no"``, True for the discriminative ids (answered yes/no), False for the descriptions.
    ``rule="paper"`` flags item 1004 too, as the official script did (:data:`PAPER_FIRST_YES_NO_ID`)."""
    first = PAPER_FIRST_YES_NO_ID if rule == "paper" else None
    return [{**it, "yes_no": not is_generative(it["id"]) or (first is not None and it["id"] >= first)}
            for it in items(data_dir, images_dir, limit=limit, ids=ids)]


# ============================================================================ yes / no

_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def parse_yes_no(text: str) -> str | None:
    """The first whole word "yes" or "no" (any case) → ``"Yes"``/``"No"``; ``None`` when there is none.

    Word boundaries are what the official LPOI script lacked: "not", "know", "snow", "nothing",
    "none", "nobody", "cannot" and "eyes" contain no yes/no *word*. Punctuation and markdown around
    the word are fine ("**Yes**", "No.", "yes,").
    """
    if not isinstance(text, str):
        raise TypeError(f"response must be a string, got {type(text).__name__}")
    m = _YES_NO.search(text)
    if m is None:
        return None
    return "Yes" if m.group(1).lower() == "yes" else "No"


_LPOI_NO, _LPOI_YES = ("NO", "No", "no"), ("YES", "Yes", "yes")


def normalize_yes_no(reply: str, rule: str = "first-word") -> str:
    """The answer to store for a yes/no reply under ``amber.yes_no`` = ``rule``.

    * ``first-word`` (default): the first whole word "yes"/"no" in any case (:func:`parse_yes_no`)
      → ``"Yes"``/``"No"``; a reply without one is kept as is (the official scorer counts it wrong).
    * ``lpoi``: the official LPOI script's rule, for comparing with the paper: "No" if the reply
      *contains* ``NO``/``No``/``no`` anywhere ("not", "know", "snow" included), else "Yes" if it
      contains ``YES``/``Yes``/``yes`` ("eyes" included), else kept as is.
    * ``paper``: the same substring rule, meant for the text the official script decoded -- the whole
      sequence, prompt included (generate-idefics-lpoi-amber.py: ``batch_decode(generated_ids,
      skip_special_tokens=True)[0]``); :func:`answer_row_normalizer` feeds it the row's ``decoded_full``.
    * ``exact``: kept as is — only the exact strings "Yes"/"No" count, like ``inference.py``.
    """
    if rule not in YES_NO_RULES:
        raise ValueError(f"amber.yes_no must be one of {YES_NO_RULES}, got {rule!r}")
    if not isinstance(reply, str):
        raise TypeError(f"a yes/no reply must be a string, got {type(reply).__name__}")
    if rule == "first-word":
        return parse_yes_no(reply) or reply
    if rule in ("lpoi", "paper"):
        if any(w in reply for w in _LPOI_NO):
            return "No"
        if any(w in reply for w in _LPOI_YES):
            return "Yes"
    return reply


class Normalized(NamedTuple):
    """A stored answer: ``response`` as the scorer will see it; ``unparsed`` when it is not Yes/No."""

    response: str
    unparsed: bool


def normalize_answer(id: int, response: str, rule: str = "first-word") -> Normalized:
    """What the generate stage stores as ``response`` for item ``id`` under ``amber.yes_no`` = ``rule``.

    Generative items (1..1004) keep the response unchanged; discriminative ones go through
    :func:`normalize_yes_no`. The official LPOI script applied its rule from id 1004 on (an
    off-by-one: 1004 is a description); here the boundary is the item type, so 1004 is untouched.
    ``unparsed``: the stored answer is not exactly "Yes"/"No", so the scorer counts it wrong.
    """
    if not isinstance(response, str):
        raise TypeError(f"AMBER id {id}: response must be a string, got {type(response).__name__}")
    if is_generative(id):
        if rule not in YES_NO_RULES:
            raise ValueError(f"amber.yes_no must be one of {YES_NO_RULES}, got {rule!r}")
        return Normalized(response, False)
    answer = normalize_yes_no(response, rule)
    return Normalized(answer, answer not in ("Yes", "No"))


def answer_row_normalizer(rule: str) -> Callable[[dict], None]:
    """For :func:`lpoi.eval.generate.generate_answers`: store a generated yes/no reply as
    ``raw_response`` and its normalized answer as ``response`` (the field ``inference.py`` reads), so
    the answers file scores the same with our scorer and with the official one."""
    normalize_yes_no("Yes", rule)  # validates the rule before hours of generation

    def normalize(row: dict) -> None:
        if row.get("error") or "response" not in row:
            return
        row["raw_response"] = row["response"]
        row["response"] = normalize_yes_no(_rule_text(row, rule), rule)

    return normalize


PAPER_FIRST_YES_NO_ID = 1004
"""generate-idefics-lpoi-amber.py applies its rule to ``int(entry['id']) >= 1004`` -- item 1004 (a
description) included; ``amber.yes_no: paper`` keeps that boundary (:func:`generation_items`)."""


def _rule_text(row: dict, rule: str) -> str:
    """The text a rule reads: the reply, or for ``paper`` the decoded full sequence (prompt included)."""
    if rule != "paper":
        return row["response"]
    text = row.get("decoded_full")
    if not isinstance(text, str):
        raise ValueError(f"AMBER id {row.get('id')!r}: amber.yes_no 'paper' reads the decoded full sequence, but "
                         "the row has no 'decoded_full' string (generate the answers with amber.yes_no: paper)")
    return text


# ============================================================================ official data files


def load_annotations(data_dir: str | os.PathLike) -> dict[int, dict]:
    """``annotations.json`` keyed by each entry's ``id``.

    The official scorer indexes ``ground_truth[id - 1]``; on the complete file entry k has id k + 1
    (checked here), so a lookup by id is the same thing and also works for a subset (the mini set).
    """
    path = Path(data_dir) / "annotations.json"
    rows = read_json(path)
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list")
    by_id: dict[int, dict] = {}
    for k, a in enumerate(rows):
        if not isinstance(a, dict) or not isinstance(a.get("type"), str):
            raise ValueError(f"{path}: entry {k} has no string 'type': {a!r}")
        try:
            is_generative(a.get("id"))
        except ValueError as e:
            raise ValueError(f"{path}: entry {k}: {e}") from None
        if a["id"] in by_id:
            raise ValueError(f"{path}: id {a['id']} appears twice")
        if a["type"] == "generative":
            for f in ("truth", "hallu"):
                if not isinstance(a.get(f), list) or not all(isinstance(w, str) for w in a[f]):
                    raise ValueError(f"{path}: id {a['id']}: '{f}' must be a list of strings")
        elif a.get("truth") not in ("yes", "no"):
            raise ValueError(
                f"{path}: id {a['id']}: discriminative 'truth' must be 'yes' or 'no', got {a.get('truth')!r}"
            )
        by_id[a["id"]] = a
    if len(rows) == N_ITEMS and any(a["id"] != k + 1 for k, a in enumerate(rows)):
        raise ValueError(
            f"{path}: the complete file must list ids 1..{N_ITEMS} in order (official id-1 indexing)"
        )
    return by_id


def load_association(data_dir: str | os.PathLike) -> dict[str, list[str]]:
    """``relation.json``: word → associated words (the official ``--word_association``)."""
    path = Path(data_dir) / "relation.json"
    rel = read_json(path)
    if not isinstance(rel, dict) or not all(
        isinstance(v, list) and all(isinstance(w, str) for w in v) for v in rel.values()
    ):
        raise ValueError(f"{path}: expected an object mapping words to lists of words")
    return rel


def load_safe_words(data_dir: str | os.PathLike) -> list[str]:
    """``safe_words.txt``, one word a line, read as the official does (text mode, cut at the newline)."""
    path = Path(data_dir) / "safe_words.txt"
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    with open(path, encoding="utf-8") as f:
        return [line.split("\n")[0] for line in f]


# ============================================================================ NLTK


def ensure_nltk_data(
    download: bool = True, *, index_url: str | None = None, download_dir: str | os.PathLike | None = None
) -> None:
    """Make sure punkt_tab, averaged_perceptron_tagger_eng and wordnet are findable by NLTK, downloading
    the missing ones when ``download`` (see :func:`lpoi.nltk_data.ensure_nltk_data`)."""
    _ensure(NLTK_RESOURCES, purpose="the AMBER scorer", download=download, index_url=index_url,
            download_dir=download_dir)


@functools.lru_cache(maxsize=1)
def _noun_tools() -> tuple[Callable[[str], list[str]], Any, Any]:
    import nltk
    from nltk.stem import WordNetLemmatizer
    from nltk.tag.perceptron import PerceptronTagger

    # nltk.pos_tag(tokens) builds a new PerceptronTagger per call and returns tagger.tag(tokens);
    # one cached tagger gives identical tags, ~100x faster.
    return nltk.word_tokenize, PerceptronTagger(), WordNetLemmatizer()


def extract_nouns(text: str) -> list[str]:
    """Official ``extract_nouns``: tokens tagged NN* → WordNet noun lemma, case kept, in order."""
    tokenize, tagger, lemmatizer = _noun_tools()
    return [lemmatizer.lemmatize(word) for word, pos in tagger.tag(tokenize(text)) if pos.startswith("NN")]


# ============================================================================ similarity


def _exact_similarity(word1: str, word2: str) -> float:
    """spaCy's ``Doc.similarity`` on identical texts is exactly 1.0; without the vectors, that is all."""
    return 1.0 if word1 == word2 else 0.0


def _spacy_similarity() -> Callable[[str, str], float]:
    import spacy  # optional: pip install spacy && python -m spacy download en_core_web_lg

    nlp = spacy.load(SPACY_MODEL)
    doc = functools.lru_cache(maxsize=None)(nlp)  # nlp(word) is deterministic: parse each word once

    def similarity(word1: str, word2: str) -> float:
        with warnings.catch_warnings():  # the official filters UserWarning (spaCy W007/W008)
            warnings.simplefilter("ignore", UserWarning)
            return doc(word1).similarity(doc(word2))

    return similarity


def resolve_similarity(
    similarity: str = "auto", load: bool = True
) -> tuple[str, Callable[[str, str], float] | None]:
    """``"auto"`` → spaCy ``en_core_web_lg`` when importable, else exact; returns (mode, function).

    ``load=False`` only decides the mode (no vectors loaded) and returns ``(mode, None)``.
    """
    if similarity not in SIMILARITY_MODES:
        raise ValueError(f"amber similarity must be one of {SIMILARITY_MODES}, got {similarity!r}")
    if similarity == "exact":
        return "exact", _exact_similarity
    try:
        if not load:
            if not _spacy_model_installed():
                raise ImportError(f"spaCy or its {SPACY_MODEL} package is not installed")
            return "spacy-lg", None
        return "spacy-lg", _spacy_similarity()
    except (ImportError, OSError) as e:  # spaCy absent, or the model package not installed
        if similarity == "spacy-lg":
            raise SpacyModelMissing(
                f"amber.similarity 'spacy-lg' (AMBER's inference.py) needs spaCy and its {SPACY_MODEL} model, "
                f"not available here ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): "
                f"`pip install spacy && python -m spacy download {SPACY_MODEL}`, or set amber.similarity: auto "
                "(exact matching, said in the metrics and the report)"
            ) from None
        print(
            f"lpoi: spaCy {SPACY_MODEL} not available ({type(e).__name__}); AMBER uses exact word matching "
            "(similarity='exact' in the metrics)",
            file=sys.stderr,
        )
        return "exact", _exact_similarity


class SpacyModelMissing(ValueError):
    """``amber.similarity: spacy-lg`` without spaCy's en_core_web_lg: never a silent fallback (a ValueError, so
    the score stage ends with this one line)."""


def _spacy_model_installed() -> bool:
    import importlib.util

    try:
        return (
            importlib.util.find_spec("spacy") is not None
            and importlib.util.find_spec(SPACY_MODEL) is not None
        )
    except (ImportError, ValueError):
        return False


# ============================================================================ generative scoring


@dataclass
class GenerativeItem:
    """One generative response, scored: what the official keeps per item before summing."""

    nouns: list[str]  # vocabulary nouns in order ("after_process_nouns")
    hallucinated: list[int]  # 1 per hallucinated mention ("safe_flag_list")
    truth_covered: list[int]  # 1 per covered truth word, duplicates included ("safe_list[-safe_len:]")
    hallu_covered: list[int]  # 1 per mentioned hallu word ("ha_list[-ha_len:]")


class _Marks:
    """Association words first, then the annotated words; a hit marks the annotated word (quirk 3)."""

    def __init__(self, words: Sequence[str], association: dict[str, list[str]], item_id: int):
        self.candidates: list[str] = []
        self.owner: list[int] = []  # for association entries: index of the annotated word
        for idx, word in enumerate(words):
            if word not in association:
                raise ValueError(f"AMBER id {item_id}: annotated word {word!r} is not a key of relation.json")
            self.candidates += association[word]
            self.owner += [idx] * len(association[word])
        self.n_assoc = len(self.candidates)
        self.candidates += list(words)
        self.flags = [0] * len(words)

    def mark(self, j: int) -> None:
        self.flags[self.owner[j] if j < self.n_assoc else j - self.n_assoc] = 1

    def first_similar(self, noun: str, similar: Callable[[str, str], bool]) -> int | None:
        return next((j for j, w in enumerate(self.candidates) if similar(noun, w)), None)


def generative_item(
    response: str,
    truth: Sequence[str],
    hallu: Sequence[str],
    *,
    association: dict[str, list[str]],
    global_safe_words: Sequence[str],
    similarity: Callable[[str, str], float] = _exact_similarity,
    threshold: float = SIMILARITY_THRESHOLD,
    vocabulary: set[str] | None = None,
    item_id: int = 0,
) -> GenerativeItem:
    """Score one "Describe this image." response against its truth/hallu words (quirks 1-4)."""
    if vocabulary is None:
        vocabulary = _vocabulary(association)
    nouns = [n for n in extract_nouns(response) if n in vocabulary]
    safe = _Marks(truth, association, item_id)
    ha = _Marks(hallu, association, item_id)
    hallucinated = [0] * len(nouns)

    def similar(a: str, b: str) -> bool:
        return similarity(a, b) > threshold

    for idx, noun in enumerate(nouns):
        if noun in global_safe_words:  # 4a: counted in CHAIR's denominator only
            continue
        if noun in safe.candidates:  # 4b: first exact hit, supported by the truth
            safe.mark(safe.candidates.index(noun))
            continue
        if noun in ha.candidates:  # 4c: no `continue` in the official flow
            ha.mark(ha.candidates.index(noun))
        j = ha.first_similar(noun, similar)  # 4d
        if j is not None:
            ha.mark(j)
        j = safe.first_similar(noun, similar)  # 4e
        if j is not None:
            safe.mark(j)
            continue
        hallucinated[idx] = 1  # 4f
    return GenerativeItem(nouns, hallucinated, safe.flags, ha.flags)


def _vocabulary(association: dict[str, list[str]]) -> set[str]:
    """Keys and values of relation.json (the official ``hallucination_words``; a set, same membership)."""
    return set(association) | {w for words in association.values() for w in words}


# ============================================================================ discriminative scoring


@dataclass
class _Tally:
    """The official counters of one category; every ``*_num`` starts at 0.001 (quirk 8)."""

    correct: float = 0  # qa_correct_score
    n: float = NUM_INIT  # qa_correct_num
    truth_no_correct: float = 0  # qa_no_score: truth "no" answered "No"
    truth_no: float = NUM_INIT  # qa_no_num
    said_no_correct: float = 0  # qa_ans_no_score
    said_no: float = NUM_INIT  # qa_ans_no_num
    items: int = 0  # real count, to omit empty sections (not an official counter)

    def add(self, truth: str, response: str) -> None:
        self.items += 1
        self.n += 1
        if truth == "yes":  # official: `if truth == 'yes' ... else` (anything else is a "no")
            self.correct += response == "Yes"
        else:
            self.truth_no += 1
            if response == "No":
                self.correct += 1
                self.truth_no_correct += 1
        if response == "No":
            self.said_no += 1
            self.said_no_correct += truth == "no"

    def __add__(self, other: _Tally) -> _Tally:  # attribute = state + number + action (0.003 init)
        return _Tally(*(getattr(self, f) + getattr(other, f) for f in _Tally.__dataclass_fields__))


def _pct(score: float, num: float) -> float:
    return round(score / num * 100, 1)


def _f1(precision: float, recall: float, eps: float) -> float:
    """F1 from the *rounded* percentages, as printed (quirk 9)."""
    return round(2 * (precision / 100) * (recall / 100) / ((precision / 100) + (recall / 100) + eps) * 100, 1)


def _prf(t: _Tally, eps: float) -> dict[str, float]:
    precision = _pct(t.said_no_correct, t.said_no)
    recall = _pct(t.truth_no_correct, t.truth_no)
    return {
        "Accuracy": _pct(t.correct, t.n),
        "Precision": precision,
        "Recall": recall,
        "F1": _f1(precision, recall, eps),
    }


def amber_score(chair: float, f1: float) -> float:
    """AMBER score = (100 − CHAIR + F1) / 2, from the printed (rounded) values."""
    return round((100 - chair + f1) / 2, 2)


# ============================================================================ the scorer


@dataclass
class _Generative:
    chair_score: float = 0
    chair_num: float = NUM_INIT
    cover_score: float = 0
    cover_num: float = NUM_INIT
    cog_score: float = 0
    cog_num: float = NUM_INIT
    non_hallu: float = 0
    responses: float = NUM_INIT
    items: int = 0

    def add(self, r: GenerativeItem) -> None:
        self.items += 1
        self.chair_score += sum(r.hallucinated)
        self.chair_num += len(r.hallucinated)
        self.cover_score += sum(r.truth_covered)
        self.cover_num += len(r.truth_covered)
        self.cog_score += sum(r.hallu_covered)
        self.cog_num += len(r.hallu_covered)
        self.non_hallu += sum(r.hallucinated) == 0
        self.responses += 1

    def metrics(self) -> dict[str, float]:
        return {
            "CHAIR": _pct(self.chair_score, self.chair_num),
            "Cover": _pct(self.cover_score, self.cover_num),
            "Hal": round(100 - self.non_hallu / self.responses * 100, 1),
            "Cog": _pct(self.cog_score, self.cog_num),
        }


def score(
    answers: Iterable[dict],
    data_dir: str | os.PathLike,
    similarity: str = "auto",
    *,
    threshold: float = SIMILARITY_THRESHOLD,
    download_nltk: bool = True,
    yes_no: str | None = None,
    max_error_ratio: float | None = None,
    source: str = "answers",
    details: list[dict] | None = None,
) -> dict[str, Any]:
    """Score AMBER answers ``[{"id": int, "response": str, ["raw_response": str]}, ...]`` exactly as the
    official inference.py.

    Returns the CLI contract's METRICS: ``generative`` {CHAIR, Cover, Hal, Cog}, ``discriminative``
    {overall, existence, attribute, state, number, action, relation: {Accuracy, Precision, Recall,
    F1}}, ``amber_score``, ``similarity`` ("spacy-lg" | "exact"), ``yes_no`` (the rule applied here,
    ``None``: the stored answers as they are), ``n_unparsed`` (discriminative answers that are not
    exactly "Yes"/"No", so wrong), ``n_normalized`` (answers that differ from the row's raw reply),
    ``n_generative``, ``n_discriminative``, ``n_generation_errors`` and ``generation_errors``
    ({reason: count}). Values are in percent rounded to one decimal as the official prints them.
    Sections and categories that no answer covers are left out; ``amber_score`` needs both CHAIR and
    overall F1.

    ``yes_no=None`` (default) scores each ``response`` exactly as stored — the official behaviour,
    so "yes", "No." and "" are wrong answers. A rule (:data:`YES_NO_RULES`) first normalizes the
    discriminative replies (``raw_response`` when present, else ``response``) with
    :func:`normalize_yes_no`.

    Rows with a truthy ``"error"`` (generation could not use the image, see
    :mod:`lpoi.eval.generate`) are not answers: their empty response would look like a perfect
    description or count as a wrong yes/no, so they are left out of every metric and only counted
    (their id is still checked and may not appear twice). If every row is one, there is nothing to
    score: ValueError naming the source and the reasons; above ``max_error_ratio`` of the rows,
    :class:`~lpoi.eval.answers.ErrorRatioExceeded` (``None``: no bound).

    ``details`` (a list) receives one row per scored item (descriptions first, then yes/no items, each in
    answer order): generative
    ``{"id", "nouns", "hallucinated", "truth_covered", "hallu_covered"}`` (vocabulary nouns, the
    hallucinated ones, covered truth / hallucination words); yes/no ``{"id", "truth", "answer",
    "correct"}``.
    """
    if similarity not in SIMILARITY_MODES:
        raise ValueError(f"amber similarity must be one of {SIMILARITY_MODES}, got {similarity!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"amber similarity threshold must be a number in [0, 1], got {threshold!r}")
    if yes_no is not None:
        normalize_yes_no("Yes", yes_no)  # validates the rule
    data_dir = Path(data_dir)
    annotations = load_annotations(data_dir)
    rows, generation_errors = _check_answers(answers, annotations, data_dir, source)
    if generation_errors and not rows:
        raise ValueError(
            f"{source}: all {sum(generation_errors.values())} answer rows are generation errors "
            f"({dict(generation_errors)}), nothing to score; fix the images and regenerate "
            "(generate with retry_errors=True retries those items)"
        )
    check_error_ratio(source, len(rows) + sum(generation_errors.values()), max_error_ratio,
                      generation=generation_errors)
    generative = [(a, annotations[a["id"]]) for a in rows if annotations[a["id"]]["type"] == "generative"]
    discriminative = [(a, annotations[a["id"]]) for a in rows if annotations[a["id"]]["type"] != "generative"]

    out: dict[str, Any] = {}
    mode, gen = _score_generative(generative, data_dir, similarity, threshold, download_nltk, details)
    if gen.items:
        out["generative"] = gen.metrics()
    tallies, n_unparsed, n_normalized = _score_discriminative(discriminative, yes_no, details)
    if discriminative:
        out["discriminative"] = {
            c: _prf(tallies[c], F1_EPS_EXISTENCE if c == "existence" else F1_EPS)
            for c in CATEGORIES
            if tallies[c].items
        }
    if "generative" in out and "discriminative" in out:
        out["amber_score"] = amber_score(out["generative"]["CHAIR"], out["discriminative"]["overall"]["F1"])
    out["similarity"] = mode
    out["yes_no"] = yes_no
    out["n_unparsed"] = n_unparsed
    out["n_normalized"] = n_normalized
    out["n_generative"] = len(generative)
    out["n_discriminative"] = len(discriminative)
    out["n_generation_errors"] = sum(generation_errors.values())
    out["generation_errors"] = dict(generation_errors)
    return out


def _score_generative(rows, data_dir: Path, similarity: str, threshold: float, download_nltk: bool,
                      details: list[dict] | None):
    gen = _Generative()
    if not rows:  # nothing to compare: report the mode that would be used, without loading spaCy's vectors
        return resolve_similarity(similarity, load=False)[0], gen
    ensure_nltk_data(download=download_nltk)
    mode, sim = resolve_similarity(similarity)
    association = load_association(data_dir)
    safe_words = load_safe_words(data_dir)
    vocabulary = _vocabulary(association)
    for a, ann in rows:
        item = generative_item(a["response"], ann["truth"], ann["hallu"], association=association,
                               global_safe_words=safe_words, similarity=sim, threshold=threshold,
                               vocabulary=vocabulary, item_id=a["id"])
        gen.add(item)
        if details is not None:
            details.append({"id": a["id"], "nouns": item.nouns,
                            "hallucinated": [n for n, h in zip(item.nouns, item.hallucinated) if h],
                            "truth_covered": [w for w, c in zip(ann["truth"], item.truth_covered) if c],
                            "hallu_covered": [w for w, c in zip(ann["hallu"], item.hallu_covered) if c]})
    return mode, gen


def _score_discriminative(rows, yes_no: str | None, details: list[dict] | None) -> tuple[dict[str, _Tally], int, int]:
    """The official counters per category, plus (unparsed, normalized) counts."""
    tallies = {c: _Tally() for c in ("overall", "existence", "state", "number", "action", "relation")}
    n_unparsed = n_normalized = 0
    for a, ann in rows:
        raw = a["raw_response"] if isinstance(a.get("raw_response"), str) else a["response"]
        text = _rule_text(a, "paper") if yes_no == "paper" else raw
        response = a["response"] if yes_no is None else normalize_yes_no(text, yes_no)
        n_unparsed += response not in ("Yes", "No")
        n_normalized += response != raw
        tallies["overall"].add(ann["truth"], response)
        if details is not None:
            details.append({"id": a["id"], "truth": ann["truth"], "answer": response,
                            "correct": response == ("Yes" if ann["truth"] == "yes" else "No")})
        tallies[_TYPE_TO_CATEGORY.get(ann["type"], "relation")].add(ann["truth"], response)
    tallies["attribute"] = tallies["state"] + tallies["number"] + tallies["action"]
    return tallies, n_unparsed, n_normalized


def _check_answers(
    answers: Iterable[dict], annotations: dict[int, dict], data_dir: Path, source: str
) -> tuple[list[dict], Counter]:
    """Validate answer rows; every error names the record and the id.

    Returns the rows to score and the generation error rows counted per reason (those are left out).
    """
    rows, seen, generation_errors = [], set(), Counter()
    for k, a in enumerate(answers, 1):
        where = f"{source}: record {k}"
        if not isinstance(a, dict):
            raise ValueError(f"{where}: expected an object with 'id' and 'response', got {a!r}")
        i, response = a.get("id"), a.get("response")
        error = a.get("error")
        if isinstance(i, bool) or not isinstance(i, int):
            raise ValueError(f"{where}: 'id' must be an int AMBER id, got {i!r}")
        if not error and not isinstance(response, str):
            raise ValueError(f"{where} (id {i}): 'response' must be a string, got {type(response).__name__}")
        if i not in annotations:
            raise ValueError(f"{where}: id {i} is not in {data_dir / 'annotations.json'}")
        if i in seen:
            raise ValueError(f"{where}: id {i} appears twice (the official scorer would count it twice)")
        seen.add(i)
        if error:  # no answer was generated (image unusable): count it, never score its empty response
            generation_errors[error if isinstance(error, str) else repr(error)] += 1
            continue
        raw = a.get("raw_response")
        if raw is not None and not isinstance(raw, str):
            raise ValueError(f"{where} (id {i}): 'raw_response' must be a string, got {type(raw).__name__}")
        rows.append({"id": i, "response": response, "raw_response": raw, "decoded_full": a.get("decoded_full")})
    return rows, generation_errors


def score_file(
    answers_path: str | os.PathLike,
    data_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    labels: dict[str, Any] | None = None,
    details_path: str | os.PathLike | None = None,
    **options: Any,
) -> dict[str, Any]:
    """``stages/score.py amber``: read ANSWERS.jsonl, :func:`score` it (``options``: its keyword
    arguments), add ``labels`` (e.g. ``{"random_model": True}``), write METRICS.json atomically, and
    the per-item rows to ``details_path`` (JSONL) when given."""
    answers_path = Path(answers_path)
    details: list[dict] | None = [] if details_path is not None else None
    metrics = score(read_jsonl(answers_path), data_dir, source=str(answers_path), details=details, **options)
    metrics.update(labels or {})
    if details_path is not None:
        write_jsonl(details_path, details)
    atomic_write_json(out_path, metrics)
    return metrics
