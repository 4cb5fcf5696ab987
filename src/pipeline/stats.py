"""Agreement and ranking statistics for the report: Cohen's kappa, AUROC, bootstrap confidence intervals.

Plain numpy with the textbook definitions (no scikit-learn or scipy for a few lines each):
  - Cohen's kappa: (p_o - p_e) / (1 - p_e) for two binary raters; undefined (NaN) when p_e = 1.
  - AUROC: the Mann-Whitney probability that a random positive scores above a random negative, ties counting
    one half; undefined (NaN) without both classes.
  - Percentile bootstrap: resample the rows with replacement, recompute, take the 2.5th and 97.5th percentiles.
"""

from __future__ import annotations

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


def bootstrap_ci(values, statistic=np.mean, resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over the rows of `values` (a 1-D array or an [n, k] array)."""
    values = np.asarray(values)
    if len(values) == 0 or resamples < 1:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    stats = np.array([statistic(values[i]) for i in idx], dtype=float)
    stats = stats[~np.isnan(stats)]
    if len(stats) == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    return float(np.percentile(stats, tail)), float(np.percentile(stats, 100 - tail))
