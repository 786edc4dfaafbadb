"""AMBER: yes/no parsing, the work list, the mini set, and the scorer against hand-derived values.

Expected numbers are worked out by hand in each docstring from the official rules (see the module
docstring of lpoi.eval.benchmarks.amber): every ``*_num`` counter starts at 0.001, percentages are
``round(score / num * 100, 1)``, F1 is computed from the *rounded* P and R, with +0.0001 in its
denominator (+0.001 for existence). Generative cases use real annotation ids from the official files
in ../shared/benchmarks/amber.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import shared_data

REPO = Path(__file__).resolve().parents[2]
SHARED = shared_data.SHARED
OFFICIAL = SHARED / "benchmarks" / "amber"
MINI = REPO / "data" / "sample" / "bench" / "amber"
os.environ.setdefault("NLTK_DATA", str(SHARED / "nltk_data"))

import nltk  # noqa: E402  (after NLTK_DATA is set: nltk reads it at import)

from lpoi.eval.benchmarks import amber  # noqa: E402
from lpoi.io import load_image  # noqa: E402

if os.environ["NLTK_DATA"] not in nltk.data.path:  # nltk imported earlier by another test module
    nltk.data.path.insert(0, os.environ["NLTK_DATA"])


@pytest.fixture(scope="module")
def official() -> Path:
    shared_data.shared_file("benchmarks", "amber", "annotations.json")  # skips, naming ../shared, without it
    return OFFICIAL


@pytest.fixture(scope="module")
def data(official):
    """What generative_item needs, loaded once."""
    return {
        "ann": amber.load_annotations(official),
        "association": amber.load_association(official),
        "safe": amber.load_safe_words(official),
    }


def run_item(data, item_id: int, text: str, similarity=amber._exact_similarity) -> amber.GenerativeItem:
    a = data["ann"][item_id]
    return amber.generative_item(
        text,
        a["truth"],
        a["hallu"],
        association=data["association"],
        global_safe_words=data["safe"],
        similarity=similarity,
        item_id=item_id,
    )


# ============================================================================ yes / no parsing

YES_NO_TABLE = [
    ("Yes", "Yes"),
    ("No", "No"),
    ("yes", "Yes"),
    ("NO.", "No"),
    ("Yes.", "Yes"),
    ("yes, there is a dog", "Yes"),
    ("**Yes**", "Yes"),
    ("No, there is no dog.", "No"),
    ("There is no dog in this image.", "No"),
    ("Answer: yes", "Yes"),
    ("\n\nNo\n", "No"),
    ("(yes)", "Yes"),
    ("'No'", "No"),
    ("Yes/No", "Yes"),
    ("Yes!No", "Yes"),
    ("It is not there, so no.", "No"),
    ("Knowing the answer: NO", "No"),
    ("Noah's ark, yes", "Yes"),
    ("not sure", None),
    ("NOT", None),
    ("I don't know", None),
    ("The snow is white", None),
    ("nothing", None),
    ("None of them", None),
    ("Nobody is there", None),
    ("I cannot tell", None),
    ("Her eyes are blue", None),
    ("Yesterday it rained", None),
    ("Nope", None),
    ("Yeah", None),
    ("The casino is closed", None),
    ("mono", None),
    ("", None),
]


@pytest.mark.parametrize(("text", "expected"), YES_NO_TABLE)
def test_parse_yes_no_table(text, expected):
    """First whole word yes/no, any case; words that merely contain "no"/"yes" do not count."""
    assert amber.parse_yes_no(text) == expected


def test_parse_yes_no_table_is_large_enough_and_rejects_non_strings():
    assert len(YES_NO_TABLE) >= 20
    with pytest.raises(TypeError, match="string"):
        amber.parse_yes_no(None)


def test_is_generative_boundary():
    """1..1004 generative, 1005..15220 discriminative (the LPOI script's off-by-one was at 1004/1005)."""
    assert amber.is_generative(1) and amber.is_generative(1004)
    assert not amber.is_generative(1005) and not amber.is_generative(15220)
    for bad in (0, 15221, -3, True, "5", 5.0):
        with pytest.raises(ValueError, match="AMBER id"):
            amber.is_generative(bad)


def test_normalize_answer():
    """Discriminative → exactly Yes/No or kept as is and flagged; generative (1004 included) untouched."""
    assert amber.normalize_answer(1005, "Yes, the sky is sunny.") == ("Yes", False)
    assert amber.normalize_answer(8633, "There is no cloud.", "first-word") == ("No", False)
    assert amber.normalize_answer(8633, "I cannot know", "first-word") == ("I cannot know", True)
    assert amber.normalize_answer(8633, "I cannot know", "lpoi") == ("No", False)  # "know" contains "no"
    assert amber.normalize_answer(1005, "yes", "exact") == ("yes", True)
    assert amber.normalize_answer(1004, "No man is here.", "lpoi") == ("No man is here.", False)
    assert amber.normalize_answer(1, "", "first-word") == ("", False)
    with pytest.raises(ValueError, match="amber.yes_no"):
        amber.normalize_answer(1005, "Yes", "substring")
    with pytest.raises(ValueError, match="amber.yes_no"):
        amber.normalize_answer(1, "A dog.", "generate")
    with pytest.raises(TypeError, match="id 1005"):
        amber.normalize_answer(1005, None, "first-word")


# reply -> (first-word, lpoi, exact); lpoi = the LPOI script: "No" if "NO"/"No"/"no" is a substring,
# else "Yes" if "YES"/"Yes"/"yes" is, else unchanged
YES_NO_RULE_TABLE = [
    ("Yes", ("Yes", "Yes", "Yes")),
    ("No", ("No", "No", "No")),
    ("yes", ("Yes", "Yes", "yes")),
    ("No.", ("No", "No", "No.")),
    ("Maybe", ("Maybe", "Maybe", "Maybe")),
    ("", ("", "", "")),
    ("Yes, I know it.", ("Yes", "No", "Yes, I know it.")),  # "know" → the LPOI rule says No
    ("There is snow.", ("There is snow.", "No", "There is snow.")),
    ("Her eyes are blue", ("Her eyes are blue", "Yes", "Her eyes are blue")),  # "eyes" → Yes
    ("YES!", ("Yes", "Yes", "YES!")),
    ("nO", ("No", "nO", "nO")),  # LPOI matches only three spellings
    ("Yes. No wait.", ("Yes", "No", "Yes. No wait.")),  # LPOI tests "no" before "yes"
]


@pytest.mark.parametrize(("reply", "expected"), YES_NO_RULE_TABLE)
def test_yes_no_rules(reply, expected):
    assert tuple(amber.normalize_yes_no(reply, rule) for rule in ("first-word", "lpoi", "exact")) == expected
    # "paper" is the same substring rule, given the decoded prompt + reply instead (tests below)
    assert amber.normalize_yes_no(reply, "paper") == expected[1]
    assert set(amber.YES_NO_RULES) == {"first-word", "lpoi", "exact", "paper"}


def test_answer_row_normalizer_keeps_the_raw_reply():
    norm = amber.answer_row_normalizer("first-word")
    row = {"id": 1005, "question": "q", "response": "Yes, it is."}
    norm(row)
    assert row == {"id": 1005, "question": "q", "response": "Yes", "raw_response": "Yes, it is."}
    err = {"id": 1006, "question": "q", "response": "", "error": "missing"}
    norm(err)
    assert "raw_response" not in err and err["response"] == ""  # error rows are not answers
    with pytest.raises(ValueError, match="amber.yes_no"):
        amber.answer_row_normalizer("first")


# ============================================================================ nouns


def test_extract_nouns_matches_the_official_pos_tag_call():
    """Our cached tagger equals the official ``nltk.pos_tag(nltk.word_tokenize(text))`` pipeline."""
    from nltk.stem import WordNetLemmatizer

    lem = WordNetLemmatizer()
    for text in ("Some people walk along the street past two trees.", "Dogs sit near a dog on the beaches."):
        official = [
            lem.lemmatize(w) for w, pos in nltk.pos_tag(nltk.word_tokenize(text)) if pos.startswith("NN")
        ]
        assert amber.extract_nouns(text) == official
    # no lowercasing: the capitalised plural is neither lowercased nor lemmatised
    assert amber.extract_nouns("Dogs sit near a dog.") == ["Dogs", "dog"]


# ============================================================================ generative, per item


def test_truth_hallu_and_safe_word(data):
    """Item 1: truth [sky, forest, grass, person, lake, mountain, road],
    hallu [cloud, sun, bird, dog, flower].

    "A person stands on the grass near a lake under a sky with a dog and a camera."
    nouns person, grass, lake, sky, dog, camera (all in the vocabulary):
    person/grass/lake/sky are truth words → covered; dog is annotated hallu → Cog + hallucinated;
    camera is a global safe word → skipped, but still one of the 6 mentions.
    """
    r = run_item(data, 1, "A person stands on the grass near a lake under a sky with a dog and a camera.")
    assert r.nouns == ["person", "grass", "lake", "sky", "dog", "camera"]
    assert r.hallucinated == [0, 0, 0, 0, 1, 0]
    assert r.truth_covered == [1, 0, 1, 1, 1, 0, 0]
    assert r.hallu_covered == [0, 0, 0, 1, 0]


def test_associations_cover_truth_words_and_unannotated_nouns_hallucinate(data):
    """Item 1: "Some people walk along the street past a tree and a car."

    people ∈ relation[person] → person covered; street ∈ relation[road] → road; tree ∈ relation[forest]
    → forest. car is a vocabulary word in neither list → hallucinated, but not in Cog.
    """
    r = run_item(data, 1, "Some people walk along the street past a tree and a car.")
    assert r.nouns == ["people", "street", "tree", "car"]
    assert r.hallucinated == [0, 0, 0, 1]
    assert r.truth_covered == [0, 1, 0, 1, 0, 0, 1]  # forest, person, road
    assert r.hallu_covered == [0, 0, 0, 0, 0]


def test_capitalised_nouns_are_ignored(data):
    """Item 1: "Grass grows under the sky and a bird flies over the lake. Dogs bark."

    No lowercasing: "Grass" and "Dogs" are not vocabulary words → dropped (grass stays uncovered).
    Kept: sky (truth), bird (hallu → Cog + hallucinated), lake (truth).
    """
    r = run_item(data, 1, "Grass grows under the sky and a bird flies over the lake. Dogs bark.")
    assert r.nouns == ["sky", "bird", "lake"]
    assert r.hallucinated == [0, 1, 0]
    assert r.truth_covered == [1, 0, 0, 0, 1, 0, 0]
    assert r.hallu_covered == [0, 0, 1, 0, 0]


def test_duplicate_truth_words(data):
    """Item 2: truth [sky, man, ship, ship, forest, bridge, mountain, cloud, lake, building].

    "A man sits on a ship next to a boat and two ships." → man, ship, boat, ship.
    man → truth index 1. ship → first "ship" (index 2); boat ∈ relation[ship] → its first owner, index 2
    again; the second "ship" (index 3) can never be marked. Cover 2 of 10.
    """
    r = run_item(data, 2, "A man sits on a ship next to a boat and two ships.")
    assert r.nouns == ["man", "ship", "boat", "ship"]
    assert r.hallucinated == [0, 0, 0, 0]
    assert r.truth_covered == [0, 1, 1, 0, 0, 0, 0, 0, 0, 0]


def test_association_before_identity(data):
    """Item 5: truth [person, sea, beach, child, toy]; relation[child] contains "person".

    "A person plays on the beach with a toy." Association words come first in the candidate list, so
    "person" marks *child* (index 3) and the truth word person (index 0) stays uncovered.
    beach → 2, toy → 4. Cover 3 of 5.
    """
    r = run_item(data, 5, "A person plays on the beach with a toy.")
    assert r.truth_covered == [0, 0, 1, 1, 1]
    assert r.hallucinated == [0, 0, 0]


def test_hallu_word_associated_with_truth_is_not_a_hallucination(data):
    """Item 9: truth [football, man, grass, court], hallu [goal, sky, sun, ground];
    relation[grass] = [ground].

    "A man kicks a football on the court near the ground." The truth check comes first: ground
    covers grass and `continue`s, so it is neither hallucinated nor counted in Cog although it is an
    annotated hallucination. Cover 4/4, Cog 0/4, CHAIR 0/4.
    """
    r = run_item(data, 9, "A man kicks a football on the court near the ground.")
    assert r.nouns == ["man", "football", "court", "ground"]
    assert r.hallucinated == [0, 0, 0, 0]
    assert r.truth_covered == [1, 1, 1, 1]
    assert r.hallu_covered == [0, 0, 0, 0]


def test_safe_word_truth_and_first_association_owner(data):
    """Item 6: truth [sky, mountain, bicycle, person, hat, guardrail, sign, tree, ground, road, cow, sheep].

    relation[sign] = [signal, pole, street, road, path], relation[road] = [path, street, ground].
    "There is a road and the ground and a sign." →
    road: first found in sign's associations → marks sign (index 6), not road;
    ground: first found in road's associations → marks road (index 9), not ground;
    sign: a global safe word → skipped (so it never covers itself). Cover 2/12, nothing hallucinated.
    """
    r = run_item(data, 6, "There is a road and the ground and a sign.")
    assert r.nouns == ["road", "ground", "sign"]
    assert r.hallucinated == [0, 0, 0]
    assert r.truth_covered == [0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0]


def test_similarity_loops_run_after_an_exact_hallucination_match(data):
    """The spaCy step's control flow, with a stand-in similarity table (spaCy's vectors are not here).

    Item 1, "A dog and a car." Table: identical words 1.0 (as spaCy), sim(dog, cloud) = 0.9,
    sim(car, road) = 0.85, everything else 0.
    dog: not a truth candidate; exact hallu hit marks dog (index 3); the official flow has no
    `continue`, so the similarity loop over ha_words = [bill, cloud, sun, bird, dog, flower] then
    marks cloud (index 0, first j with > 0.8); no truth candidate is similar → hallucinated.
    car: no exact hit; no hallu similar; road (truth index 6) is similar → covered, not hallucinated.
    With exact similarity: only dog in Cog, both nouns hallucinated, nothing covered.
    A similarity of exactly 0.8 does not count (strict >).
    """
    table = {("dog", "cloud"): 0.9, ("car", "road"): 0.85}

    def sim(a, b):
        return 1.0 if a == b else table.get((a, b), 0.0)

    r = run_item(data, 1, "A dog and a car.", similarity=sim)
    assert r.hallucinated == [1, 0]
    assert r.truth_covered == [0, 0, 0, 0, 0, 0, 1]
    assert r.hallu_covered == [1, 0, 0, 1, 0]

    r = run_item(data, 1, "A dog and a car.")
    assert r.hallucinated == [1, 1]
    assert r.truth_covered == [0] * 7
    assert r.hallu_covered == [0, 0, 0, 1, 0]

    table[("car", "road")] = 0.8
    r = run_item(data, 1, "A dog and a car.", similarity=sim)
    assert r.hallucinated == [1, 1]


# ============================================================================ generative, aggregated

GENERATIVE_ANSWERS = [
    {"id": 1, "response": "A person stands on the grass near a lake under a sky with a dog and a camera."},
    {"id": 2, "response": "A man sits on a ship next to a boat and two ships."},
    {"id": 5, "response": "A person plays on the beach with a toy."},
    {"id": 6, "response": "There is a road and the ground and a sign."},
    {"id": 9, "response": "A man kicks a football on the court near the ground."},
]


def test_generative_metrics(official):
    """The five responses of the per-item tests above, scored together.

    mentions 6 + 4 + 3 + 3 + 4 = 20, hallucinated 1 (dog, item 1)  → CHAIR = 1/20.001 = 5.0
    covered truth 4/7 + 2/10 + 3/5 + 2/12 + 4/4 = 15/38             → Cover = 15/38.001 = 39.47 → 39.5
    covered hallu 1 of 5 + 5 + 5 + 5 + 4 = 24                        → Cog = 1/24.001 = 4.166 → 4.2
    1 of 5 responses hallucinates → Hal = 100 - 4/5.001*100 = 20.016 → 20.0
    """
    m = amber.score(GENERATIVE_ANSWERS, official, "exact")
    assert m["generative"] == {"CHAIR": 5.0, "Cover": 39.5, "Hal": 20.0, "Cog": 4.2}
    assert m["similarity"] == "exact"
    assert m["n_generative"] == 5 and m["n_discriminative"] == 0
    assert "discriminative" not in m and "amber_score" not in m


def test_generative_0001_denominators(official):
    """One response, item 1. "A car.": 1 mention, hallucinated → CHAIR = 1/1.001 = 99.9 (not 100),
    Hal = 100 - 0 = 100.0, Cover = Cog = 0.0.
    "A lake.": 1 mention, covered → CHAIR 0.0, Cover = 1/7.001 = 14.28 → 14.3,
    Hal = 100 - 1/1.001*100 = 0.0999 → 0.1 (not 0).
    """
    m = amber.score([{"id": 1, "response": "A car."}], official, "exact")["generative"]
    assert m == {"CHAIR": 99.9, "Cover": 0.0, "Hal": 100.0, "Cog": 0.0}
    m = amber.score([{"id": 1, "response": "A lake."}], official, "exact")["generative"]
    assert m == {"CHAIR": 0.0, "Cover": 14.3, "Hal": 0.1, "Cog": 0.0}


# ============================================================================ discriminative

# (id, truth, response) — truths from annotations.json
DISCRIMINATIVE_ANSWERS = [
    (1005, "yes", "Yes"), (1006, "no", "No"), (1113, "yes", "No"), (1114, "no", "No"),  # state
    (1013, "yes", "Yes"), (1014, "no", "Yes"), (1111, "yes", "Yes"), (1112, "no", "I think not."),  # number
    (1017, "yes", "No"), (1018, "no", "No"), (1031, "yes", "No"), (1032, "no", "No"),  # action
    (8633, "no", "No"), (8643, "no", "No"), (8683, "no", "Yes"), (13556, "no", "Yes"),  # existence
    (13557, "yes", "Yes"), (15219, "yes", "Yes"), (13558, "no", "No"), (15220, "no", "Yes"),  # relation
]  # fmt: skip

DISCRIMINATIVE_EXPECTED = {
    "overall": {"Accuracy": 60.0, "Precision": 70.0, "Recall": 58.3, "F1": 63.6},
    "existence": {"Accuracy": 50.0, "Precision": 100.0, "Recall": 50.0, "F1": 66.6},
    "attribute": {"Accuracy": 58.3, "Precision": 57.1, "Recall": 66.6, "F1": 61.5},
    "state": {"Accuracy": 75.0, "Precision": 66.6, "Recall": 100.0, "F1": 79.9},
    "number": {"Accuracy": 50.0, "Precision": 0.0, "Recall": 0.0, "F1": 0.0},
    "action": {"Accuracy": 50.0, "Precision": 50.0, "Recall": 100.0, "F1": 66.7},
    "relation": {"Accuracy": 75.0, "Precision": 99.9, "Recall": 50.0, "F1": 66.6},
}


def test_discriminative_truths_are_as_listed(data):
    for i, truth, _ in DISCRIMINATIVE_ANSWERS:
        assert data["ann"][i]["truth"] == truth, i


def test_discriminative_metrics(official):
    """ "No" is the positive class. Per category: correct/n, P = right "No"/all "No", R = right "No"/truth-no.

    state    correct 3/4 → 3/4.001 = 74.98 → 75.0; said No 3, right 2 → 2/3.001 = 66.6;
             truth-no 2, right 2 → 2/2.001 = 99.95 → 100.0; F1 from rounded P, R:
             2*.666*1/(1.666+.0001) = 79.95 → 79.9 (from unrounded P it would be 80.0: rounding order)
    number   correct 2/4 → 50.0 (49.99); no "No" at all → P = 0/0.001 = 0.0; R = 0/2.001 = 0.0;
             F1 = 0/0.0001 = 0.0. "I think not." is not "No": wrong, and 1 unparsed
    action   correct 2/4 → 50.0; said No 4, right 2 → 50.0; R 2/2.001 → 100.0;
             F1 = 2*.5*1/1.5001 = 66.66 → 66.7 (unrounded P gives 66.6)
    attribute sums the three (denominators +0.003): correct 7/12.003 = 58.3; P 4/7.003 = 57.1;
             R 4/6.003 = 66.6; F1 = 2*.571*.666/(1.237+.0001) = 61.48 → 61.5
    existence correct 2/4 → 50.0; P 2/2.001 → 100.0; R 2/4.001 → 50.0;
             F1 with its +0.001: 1/1.501 = 66.62 → 66.6 (with +0.0001 it would be 66.7)
    relation (discriminative-relation + relation) correct 3/4 → 75.0; P 1/1.001 = 99.9; R 1/2.001 = 50.0;
             F1 = .999/1.4991 = 66.64 → 66.6
    overall  correct 12/20.001 = 60.0; P 7/10.001 = 70.0; R 7/12.001 = 58.3; F1 = .8162/1.2831 = 63.6
    """
    answers = [{"id": i, "response": r} for i, _, r in DISCRIMINATIVE_ANSWERS]
    m = amber.score(answers, official, "exact")
    assert m["discriminative"] == DISCRIMINATIVE_EXPECTED
    assert m["n_unparsed"] == 1
    assert m["n_discriminative"] == 20 and m["n_generative"] == 0
    assert "generative" not in m and "amber_score" not in m


def test_amber_score(official):
    """Item 1's response alone: CHAIR = 1/6.001 = 16.66 → 16.7; with the discriminative set (F1 63.6):
    AMBER = (100 - 16.7 + 63.6) / 2 = 73.45."""
    answers = GENERATIVE_ANSWERS[:1] + [{"id": i, "response": r} for i, _, r in DISCRIMINATIVE_ANSWERS]
    m = amber.score(answers, official, "exact")
    assert m["generative"]["CHAIR"] == 16.7
    assert m["amber_score"] == pytest.approx(73.45)


def test_sections_omitted_when_not_covered(official):
    m = amber.score([{"id": 8633, "response": "No"}], official, "exact")
    assert set(m["discriminative"]) == {"overall", "existence"}
    m = amber.score([{"id": 1005, "response": "Yes"}, {"id": 13558, "response": "No"}], official, "exact")
    assert set(m["discriminative"]) == {"overall", "attribute", "state", "relation"}
    m = amber.score([], official, "exact")
    assert "generative" not in m and "discriminative" not in m and "amber_score" not in m
    assert m["n_unparsed"] == 0 and m["n_generative"] == 0 and m["n_discriminative"] == 0


def test_unparsed_responses_count_wrong_until_normalized(official):
    """Truth yes (1005): raw "Yes, it is." is not exactly "Yes" → wrong (Accuracy 0.0), 1 unparsed.
    Normalized to "Yes" → right: 1/1.001 = 99.9. With yes_no="first-word" the scorer does that itself,
    from raw_response when the row has one; "I cannot know" stays unparsed and wrong: 1 right of 2 →
    1/2.001 = 49.98 → 50.0."""
    m = amber.score([{"id": 1005, "response": "Yes, it is."}], official, "exact")
    assert m["discriminative"]["overall"]["Accuracy"] == 0.0 and m["n_unparsed"] == 1
    assert m["yes_no"] is None and m["n_normalized"] == 0
    fixed = amber.normalize_answer(1005, "Yes, it is.").response
    m = amber.score([{"id": 1005, "response": fixed, "raw_response": "Yes, it is."}], official, "exact")
    assert m["discriminative"]["overall"]["Accuracy"] == 99.9 and m["n_unparsed"] == 0
    assert m["n_normalized"] == 1  # stored "Yes" differs from the raw reply
    raw = [{"id": 1005, "response": "Yes, it is."}, {"id": 1006, "response": "I cannot know"}]
    m = amber.score(raw, official, "exact", yes_no="first-word")  # 1005 right, 1006 (truth no) wrong
    assert m["discriminative"]["overall"]["Accuracy"] == 50.0 and m["n_unparsed"] == 1
    assert m["yes_no"] == "first-word" and m["n_normalized"] == 1
    # a normalization asked at scoring time starts from raw_response, not from the stored answer
    stored = [{"id": 1006, "response": "Yes", "raw_response": "I cannot know"}]
    assert amber.score(stored, official, "exact", yes_no="lpoi")["discriminative"]["overall"]["Accuracy"] == 99.9
    with pytest.raises(ValueError, match="amber.yes_no"):
        amber.score(raw, official, "exact", yes_no="generate")


def test_metrics_txt_starting_values_match(official):
    """The built-in starting values are the official metrics.txt: scores 0, every *_num 0.001."""
    values = {}
    for line in (official / "metrics.txt").read_text().splitlines():
        name, value = (p.strip() for p in line.split("="))
        values[name] = float(value)
    assert (
        len(values) == 44
    )  # 8 generative + 6 per group (overall, state, number, action, relation, existence)
    assert all(v == amber.NUM_INIT for k, v in values.items() if k.endswith("_num"))
    assert all(v == 0 for k, v in values.items() if not k.endswith("_num"))


# ============================================================================ similarity modes and errors


def _spacy_lg_installed() -> bool:
    import importlib.util

    return (
        importlib.util.find_spec("spacy") is not None
        and importlib.util.find_spec("en_core_web_lg") is not None
    )


def test_similarity_modes(official):
    one = [{"id": 1, "response": "A lake."}]
    assert amber.score(one, official, "exact")["similarity"] == "exact"
    expected_auto = "spacy-lg" if _spacy_lg_installed() else "exact"
    assert amber.score(one, official, "auto")["similarity"] == expected_auto
    assert amber.score([{"id": 1005, "response": "Yes"}], official, "auto")["similarity"] == expected_auto
    with pytest.raises(ValueError, match="similarity"):
        amber.score(one, official, "fuzzy")
    with pytest.raises(ValueError, match="threshold"):
        amber.score(one, official, "exact", threshold=1.5)


@pytest.mark.skipif(_spacy_lg_installed(), reason="spaCy en_core_web_lg is installed here")
def test_spacy_lg_requested_but_missing(official):
    with pytest.raises(amber.SpacyModelMissing, match="en_core_web_lg"):
        amber.score([{"id": 1, "response": "A lake."}], official, "spacy-lg")


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        ([{"id": 1005, "response": "Yes"}, {"id": 1005, "response": "No"}], "id 1005 appears twice"),
        ([{"id": 99999, "response": "Yes"}], "id 99999 is not in"),
        ([{"id": True, "response": "Yes"}], "'id' must be an int"),
        ([{"id": "1005", "response": "Yes"}], "'id' must be an int"),
        ([{"id": 1005, "response": None}], "id 1005.*'response' must be a string"),
        (["Yes"], "record 1: expected an object"),
    ],
)
def test_bad_answers_are_named(official, answers, message):
    with pytest.raises(ValueError, match=message):
        amber.score(answers, official, "exact")


