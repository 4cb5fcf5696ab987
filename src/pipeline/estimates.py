"""Accuracy from a judge plus a few human labels, and how far to trust the judge's P(correct).

    ppi_mean(labels, judged_labelled, judged_unlabelled)   prediction-powered estimate (PPI++) with its interval
    classical_mean(labels)                                  the human labels alone, with the same normal interval
    labels_needed_ppi(...) / labels_needed_classical(...)   labels for a chosen half-width, from measured variances
    best_kappa_threshold, equal_error_threshold, calibration_error   thresholds and calibration against humans
    paired_bootstrap(a, b)                                  intervals of agreement and Cohen's kappa of two raters
    label_shortage(labels, min_labels)                      "too few labels (n): why", or "" when there are enough

Prediction-powered inference (Angelopoulos et al. 2023, Science) estimates the mean of the human label Y over all
answers from the judge's score f on every answer, corrected by the judge's error on the labelled ones:

    estimate = lam * mean(f over the unlabelled) + mean(Y - lam * f over the labelled)

Its power-tuned form (PPI++, Angelopoulos, Duchi and Zrnic 2023) picks lam in [0, 1] to minimise the variance:
lam = Cov(Y, f) / ((1 + n/N) Var(f)), with the covariance over the n labelled answers and the variance over all of
them; lam = 0 is the human labels alone, lam = 1 plain PPI. The 95% interval is normal, with the standard error
sqrt(Var(lam f)/N + Var(Y - lam f)/n) (population variances, as the reference implementation `ppi-python`, against
which tests/test_estimates.py checks these functions). It is valid whatever the judge's bias, provided the labelled
answers are a uniform random sample of the run (what stage=label draws) and the judge was not tuned on them. An
accuracy lies in [0, 1], and so do the intervals given here (a normal interval near 0 or 1 is clipped to it).

Few labels, or labels of one class only, give these statistics nothing to stand on: a normal interval from 2 labels
spans [-0.19, 1.19], 12 labels that all say "correct" have no variance (an interval [1, 1] and "0 labels needed"),
and a kappa or a threshold chosen on 3 labels is noise. `label_shortage` says when: below report.min_labels labels,
or without both classes among them, the report gives "too few labels (n)" instead of a number.

Plain numpy and the standard library (statistics.NormalDist for the normal quantile): no scipy at run time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from .stats import cohen_kappa

LEVEL = 0.95


def z_value(level: float = LEVEL) -> float:
    return NormalDist().inv_cdf(1 - (1 - level) / 2)


@dataclass(frozen=True)
class Estimate:
    """A mean with its interval; `lam` is PPI++'s weight on the judge (None for other estimates)."""

    value: float
    lo: float
    hi: float
    n: int  # labelled answers (PPI, human-only) or answers (judge-only)
    se: float
    lam: float | None = None

    @property
    def halfwidth(self) -> float:
        return (self.hi - self.lo) / 2


NAN_ESTIMATE = Estimate(math.nan, math.nan, math.nan, 0, math.nan)


def normal_interval(value: float, se: float, n: int, level: float = LEVEL, lam: float | None = None) -> Estimate:
    """value +- z * se, clipped to [0, 1] (the estimates here are shares of answers; so is a PPI++ point estimate
    that the judge's correction pushes past an edge)."""
    z = z_value(level)
    lo, hi = max(0.0, value - z * se), min(1.0, value + z * se)
    return Estimate(float(min(max(value, 0.0), 1.0)), float(lo), float(hi), n, float(se), lam)


def label_shortage(y, min_labels: int) -> str:
    """Why the human labels `y` (1/0) are too few for a statistic that rests on them, or "" when they are enough:
    fewer than `min_labels` (report.min_labels), or all of one class (no variance, no kappa, no threshold)."""
    y = np.asarray(y, dtype=float)
    n = len(y)
    if n < min_labels:
        return f"too few labels ({n}): fewer than report.min_labels={min_labels}"
    if y.min() == y.max():
        return f"too few labels ({n}): all of them say {'correct' if y[0] == 1 else 'incorrect'}; both classes " \
               "are needed"
    return ""


