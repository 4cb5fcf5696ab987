"""Lexical answer metrics: exact match and token F1 (SQuAD definitions), reference containment, ROUGE-L.

`normalize_answer` is the SQuAD v1.1 normalisation (lower-case, drop punctuation, drop the articles a/an/the,
collapse whitespace); exact match and token F1 take the best score over all reference answers, as the SQuAD
and NQ-open evaluation scripts do.
"""

from __future__ import annotations

import re
import string
from collections import Counter

# The yes/no criteria every report scores each answer by (the lexical ones here, the judge's verdict, the human label).
CRITERIA = ("exact_match", "token_f1", "contains", "rouge_l", "judge", "human")
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


def rouge_tokens(text: str) -> list[str]:
    """Tokens as the rouge-score package makes them (lower case, runs of letters and digits), but keeping
    non-ASCII letters and digits, which its ASCII-only pattern drops; identical on ASCII text."""
    return "".join(c if c.isalnum() else " " for c in text.lower()).split()


def lcs_length(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l_pair(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure: from the longest common subsequence of tokens (precision vs prediction, recall vs
    reference), no stemming, as rouge-score's default."""
    pred, ref = rouge_tokens(prediction), rouge_tokens(reference)
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str, references: list[str]) -> float:
    """Best ROUGE-L F over the references; `> 0.5` is the correctness criterion of the uncertainty literature."""
    return max((rouge_l_pair(prediction, ref) for ref in references), default=0.0)


def contains_reference(prediction: str, references: list[str]) -> bool:
    """A normalised reference appears in the normalised prediction as whole tokens ("8" is not in "1985")."""
    pred = normalize_answer(prediction).split()
    for ref in references:
        tokens = normalize_answer(ref).split()
        if tokens and any(pred[i:i + len(tokens)] == tokens for i in range(len(pred) - len(tokens) + 1)):
            return True
    return False