def test_score_file(official, tmp_path):
    answers = tmp_path / "answers.jsonl"
    rows = [{"id": i, "question": "q", "response": r} for i, _, r in DISCRIMINATIVE_ANSWERS]
    answers.write_text("".join(json.dumps(r) + "\n\n" for r in rows))  # blank lines are fine
    out = tmp_path / "metrics" / "amber.json"
    returned = amber.score_file(answers, official, out, similarity="exact")
    written = json.loads(out.read_text())
    assert written == returned
    assert written["discriminative"] == DISCRIMINATIVE_EXPECTED
    answers.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[0]) + "\n")
    with pytest.raises(ValueError, match=r"answers\.jsonl: record 2: id 1005 appears twice"):
        amber.score_file(answers, official, out, similarity="exact")


def test_bad_annotations_are_named(tmp_path):
    def write(entries):
        (tmp_path / "annotations.json").write_text(json.dumps(entries))

    write([{"id": 5, "type": "generative", "truth": ["dog"], "hallu": []}, {"id": 5, "type": "generative"}])
    with pytest.raises(ValueError, match="id 5 appears twice"):
        amber.load_annotations(tmp_path)
    write([{"id": 1005, "type": "discriminative-attribute-state", "truth": "maybe"}])
    with pytest.raises(ValueError, match="id 1005: discriminative 'truth'"):
        amber.load_annotations(tmp_path)
    write([{"id": 7, "type": "generative", "truth": "dog", "hallu": []}])
    with pytest.raises(ValueError, match="id 7: 'truth' must be a list"):
        amber.load_annotations(tmp_path)