def classical_mean(y, level: float = LEVEL) -> Estimate:
    """The mean of `y` with the normal interval mean +- z * std / sqrt(n) (NaN below two values)."""
    y = np.asarray(y, dtype=float)
    if len(y) < 2:
        return Estimate(float(y.mean()) if len(y) else math.nan, math.nan, math.nan, len(y), math.nan)
    return normal_interval(y.mean(), y.std() / math.sqrt(len(y)), len(y), level)


def power_tuning(y: np.ndarray, f: np.ndarray, f_unlabelled: np.ndarray) -> float:
    """PPI++'s lam for a mean, clipped to [0, 1]; 0 when the judge's scores do not vary."""
    n, big_n = len(y), len(f_unlabelled)
    covariance = float(np.mean((y - y.mean()) * (f - f.mean())))
    variance = float(np.var(np.concatenate([f, f_unlabelled]), ddof=1))
    if variance <= 0 or not np.isfinite(variance):
        return 0.0
    return float(np.clip(covariance / ((1 + n / big_n) * variance), 0.0, 1.0))


def ppi_mean(y, f, f_unlabelled, level: float = LEVEL, lam: float | None = None) -> Estimate:
    """The prediction-powered (PPI++) estimate of the mean of `y`: `y` the human labels of the labelled answers,
    `f` the judge's scores of the same answers, `f_unlabelled` its scores of the others. Without unlabelled answers
    it is the human labels' own mean."""
    y, f, fu = (np.asarray(v, dtype=float) for v in (y, f, f_unlabelled))
    if len(y) != len(f):
        raise ValueError(f"{len(y)} labels but {len(f)} judge scores of the labelled answers")
    if len(fu) == 0 or len(y) < 2:
        return classical_mean(y, level)
    if lam is None:
        lam = power_tuning(y, f, fu)
    value = lam * fu.mean() + (y - lam * f).mean()
    se = math.sqrt(np.var(lam * fu) / len(fu) + np.var(y - lam * f) / len(y))
    return normal_interval(value, se, len(y), level, lam)


def labels_needed_ppi(y, f, f_unlabelled, halfwidth: float, level: float = LEVEL) -> float:
    """The fewest labels (out of all the answers) whose PPI++ interval would have this half-width, were the measured
    variances and lam the true ones; NaN when even labelling every answer would not reach it, or when the labels
    are all of one class (no variance measured)."""
    y, f, fu = (np.asarray(v, dtype=float) for v in (y, f, f_unlabelled))
    total = len(f) + len(fu)
    if len(y) < 2 or total < 2 or y.min() == y.max():
        return math.nan
    lam = power_tuning(y, f, fu) if len(fu) else 0.0
    judge_var = float(np.var(lam * np.concatenate([f, fu])))
    rectifier_var = float(np.var(y - lam * f))
    n = np.arange(1, total + 1, dtype=float)
    unlabelled = np.maximum(total - n, 1.0)
    se = np.sqrt(np.where(n < total, judge_var / unlabelled, 0.0) + rectifier_var / n)
    reached = np.nonzero(z_value(level) * se <= halfwidth)[0]
    return float(reached[0] + 1) if len(reached) else math.nan


def labels_needed_classical(y, halfwidth: float, level: float = LEVEL) -> float:
    """Labels for a human-only normal interval of this half-width, at the measured accuracy (NaN when the labels are
    all of one class: their variance, 0, says nothing of the next ones)."""
    y = np.asarray(y, dtype=float)
    if len(y) < 2 or y.min() == y.max():
        return math.nan
    return float(math.ceil((z_value(level) / halfwidth) ** 2 * float(np.var(y))))


# ------------------------------------------------------------------------------ thresholds and calibration

def threshold_counts(p: np.ndarray, y: np.ndarray):
    """For each distinct score t (descending): how many answers have p >= t, and how many of them are correct."""
    order = np.argsort(-p, kind="mergesort")
    ps, ys = p[order], y[order]
    last = np.r_[np.nonzero(np.diff(ps))[0], len(ps) - 1]  # the last position of each distinct score
    return ps[last], last + 1.0, np.cumsum(ys)[last]


