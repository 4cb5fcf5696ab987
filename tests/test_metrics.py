"""SQuAD-style normalisation, exact match and token F1 against hand-computed values."""

import pytest

from pipeline.metrics import exact_match, normalize_answer, token_f1


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