def test_official_annotations_load_by_id(data):
    """The complete file: entry k has id k+1, so lookup by id is the official ground_truth[id-1]."""
    assert len(data["ann"]) == amber.N_ITEMS
    assert data["ann"][1004]["type"] == "generative" and data["ann"][1005]["type"] != "generative"


# ============================================================================ NLTK data


def test_nltk_missing_gives_clear_error(tmp_path):
    saved = list(nltk.data.path)
    nltk.data.path[:] = [str(tmp_path)]
    try:
        with pytest.raises(RuntimeError) as e:
            amber.ensure_nltk_data(download=False)
    finally:
        nltk.data.path[:] = saved
    msg = str(e.value)
    for needle in ("punkt_tab", "averaged_perceptron_tagger_eng", "wordnet", "NLTK_DATA", "nltk.downloader"):
        assert needle in msg
    assert str(tmp_path) in msg
    amber.ensure_nltk_data(download=False)  # restored: found again


def test_nltk_download_failure_is_said_and_explained(tmp_path, capsys):
    """download=True: the missing package is announced on stderr, the real NLTK downloader is asked
    (here at an index URL it cannot use: NLTK refuses loopback URLs, and no server listens there),
    and the error still names what to install."""
    saved = list(nltk.data.path)
    nltk.data.path[:] = [str(tmp_path)]
    try:
        with pytest.raises(RuntimeError, match="punkt_tab.*the download failed"):
            amber.ensure_nltk_data(
                download=True, index_url="http://127.0.0.1:9/index.xml", download_dir=tmp_path
            )
    finally:
        nltk.data.path[:] = saved
    err = capsys.readouterr().err
    for name in ("punkt_tab", "averaged_perceptron_tagger_eng", "wordnet"):
        assert f"NLTK data '{name}' not found; downloading it" in err
        assert f"NLTK data '{name}': download FAILED" in err


