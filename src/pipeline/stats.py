"""Agreement and ranking statistics for the report: Cohen's kappa, AUROC, the interval of a proportion.

Plain numpy with the textbook definitions (no scikit-learn or scipy for a few lines each):
  - Cohen's kappa: (p_o - p_e) / (1 - p_e) for two binary raters; undefined (NaN) when p_e = 1.
  - AUROC: the Mann-Whitney probability that a random positive scores above a random negative, ties counting
    one half; undefined (NaN) without both classes.
  - Wilson score interval of a proportion k/n (every accuracy): the p whose normal test does not reject k/n,
    (k + z^2/2 +- z sqrt(k(n-k)/n + z^2/4)) / (n + z^2). Unlike the percentile bootstrap it does not collapse at
    the edges (0/16 gives [0, 0.194], not [0, 0]; 2/2 gives [0.342, 1], not [1, 1]) and its coverage stays near
    95% at small n (Brown, Cai and DasGupta 2001 recommend it there). tests/test_stats.py checks it against
    statsmodels' proportion_confint, and its exact coverage at n = 16 and 50.
Agreement and kappa, which have no such formula, get percentile bootstrap intervals (estimates.paired_bootstrap).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np


def agreement(a, b) -> float:
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    return float(np.mean(a == b)) if len(a) else float("nan")


def cohen_kappa(a, b) -> float:
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if len(a) == 0:
        return float("nan")
    observed = np.mean(a == b)
    expected = np.mean(a) * np.mean(b) + np.mean(~a) * np.mean(~b)
    return float((observed - expected) / (1 - expected)) if expected < 1 else float("nan")


def auroc(scores, labels) -> float:
    """P(score of a positive > score of a negative), ties counting 1/2 (average ranks)."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def proportion_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of the proportion successes / n; (NaN, NaN) when n is 0."""
    if n <= 0:
        return float("nan"), float("nan")
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    centre = (successes + z * z / 2) / (n + z * z)
    half = z / (n + z * z) * math.sqrt(successes * (n - successes) / n + z * z / 4)
    lo = 0.0 if successes <= 0 else max(0.0, centre - half)  # exactly 0 and 1 at the edges, no rounding residue
    hi = 1.0 if successes >= n else min(1.0, centre + half)
    return float(lo), float(hi)

