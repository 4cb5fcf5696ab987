"""Lexical answer metrics with the standard SQuAD definitions.

`normalize_answer` is the SQuAD v1.1 normalisation (lower-case, drop punctuation, drop the articles a/an/the,
collapse whitespace); exact match and token F1 take the best score over all reference answers, as the SQuAD
and NQ-open evaluation scripts do.
"""

from __future__ import annotations

import re
import string
from collections import Counter

PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, references: list[str]) -> bool:
    pred = normalize_answer(prediction)
    return any(pred == normalize_answer(ref) for ref in references)


def f1_pair(prediction: str, reference: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    ref_tokens = normalize_answer(reference).split()
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)  # both empty: 1, one empty: 0
    common = Counter(pred_tokens) & Counter(ref_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, references: list[str]) -> float:
    return max((f1_pair(prediction, ref) for ref in references), default=0.0)