# ============================================================================ work list


def test_items_lists_queries_with_confined_image_paths(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in (1, 2, 3, 5, 11, 1004):
        (images / f"AMBER_{i}.jpg").write_bytes(b"x")
    got = amber.items(MINI, images)
    assert len(got) == 26
    assert got[0] == {
        "id": 1,
        "image": str((images / "AMBER_1.jpg").resolve()),
        "question": "Describe this image.",
        "task": "generative",
    }
    assert [g["id"] for g in amber.items(MINI, images, ids=[8633, 1004, 15220])] == [1004, 8633, 15220]
    assert [g["task"] for g in amber.items(MINI, images, ids=[1004, 1005])] == [
        "generative",
        "discriminative",
    ]
    assert [g["id"] for g in amber.items(MINI, images, limit=2)] == [1, 2]
    assert amber.items(MINI, images, limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        amber.items(MINI, images, limit=-1)
    with pytest.raises(ValueError, match=r"\[4\]"):
        amber.items(MINI, images, ids=[4])


def test_items_missing_images_explain_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="images folder not found.*AMBER_1.jpg.*images_dir"):
        amber.items(MINI, tmp_path / "nowhere")
    (tmp_path / "AMBER_1.jpg").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"5 AMBER image\(s\) missing.*AMBER_2.jpg"):
        amber.items(MINI, tmp_path)
    assert len(amber.items(MINI, tmp_path, ids=[1, 1005])) == 2  # both use AMBER_1.jpg


