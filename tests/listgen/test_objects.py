"""Critical-object candidates on crafted sentences: source order, noun phrases, lemmas, stop words, dedupe."""

from __future__ import annotations

import os

import pytest
import shared_data

_SHARED_NLTK = str(shared_data.SHARED / "nltk_data")
os.environ.setdefault("NLTK_DATA", _SHARED_NLTK)
import nltk  # after NLTK_DATA is set: nltk reads it on import

if _SHARED_NLTK not in nltk.data.path and os.path.isdir(_SHARED_NLTK):  # imported earlier elsewhere
    nltk.data.path.append(_SHARED_NLTK)

from lpoi.listgen import objects
from lpoi.listgen.objects import (
    COCO_CLASSES,
    NltkDataMissing,
    ensure_nltk,
    extract_candidates,
    noun_phrases,
    open_vocab_prompt,
    pick_random_detection,
)


def _triples(cands):
    return [(c["phrase"], c["lemma"], c["source"]) for c in cands]


def test_source_order_first_sentence_then_question_then_rest():
    """The question names the umbrella, the chosen answer's first sentence the dog, its second the bench:
    the paper's order puts the dog first, the umbrella second, the bench last — whatever the text order."""
    got = extract_candidates(
        question="Is the umbrella open?",
        chosen="A small dog sits under it. Behind them stands a wooden bench.",
    )
    assert _triples(got) == [
        ("small dog", "dog", "chosen_first"),
        ("umbrella", "umbrella", "question"),
        ("wooden bench", "bench", "chosen_rest"),
    ]


def test_noun_phrases_compounds_and_plural_lemmas():
    got = noun_phrases("Two red cars are parked next to a fire hydrant and three bicycles.")
    assert got == [("red car", "car"), ("fire hydrant", "hydrant"), ("bicycle", "bicycle")]


def test_stop_words_and_abstract_nouns_dropped():
    """'image', 'background', 'side', 'color', 'left' are stop words; 'happiness' and 'idea' are abstract
    (no WordNet sense under physical_entity); 'several' is a quantity adjective."""
    got = extract_candidates(
        question="What color is the cat on the left side of the image?",
        chosen="The image conveys happiness. In the background, several people walk past a tall tree. "
        "The idea is simple.",
    )
    lemmas = [c["lemma"] for c in got]
    assert lemmas == ["cat", "people", "tree"]
    assert [c["phrase"] for c in got] == ["cat", "people", "tall tree"]
    for word in ("image", "background", "side", "color", "left", "happiness", "idea", "several"):
        assert all(word not in c["phrase"].split() for c in got)


def test_dedupe_keeps_first_occurrence_and_source():
    """'dogs' in the first sentence and 'dog' in the question are the same lemma: one candidate, from
    chosen_first (its first occurrence), with the first phrase seen."""
    got = extract_candidates(
        question="Where is the brown dog?", chosen="Two dogs play. The dog chases a ball."
    )
    assert _triples(got) == [("dog", "dog", "chosen_first"), ("ball", "ball", "chosen_rest")]


def test_image_placeholder_unknown_words_and_imperatives():
    """'<image>' tokens vanish; 'smartphone' is unknown to WordNet 3.0 and kept; an imperative
    'Describe' tagged as a noun is a verb-only word and dropped."""
    got = extract_candidates(question="<image>\nDescribe the photo.", chosen="A man holds a smartphone.")
    assert [c["lemma"] for c in got] == ["man", "smartphone"]


def test_max_candidates_and_empty_text():
    chosen = "A cat, a dog, a cow, a horse, a sheep and a goat stand in a barn."
    assert [c["lemma"] for c in extract_candidates("", chosen, max_candidates=3)] == ["cat", "dog", "cow"]
    assert extract_candidates("", "") == []
    assert extract_candidates("Is it nice?", "Yes, it is.") == []
    with pytest.raises(ValueError, match="max_candidates"):
        extract_candidates("q", "a", max_candidates=0)


def test_pick_random_detection_deterministic_and_order_free():
    dets = [
        {"label": c, "box": [i, i, i + 10, i + 10], "score": 0.5 + i / 100}
        for i, c in enumerate(COCO_CLASSES[:6])
    ]
    a = pick_random_detection(dets, seed=0, sample_id="s1")
    assert a in dets
    assert pick_random_detection(list(reversed(dets)), seed=0, sample_id="s1") == a  # input order irrelevant
    assert pick_random_detection(dets, seed=0, sample_id="s1") == a
    # different (seed, id) pairs spread over the detections (not a constant pick)
    picks = {
        pick_random_detection(dets, seed=s, sample_id=f"id{j}")["label"] for s in range(3) for j in range(20)
    }
    assert len(picks) >= 4
    assert pick_random_detection([], seed=0, sample_id="x") is None


def test_coco_classes_and_prompt():
    assert len(COCO_CLASSES) == 80 and len(set(COCO_CLASSES)) == 80
    p = open_vocab_prompt(["Cat", "fire hydrant"])
    assert p == "cat . fire hydrant ."


def test_missing_nltk_data_error(monkeypatch):
    monkeypatch.setattr(nltk.data, "path", ["/nonexistent/nltk"])
    with pytest.raises(NltkDataMissing, match=r"NLTK_DATA.*nltk\.downloader.*punkt_tab"):
        ensure_nltk()


def test_nltk_data_present():
    ensure_nltk()  # the shared offline data has all three resources
    assert set(objects.NLTK_RESOURCES) == {"punkt_tab", "averaged_perceptron_tagger_eng", "wordnet"}


def test_tagger_verb_backoff_but_not_past_stop_words():
    """'sits' mis-tagged NNS after 'dog' is cut off ('small dog' survives); a stop-listed head
    ('object', 'side') drops its whole phrase, so 'orange object' does not become the fruit 'orange'."""
    assert noun_phrases("A small dog sits under it.") == [("small dog", "dog")]
    assert noun_phrases("What is the orange object on the left side?") == []