def kappa_curve(p, y):
    """(thresholds, Cohen's kappa of `p >= t` against y) for every distinct score t."""
    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=float)
    t, called, true_pos = threshold_counts(p, y)
    n, pos = len(y), y.sum()
    false_pos = called - true_pos
    true_neg = (n - pos) - false_pos
    observed = (true_pos + true_neg) / n
    expected = (called / n) * (pos / n) + ((n - called) / n) * ((n - pos) / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.where(expected < 1, (observed - expected) / (1 - expected), np.nan)
    return t, kappa


def best_kappa_threshold(p, y) -> tuple[float, float]:
    """(threshold, kappa): the P(correct) threshold whose verdicts agree best with the labels (Cohen's kappa); the
    lowest such threshold on ties. NaN without both classes."""
    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=float)
    if len(p) == 0 or y.min() == y.max():
        return math.nan, math.nan
    t, kappa = kappa_curve(p, y)
    if np.all(np.isnan(kappa)):
        return math.nan, math.nan
    best = np.nanmax(kappa)
    i = int(np.nonzero(kappa == best)[0][-1])  # thresholds descend: the last one is the lowest
    return float(t[i]), float(best)


def equal_error_threshold(p, y) -> tuple[float, float]:
    """(threshold, error rate): where the false positive rate (among human-incorrect answers) and the false
    negative rate (among human-correct ones) of `p >= t` are closest; the rate is their mean there."""
    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=float)
    pos, neg = y.sum(), len(y) - y.sum()
    if len(p) == 0 or pos == 0 or neg == 0:
        return math.nan, math.nan
    t, called, true_pos = threshold_counts(p, y)
    fpr = (called - true_pos) / neg
    fnr = (pos - true_pos) / pos
    i = int(np.argmin(np.abs(fpr - fnr)))
    return float(t[i]), float((fpr[i] + fnr[i]) / 2)


def calibration_error(p, y, bins: int = 10) -> float:
    """Expected calibration error: over equal-width bins of P(correct) (edges as scikit-learn's calibration_curve
    puts them), the answer-weighted mean gap between the share correct and the mean P(correct)."""
    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=float)
    if len(p) == 0:
        return math.nan
    which = np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], p)
    count = np.bincount(which, minlength=bins)
    gap = np.abs(np.bincount(which, weights=y, minlength=bins) - np.bincount(which, weights=p, minlength=bins))
    return float(gap.sum() / count.sum())


def verdicts_at(p, y, threshold: float) -> dict:
    """What `p >= threshold` gives: accuracy over the scored answers, and agreement and kappa with the labels."""
    called = np.asarray(p, dtype=float) >= threshold
    return {"accuracy": float(called.mean()) if len(called) else math.nan,
            "agreement": float(np.mean(called == np.asarray(y, dtype=bool))) if len(called) else math.nan,
            "kappa": cohen_kappa(called, y)}


# --------------------------------------------------------------------------------------------- bootstrap

def paired_bootstrap(a, b, resamples: int = 1000, seed: int = 0, level: float = LEVEL) -> dict:
    """Percentile bootstrap intervals of the agreement and of Cohen's kappa of two yes/no raters, resampling the
    answers (vectorised, in blocks of a few million cells so that 100,000 answers stay within memory)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    n = len(a)
    out = {"agreement": (math.nan, math.nan), "kappa": (math.nan, math.nan)}
    if n == 0 or resamples < 1:
        return out
    rng = np.random.default_rng(seed)
    agree, kappa = [], []
    block = max(1, 4_000_000 // n)
    for start in range(0, resamples, block):
        idx = rng.integers(0, n, size=(min(block, resamples - start), n))
        x, y = a[idx], b[idx]
        observed = (x == y).mean(axis=1)
        px, py = x.mean(axis=1), y.mean(axis=1)
        expected = px * py + (1 - px) * (1 - py)
        agree.append(observed)
        with np.errstate(divide="ignore", invalid="ignore"):
            kappa.append(np.where(expected < 1, (observed - expected) / (1 - expected), np.nan))
    tail = (1 - level) / 2 * 100
    for name, values in (("agreement", np.concatenate(agree)), ("kappa", np.concatenate(kappa))):
        values = values[~np.isnan(values)]
        if len(values):
            out[name] = (float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail)))
    return out