def test_generation_items_flag_the_yes_no_questions():
    got = amber.generation_items(MINI, MINI / "images", ids=[1, 1004, 1005, 8633])
    assert [(g["id"], g["yes_no"]) for g in got] == [(1, False), (1004, False), (1005, True), (8633, True)]
    assert [{k: v for k, v in g.items() if k != "yes_no"} for g in got] == amber.items(
        MINI, MINI / "images", ids=[1, 1004, 1005, 8633])
    assert [g["id"] for g in amber.generation_items(MINI, MINI / "images", limit=2)] == [1, 2]


# ============================================================================ the mini set


def test_mini_set_is_consistent():
    queries = json.loads((MINI / "query" / "query_all.json").read_text())
    annotations = amber.load_annotations(MINI)
    assert [q["id"] for q in queries] == sorted(annotations) and len(queries) == 26
    types = {annotations[q["id"]]["type"] for q in queries}
    assert types == {
        "generative",
        "discriminative-hallucination",
        "discriminative-attribute-state",
        "discriminative-attribute-number",
        "discriminative-attribute-action",
        "discriminative-relation",
        "relation",
    }
    gen = {q["id"] for q in queries if annotations[q["id"]]["type"] == "generative"}
    assert gen == {q["id"] for q in queries if amber.is_generative(q["id"])}  # type agrees with the id range
    for q in queries:
        img = load_image(MINI / "images" / q["image"])  # exists and decodes
        assert 64 <= min(img.size) and max(img.size) <= 128
        if annotations[q["id"]]["type"] == "generative":
            assert q["image"] == f"AMBER_{q['id']}.jpg" and q["query"] == "Describe this image."
    splits = {
        "query_generative.json": lambda t: t == "generative",
        "query_discriminative.json": lambda t: t != "generative",
        "query_discriminative-existence.json": lambda t: t == "discriminative-hallucination",
        "query_discriminative-attribute.json": lambda t: t.startswith("discriminative-attribute"),
        "query_discriminative-relation.json": lambda t: t in ("discriminative-relation", "relation"),
    }
    for name, keep in splits.items():
        split = json.loads((MINI / "query" / name).read_text())
        assert split == [q for q in queries if keep(annotations[q["id"]]["type"])], name
    words = amber.load_association(MINI)
    for a in annotations.values():
        if a["type"] == "generative":
            assert all(w in words for w in a["truth"] + a["hallu"])
    total = sum(f.stat().st_size for f in MINI.rglob("*") if f.is_file())
    assert total < 300_000


