"""metrics.py: SQuAD-style normalisation, exact match, token F1, ROUGE-L and whole-token containment of a
reference, each against values worked out by hand."""

import random

import pytest

from pipeline.metrics import contains_reference, exact_match, normalize_answer, rouge_l, rouge_tokens, token_f1


@pytest.mark.parametrize("text, expected", [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  an   Apple, a day ", "apple day"),
    ("Theatre", "theatre"),  # "the" is removed only as a whole word
    ("U.S.A.", "usa"),
    ("", ""),
    ("Pelé", "pelé"),  # accents are kept, as in the SQuAD script
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_takes_any_reference():
    assert exact_match("the Shakespeare", ["William Shakespeare", "Shakespeare"])
    assert not exact_match("Shakespeare wrote it", ["Shakespeare"])
    assert not exact_match("", ["Paris"])


def test_token_f1_hand_computed():
    # prediction tokens: capital, is, paris (3); reference: paris (1); overlap 1 -> P=1/3, R=1, F1=0.5
    assert token_f1("The capital is Paris.", ["Paris"]) == pytest.approx(0.5)
    # best reference wins: "new york city" vs "new york" -> P=2/3, R=1 -> 0.8
    assert token_f1("New York City", ["NYC", "New York"]) == pytest.approx(0.8)
    # repeated tokens count once per occurrence in both
    assert token_f1("paris paris", ["paris"]) == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert token_f1("", ["Paris"]) == 0.0
    assert token_f1("the", ["a"]) == 1.0  # both normalise to empty


def test_rouge_l_hand_computed():
    # LCS("the cat sat on the mat", "the cat on the mat") = 5 tokens: P = 5/6, R = 5/5 -> F = 10/11
    assert rouge_l("The cat sat on the mat.", ["the cat on the mat"]) == pytest.approx(10 / 11)
    assert rouge_l("Paris", ["Lyon", "Paris"]) == 1.0  # best reference
    assert rouge_l("", ["Paris"]) == 0.0 and rouge_l("Paris", []) == 0.0
    assert rouge_l("It was Pelé.", ["Pelé"]) == pytest.approx(2 * (1 / 3) / (1 / 3 + 1))
    assert rouge_tokens("Don't stop-me NOW!") == ["don", "t", "stop", "me", "now"]  # rouge-score's tokens
    assert rouge_tokens("Zürich, 東京") == ["zürich", "東京"]  # non-ASCII letters kept


def test_contains_reference_matches_whole_tokens():
    assert contains_reference("It was The Beatles, of course.", ["Beatles"])
    assert contains_reference("The answer is eight legs", ["8", "eight"])
    assert not contains_reference("In 1985 it was founded", ["8"])
    assert not contains_reference("", ["Paris"]) and not contains_reference("Paris", [""])
    assert contains_reference("Antoine de Saint-Exupéry wrote it", ["Saint-Exupéry"])


def test_rouge_l_equals_googles_rouge_score_on_ascii_text():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pairs = [("The cat sat on the mat.", "the cat on the mat"), ("Paris", "paris, France"),
             ("It was in 1985, I think", "1985"), ("George Washington", "Washington, George"),
             ("", "Paris"), ("a b c d e f", "f e d c b a"), ("New York City", "new york"),
             ("the the the", "the"), ("Don't stop-me NOW!", "dont stop me now")]
    rng = random.Random(0)
    words = "a an the cat dog paris york new 1985 x-ray don't".split()
    pairs += [(" ".join(rng.choices(words, k=rng.randint(1, 12))), " ".join(rng.choices(words, k=rng.randint(1, 6))))
              for _ in range(200)]
    for prediction, reference in pairs:
        expected = scorer.score(reference, prediction)["rougeL"].fmeasure
        assert rouge_l(prediction, [reference]) == pytest.approx(expected, abs=1e-12), (prediction, reference)