def test_mini_set_matches_the_official_files(official):
    assert (MINI / "relation.json").read_bytes() == (official / "relation.json").read_bytes()
    assert (MINI / "safe_words.txt").read_bytes() == (official / "safe_words.txt").read_bytes()
    full_ann = json.loads((official / "annotations.json").read_text())
    full_q = json.loads((official / "query" / "query_all.json").read_text())
    for a in json.loads((MINI / "annotations.json").read_text()):
        assert a == full_ann[a["id"] - 1]
    for q in json.loads((MINI / "query" / "query_all.json").read_text()):
        assert q == full_q[q["id"] - 1]


def _mini_answers():
    queries = json.loads((MINI / "query" / "query_all.json").read_text())
    return [{"id": q["id"], "response": "A dog." if amber.is_generative(q["id"]) else "No"} for q in queries]


def test_score_mini_set():
    """Every generative answer "A dog.", every discriminative answer "No".

    Generative (ids 1, 2, 3, 5, 11, 1004): dog is a truth word only for 11; for 1 it is an annotated
    hallucination; elsewhere an unannotated vocabulary noun → 5 of 6 mentions hallucinated:
    CHAIR = 5/6.001 = 83.3; Cover = 1/(7+10+3+5+2+5 = 32.001) = 3.1; Cog = 1/(6*5 = 30.001) = 3.3;
    Hal = 100 - 1/6.001*100 = 83.3.
    Discriminative: 20 items, 12 with truth "no" (state 2, number 2, action 2, existence 4, relation 2).
    overall: Accuracy 12/20.001 = 60.0; Precision 12/20.001 = 60.0; Recall 12/12.001 = 100.0;
    F1 = 1.2/1.6001 = 74.995 → 75.0. state: Acc 2/4.001 = 50.0, P 50.0, R 2/2.001 = 100.0,
    F1 = 1/1.5001 = 66.7. AMBER = (100 - 83.3 + 75.0)/2 = 45.85.
    """
    m = amber.score(_mini_answers(), MINI, "exact")
    assert m["generative"] == {"CHAIR": 83.3, "Cover": 3.1, "Hal": 83.3, "Cog": 3.3}
    assert m["discriminative"]["overall"] == {
        "Accuracy": 60.0,
        "Precision": 60.0,
        "Recall": 100.0,
        "F1": 75.0,
    }
    assert m["discriminative"]["state"] == {"Accuracy": 50.0, "Precision": 50.0, "Recall": 100.0, "F1": 66.7}
    assert set(m["discriminative"]) == set(amber.CATEGORIES)
    assert m["amber_score"] == pytest.approx(45.85)
    assert (m["n_generative"], m["n_discriminative"], m["n_unparsed"]) == (6, 20, 0)


def test_mini_and_full_files_score_alike(official):
    """Lookup by id on the subset = the official ground_truth[id-1] on the complete file."""
    assert amber.score(_mini_answers(), MINI, "exact") == amber.score(_mini_answers(), official, "exact")


# ============================================================================ generation error rows


def _error_row(i: int, reason: str) -> dict:
    """What lpoi.eval.generate writes for an item whose image could not be loaded."""
    return {"id": i, "question": "q", "response": "", "error": reason, "error_detail": f"image {i}: {reason}",
            "task": "generative" if amber.is_generative(i) else "discriminative"}


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("error_id", [11, 1005])  # one generative, one discriminative (truth "yes") mini id
def test_generation_error_rows_are_left_out_and_counted(tmp_path, error_id):
    """The mini answers without item ``error_id``, scored with and without an error row for it.

    Scored as an answer, the error row's "" would change the numbers: for 11 an empty description
    is one more hallucination-free response (Hal 100 - 1/5.001*100 = 80.0 becomes 100 - 2/6.001*100
    = 66.7) and adds 11's 2 truth / 5 hallu words to the Cover/Cog denominators; for 1005 (truth
    yes) "" is a wrong answer and 1 unparsed. So equality below means the row was left out.
    """
    normal = [a for a in _mini_answers() if a["id"] != error_id]
    out = tmp_path / "m.json"
    clean = amber.score_file(_write_jsonl(tmp_path / "clean.jsonl", normal), MINI, out, similarity="exact")
    with_error = normal[:3] + [_error_row(error_id, "unreadable")] + normal[3:]
    m = amber.score_file(_write_jsonl(tmp_path / "errors.jsonl", with_error), MINI, out, similarity="exact")
    assert json.loads(out.read_text()) == m
    assert m["n_generation_errors"] == 1 and m["generation_errors"] == {"unreadable": 1}
    assert clean["n_generation_errors"] == 0 and clean["generation_errors"] == {}
    rest = {k: v for k, v in m.items() if k not in ("n_generation_errors", "generation_errors")}
    assert rest == {k: v for k, v in clean.items() if k not in ("n_generation_errors", "generation_errors")}
    # and it would have mattered: the same row scored as a real (empty) answer changes the metrics
    as_answer = amber.score(normal + [{"id": error_id, "response": ""}], MINI, "exact")
    assert {k: as_answer[k] for k in rest} != rest


def test_all_generation_error_rows_is_an_error(tmp_path):
    path = _write_jsonl(tmp_path / "answers.jsonl",
                        [_error_row(1, "missing"), _error_row(1005, "truncated"), _error_row(1006, "missing")])
    with pytest.raises(ValueError, match=r"answers\.jsonl: all 3 answer rows are generation errors") as e:
        amber.score_file(path, MINI, tmp_path / "m.json", similarity="exact")
    assert "'missing': 2" in str(e.value) and "'truncated': 1" in str(e.value)
    assert not (tmp_path / "m.json").exists()
    # an error row's id is still checked
    with pytest.raises(ValueError, match="id 99999 is not in"):
        amber.score([{"id": 1, "response": "A dog."}, {"id": 99999, "response": "", "error": "missing"}], MINI, "exact")
    with pytest.raises(ValueError, match="id 1 appears twice"):
        amber.score([{"id": 1, "response": "A dog."}, _error_row(1, "missing")], MINI, "exact")


# ============================================================================ generation stores both


def test_generate_stores_raw_reply_and_normalized_answer(tmp_path):
    """The mini AMBER items answered by generation (tiny Idefics2, greedy) with amber.yes_no "lpoi": each
    yes/no row keeps the model's reply as raw_response and stores normalize_yes_no(raw) as response;
    descriptions are untouched. Scoring the file as stored equals scoring the raw replies with the rule."""
    from lpoi.eval.generate import generate_answers
    from lpoi.models import load_vlm

    model, proc = load_vlm("tiny/idefics2")
    work = [it for it in amber.items(MINI, MINI / "images") if it["id"] in (1, 1005, 1006, 8633)]
    items = [{**it, "yes_no": not amber.is_generative(it["id"])} for it in work]
    out = tmp_path / "answers.jsonl"
    generate_answers(model, proc, items, out, max_new_tokens=6, progress=False,
                     normalize_yes_no=amber.answer_row_normalizer("lpoi"))
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert "raw_response" not in rows[1]
    for i in (1005, 1006, 8633):
        assert rows[i]["response"] == amber.normalize_yes_no(rows[i]["raw_response"], "lpoi")
    stored = amber.score_file(out, MINI, tmp_path / "m.json", similarity="exact")
    raw = [{"id": i, "response": r.get("raw_response", r["response"])} for i, r in rows.items()]
    assert stored["discriminative"] == amber.score(raw, MINI, "exact", yes_no="lpoi")["discriminative"]


# ============================================================================ stages/score.py amber = inference.py


def _score_stage(tmp_path, answers: list[dict], *extra: str) -> dict:
    import subprocess
    import sys

    path = _write_jsonl(tmp_path / "answers.jsonl", answers)
    out = tmp_path / "amber.json"
    r = subprocess.run([sys.executable, "stages/score.py", "amber", "--answers", str(path), "--out", str(out),
                        "--data-dir", str(MINI), *extra], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(out.read_text())


OFFICIAL_EXACT_ANSWERS = [(1005, "Yes"), (1006, "No"), (1013, "yes"), (1014, "No."), (8633, "Maybe"), (8643, "")]


def test_score_stage_scores_stored_answers_exactly_like_inference_py(tmp_path):
    """inference.py counts only the exact strings "Yes"/"No" (``if response == 'Yes'``). Answers, truths:
    1005 state yes "Yes" right; 1006 state no "No" right (said No); 1013 number yes "yes" wrong;
    1014 number no "No." wrong (not a said-No); 8633 existence no "Maybe" wrong; 8643 existence no "" wrong.

    overall   Acc 2/6.001 = 33.33 → 33.3; P = said-No right / said-No = 1/1.001 = 99.9;
              R = 1/4.001 (truth no: 1006, 1014, 8633, 8643) = 24.99 → 25.0;
              F1 = 2*.999*.25/(.999+.25+.0001) = 39.99 → 40.0
    existence Acc 0/2.001 = 0.0; P 0/0.001 = 0.0; R 0/2.001 = 0.0; F1 0/0.001 = 0.0
    state     Acc 2/2.001 = 99.95 → 100.0; P 1/1.001 = 99.9; R 1/1.001 = 99.9; F1 = 1.996/1.9981 = 99.9
    number    Acc 0/2.001 = 0.0; P 0/0.001 = 0.0; R 0/1.001 = 0.0; F1 0.0
    attribute state + number (+0.003): Acc 2/4.003 = 49.96 → 50.0; P 1/1.003 = 99.7; R 1/2.003 = 49.9;
              F1 = 2*.997*.499/(1.496+.0001) = 66.50 → 66.5
    4 answers are not exactly Yes/No: n_unparsed 4.

    With --yes-no first-word: "yes" → Yes (1013 right), "No." → No (1014 right), "Maybe" and "" stay
    wrong: Acc 4/6.001 = 66.7; P 2/2.001 = 99.95 → 100.0; R 2/4.001 = 50.0; F1 = 1/1.5001 = 66.7.
    """
    answers = [{"id": i, "response": r} for i, r in OFFICIAL_EXACT_ANSWERS]
    m = _score_stage(tmp_path, answers)
    assert m["discriminative"] == {
        "overall": {"Accuracy": 33.3, "Precision": 99.9, "Recall": 25.0, "F1": 40.0},
        "existence": {"Accuracy": 0.0, "Precision": 0.0, "Recall": 0.0, "F1": 0.0},
        "attribute": {"Accuracy": 50.0, "Precision": 99.7, "Recall": 49.9, "F1": 66.5},
        "state": {"Accuracy": 100.0, "Precision": 99.9, "Recall": 99.9, "F1": 99.9},
        "number": {"Accuracy": 0.0, "Precision": 0.0, "Recall": 0.0, "F1": 0.0},
    }
    assert m["n_unparsed"] == 4 and m["yes_no"] is None and m["n_normalized"] == 0
    assert m["random_model"] is True  # params.yaml: tiny/idefics2 answered (as far as the label knows)
    norm = _score_stage(tmp_path, answers, "--yes-no", "first-word")
    assert norm["discriminative"]["overall"] == {"Accuracy": 66.7, "Precision": 100.0, "Recall": 50.0, "F1": 66.7}
    assert norm["n_unparsed"] == 2 and norm["n_normalized"] == 2


def test_score_file_writes_per_item_details(tmp_path):
    """One row per scored item (descriptions, then yes/no items); error rows have none. Item 1 (truth includes person,
    whose associations include "man"; dog is an annotated hallucination): "dog" and "beach" are
    hallucinated mentions, "man" covers person, "dog" covers the hallucination word dog."""
    rows = [{"id": 1, "response": "A dog and a man on the beach."}, {"id": 1005, "response": "Yes"},
            _error_row(11, "missing"), {"id": 1006, "response": "yes"}]
    details = tmp_path / "details.jsonl"
    amber.score_file(_write_jsonl(tmp_path / "a.jsonl", rows), MINI, tmp_path / "m.json", similarity="exact",
                     details_path=details, max_error_ratio=None)
    got = [json.loads(x) for x in details.read_text().splitlines()]
    assert got == [
        {"id": 1, "nouns": ["dog", "man", "beach"], "hallucinated": ["dog", "beach"], "truth_covered": ["person"],
         "hallu_covered": ["dog"]},
        {"id": 1005, "truth": "yes", "answer": "Yes", "correct": True},
        {"id": 1006, "truth": "no", "answer": "yes", "correct": False},
    ]


# ============================================================================ amber.yes_no: paper (the authors' scoring)

# What generate-idefics-lpoi-amber.py stored (official repo @ 7008d7c): ``batch_decode(generated_ids,
# skip_special_tokens=True)[0]`` -- the whole sequence, prompt included -- then "No" if 'NO'/'No'/'no' occurs
# anywhere in it, else "Yes" if 'YES'/'Yes'/'yes' does, else the text unchanged; for every id >= 1004.
# Decoded sequences below are written as the Idefics2 and LLaVA-1.5 templates render them; labels by hand.
PAPER_DECODED = [
    # the prompt's own word counts: "snowboard" holds "no", so a "Yes" reply is stored as "No"
    (1005, "User: Is there a snowboard in this image?\nAssistant: Yes, there is.", "Yes, there is.", "No"),
    (1006, "User: Is the dog sitting in this image?\nAssistant: Yes", "Yes", "Yes"),
    # "know" in the reply
    (1013, "User: Is there a cat in this image?\nAssistant: Yes, I know.", "Yes, I know.", "No"),
    # "eyes" is a yes; "There"/"Assistant" hold neither
    (1014, "User: Is the man smiling in this image?\nAssistant: His eyes are closed.", "His eyes are closed.", "Yes"),
    # neither anywhere: the text is left as is (and scores wrong)
    (1017, "User: Is the sky blue in this image?\nAssistant: It is a clear day.", "It is a clear day.",
     "User: Is the sky blue in this image?\nAssistant: It is a clear day."),
    # LLaVA-1.5's template: "USER: <image>\n{q} ASSISTANT:" (the image token is special: dropped by the decode)
    (1018, "USER: \nIs there a car in this image? ASSISTANT: No, there is not.", "No, there is not.", "No"),
    (1031, "USER: \nIs the car red in this image? ASSISTANT: YES", "YES", "Yes"),
    # upper-case NO in the prompt ("NOTE") wins over the reply's "Yes"
    (1032, "USER: \nNOTE: Is the car red in this image? ASSISTANT: Yes", "Yes", "No"),
]


@pytest.mark.parametrize(("id", "decoded", "reply", "expected"), PAPER_DECODED)
def test_paper_rule_reads_the_decoded_full_sequence(id, decoded, reply, expected):
    row = {"id": id, "response": reply, "decoded_full": decoded}
    amber.answer_row_normalizer("paper")(row)
    assert row["response"] == expected and row["raw_response"] == reply
    # the "lpoi" rule reads the reply alone: the prompt's "snowboard"/"NOTE" do not count there
    if id in (1005, 1032):
        assert amber.normalize_yes_no(reply, "lpoi") == "Yes"


def test_paper_rule_without_the_decoded_sequence_names_the_row():
    with pytest.raises(ValueError, match=r"AMBER id 1005: .*'decoded_full'"):
        amber.answer_row_normalizer("paper")({"id": 1005, "response": "Yes"})


def test_paper_rule_flags_item_1004_like_the_official_script():
    """The official loop normalizes ``int(entry['id']) >= 1004``: item 1004, a description, included."""
    flags = {it["id"]: it["yes_no"] for it in amber.generation_items(MINI, MINI / "images")}
    paper = {it["id"]: it["yes_no"] for it in amber.generation_items(MINI, MINI / "images", rule="paper")}
    assert flags[1004] is False and paper[1004] is True
    assert {i: f for i, f in paper.items() if i != 1004} == {i: f for i, f in flags.items() if i != 1004}


def test_paper_rule_needs_generated_answers():
    from lpoi.config import ParamsError, validate

    with pytest.raises(ParamsError, match="amber.yes_no 'paper' reads generated text"):
        validate({"amber": {"discriminative": "logits", "yes_no": "paper"}})
    assert validate({"amber": {"discriminative": "generate", "yes_no": "paper"}}).amber.yes_no == "paper"


def test_generate_keeps_the_decoded_full_sequence_in_paper_mode(tmp_path):
    """Tiny Idefics2, greedy, items 1 (description), 1004, 1005, 1006 with amber.yes_no "paper": the yes/no
    rows (1004 included) keep ``decoded_full`` = the prompt's text ("User:" ... question ... "Assistant:")
    followed by the reply, and ``response`` = the rule on it; the description keeps no such field. Batch
    size 1 (as the official script ran) and 3 (left padding) store the same rows. Scoring at score time with
    --yes-no paper reads the same field and gives the same metrics."""
    from lpoi.eval.generate import generate_answers
    from lpoi.models import load_vlm

    model, proc = load_vlm("tiny/idefics2")
    items = [it for it in amber.generation_items(MINI, MINI / "images", rule="paper") if it["id"] in (1, 1004, 1005, 1006)]
    outs = []
    for bs in (1, 3):
        out = tmp_path / f"answers{bs}.jsonl"
        generate_answers(model, proc, items, out, max_new_tokens=6, progress=False, batch_size=bs,
                         normalize_yes_no=amber.answer_row_normalizer("paper"), decoded_full=True)
        outs.append(out.read_text())
    assert outs[0] == outs[1]
    rows = {r["id"]: r for r in map(json.loads, outs[0].splitlines())}
    assert "decoded_full" not in rows[1] and "raw_response" not in rows[1]
    questions = {it["id"]: it["question"] for it in items}
    for i in (1004, 1005, 1006):
        full = rows[i]["decoded_full"]
        assert full.startswith("User:") and questions[i] in full and "Assistant:" in full, full
        assert full.rstrip().endswith(rows[i]["raw_response"]), (full, rows[i]["raw_response"])
        assert rows[i]["response"] == amber.normalize_yes_no(full, "lpoi")
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps({k: v for k, v in r.items() if k not in ("response",)} | {
        "response": r.get("raw_response", r["response"])}) + "\n" for r in rows.values()))
    stored = amber.score_file(tmp_path / "answers1.jsonl", MINI, tmp_path / "m1.json", similarity="exact")
    rescored = amber.score_file(plain, MINI, tmp_path / "m2.json", similarity="exact", yes_no="paper")
    assert stored["discriminative"] == rescored["discriminative"]


def _params_with(tmp_path, **amber_keys) -> Path:
    import yaml

    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["amber"].update(amber_keys)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    return path


def _score_with_params(tmp_path, params: Path):
    import subprocess
    import sys

    answers = _write_jsonl(tmp_path / "answers.jsonl", [{"id": 1, "response": "A dog and a man on the beach."}])
    out = tmp_path / "amber.json"
    r = subprocess.run([sys.executable, "stages/score.py", "amber", "--answers", str(answers), "--out", str(out),
                        "--data-dir", str(MINI), "--params", str(params)], cwd=REPO, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "NLTK_DATA": os.environ["NLTK_DATA"]})
    return r, out


@pytest.mark.skipif(_spacy_lg_installed(), reason="spaCy en_core_web_lg is installed here")
def test_score_stage_stops_in_one_line_when_spacy_lg_is_required_but_missing(tmp_path):
    r, out = _score_with_params(tmp_path, _params_with(tmp_path, similarity="spacy-lg"))
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: amber.similarity 'spacy-lg'") and "en_core_web_lg" in last, r.stderr
    assert not out.exists()


def test_score_stage_says_when_auto_falls_back(tmp_path):
    r, out = _score_with_params(tmp_path, _params_with(tmp_path, similarity="auto"))
    assert r.returncode == 0, r.stderr
    expected = "spacy-lg" if _spacy_lg_installed() else "exact"
    assert json.loads(out.read_text())["similarity"] == expected
    if expected == "exact":
        assert "AMBER uses exact word matching" in r.stderr


@pytest.mark.skipif(not _spacy_lg_installed(), reason="spaCy or en_core_web_lg is not installed (pip install spacy "
                    "&& python -m spacy download en_core_web_lg)")
def test_score_stage_runs_with_spacy_lg_when_installed(tmp_path):
    r, out = _score_with_params(tmp_path, _params_with(tmp_path, similarity="spacy-lg"))
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["similarity"] == "spacy-lg"
