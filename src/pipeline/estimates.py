"""Accuracy from a judge plus a few human labels, and how far to trust the judge's P(correct).

    ppi_mean(labels, judged_labelled, judged_unlabelled)   prediction-powered estimate (PPI++) with its interval
    stratified_ppi_mean(..., strata, strata_unlabelled)     PPI++ within each subset of answers, weighted by its size
    stratum_shortage(labels, strata, min_labels)            "too few labels in ...", or "" when every subset has enough
    classical_mean(labels)                                  the human labels alone, with the same normal interval
    labels_needed_ppi(...) / labels_needed_classical(...)   labels for a chosen half-width, from measured variances
    ppi_halfwidths(...), suited_halfwidth(...)              the half-width n labels would give; one a run can reach
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

Stratified (StratPPI, Fisch et al. 2024): when the judge is better on some subsets of the answers than on others
(a topic, a difficulty), the PPI estimate within each subset k and the subsets' estimates weighted by their share
of all answers N_k/N: estimate = sum_k N_k/N * estimate_k, standard error sqrt(sum_k (N_k/N)^2 se_k^2). The labels
stay one uniform sample of the run; each subset's labelled answers are then a uniform sample of it, given how many
fell there, which is what the post-stratified estimate needs. One lam, power-tuned on all the labels, serves every
subset: a lam tuned on each subset's own 30 to 50 labels covered the truth only 92.3% of the time in the synthetic
test (tests/test_estimates.py), one shared lam 94%, still narrower than the plain estimate. Each subset needs
STRATUM_MIN_LABELS labels of its own (stratum_shortage).

Few labels, or labels of one class only, give these statistics nothing to stand on: a normal interval from 2 labels
spans [-0.19, 1.19], 12 labels that all say "correct" have no variance (an interval [1, 1] and "0 labels needed"),
and a kappa or a threshold chosen on 3 labels is noise. `label_shortage` says when: below report.min_labels labels,
or without both classes among them, the report gives "too few labels (n)" instead of a number.

Plain numpy, pandas and the standard library (statistics.NormalDist for the normal quantile): no scipy at run time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import pandas as pd

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


def ppi_parts(y: np.ndarray, f: np.ndarray, fu: np.ndarray, lam: float | None = None) -> tuple[float, float, float]:
    """(estimate, standard error, lam) of PPI++, the estimate not clipped to [0, 1]; with no unlabelled answers the
    labels' own mean and standard error (lam 0)."""
    if len(fu) == 0:
        return float(y.mean()), float(y.std() / math.sqrt(len(y))), 0.0
    if lam is None:
        lam = power_tuning(y, f, fu)
    value = lam * fu.mean() + (y - lam * f).mean()
    return float(value), math.sqrt(np.var(lam * fu) / len(fu) + np.var(y - lam * f) / len(y)), lam


def ppi_mean(y, f, f_unlabelled, level: float = LEVEL, lam: float | None = None) -> Estimate:
    """The prediction-powered (PPI++) estimate of the mean of `y`: `y` the human labels of the labelled answers,
    `f` the judge's scores of the same answers, `f_unlabelled` its scores of the others. Without unlabelled answers
    it is the human labels' own mean."""
    y, f, fu = (np.asarray(v, dtype=float) for v in (y, f, f_unlabelled))
    if len(y) != len(f):
        raise ValueError(f"{len(y)} labels but {len(f)} judge scores of the labelled answers")
    if len(fu) == 0 or len(y) < 2:
        return classical_mean(y, level)
    value, se, lam = ppi_parts(y, f, fu, lam)
    return normal_interval(value, se, len(y), level, lam)


STRATUM_MIN_LABELS = 10  # labels each subset needs for its own PPI++ estimate and standard error


def stratum_shortage(y, strata, min_labels: int, strata_all=None) -> str:
    """Why the labels `y` are too few for a stratified estimate, or "": too few overall (label_shortage), or a
    subset (`strata`: each label's subset; `strata_all`: every answer's, so that a subset without any label is
    named too) with fewer than STRATUM_MIN_LABELS labels."""
    if note := label_shortage(y, min_labels):
        return note
    counts = pd.Series(np.asarray(strata, dtype=object)).value_counts()
    names = pd.unique(np.asarray(strata_all if strata_all is not None else strata, dtype=object))
    short = sorted((str(k), int(counts.get(k, 0))) for k in names if counts.get(k, 0) < STRATUM_MIN_LABELS)
    if not short:
        return ""
    shown = ", ".join(f"{k} ({n})" for k, n in short[:5]) + (f" and {len(short) - 5} more" if len(short) > 5 else "")
    return (f"too few labels in {len(short)} of {len(names)} subsets: {shown}; each needs {STRATUM_MIN_LABELS} "
            "(label more answers with stage=label, or break down by a coarser column)")


def stratified_ppi_mean(y, f, f_unlabelled, strata, strata_unlabelled, level: float = LEVEL) -> Estimate:
    """PPI++ stratified by subset: `strata` the subset of each labelled answer (aligned with `y` and `f`),
    `strata_unlabelled` of each unlabelled one (aligned with `f_unlabelled`). Each subset needs two labels at least
    (stratum_shortage asks for more); with one subset it is ppi_mean. Returns the combined estimate and interval,
    n the labels and lam the one all subsets share."""
    y, f, fu = (np.asarray(v, dtype=float) for v in (y, f, f_unlabelled))
    strata, strata_u = np.asarray(strata, dtype=object), np.asarray(strata_unlabelled, dtype=object)
    if not len(y) == len(f) == len(strata) or len(fu) != len(strata_u):
        raise ValueError("labels, judge scores and subsets must be aligned")
    total = len(y) + len(fu)
    lam = power_tuning(y, f, fu) if len(fu) and len(y) >= 2 else 0.0
    value, variance = 0.0, 0.0
    for k in pd.unique(np.concatenate([strata, strata_u])):
        mine, theirs = strata == k, strata_u == k
        yk = y[mine]
        if len(yk) < 2:
            raise ValueError(f"subset {k!r} holds {len(yk)} labels; a stratified estimate needs 2 at least")
        v, se, _ = ppi_parts(yk, f[mine], fu[theirs], lam)
        weight = (len(yk) + int(theirs.sum())) / total
        value += weight * v
        variance += weight**2 * se**2
    return normal_interval(value, math.sqrt(variance), len(y), level, lam)


def ppi_halfwidths(y, f, f_unlabelled, level: float = LEVEL) -> np.ndarray:
    """The PPI++ interval's half-width were n of the run's answers labelled, for n = 1 .. all of them (element n-1),
    from the moments the labels measured (the labels' variance, their covariance with the judge's scores, the
    scores' variance) taken as the true ones, and lam tuned again for each n as PPI++ would (it falls towards 0 as
    the unlabelled answers run out, so the curve only falls); empty when the labels are all of one class."""
    y, f, fu = (np.asarray(v, dtype=float) for v in (y, f, f_unlabelled))
    total = len(f) + len(fu)
    if len(y) < 2 or total < 2 or y.min() == y.max():
        return np.array([])
    var_y, var_f_labelled = float(np.var(y)), float(np.var(f))
    covariance = float(np.mean((y - y.mean()) * (f - f.mean())))
    var_f = float(np.var(np.concatenate([f, fu]), ddof=1))
    n = np.arange(1, total + 1, dtype=float)
    unlabelled = total - n
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = np.where(unlabelled > 0, covariance / ((1 + n / np.maximum(unlabelled, 1)) * var_f), 0.0) \
            if var_f > 0 else np.zeros_like(n)
        lam = np.clip(np.nan_to_num(lam), 0.0, 1.0)
        judge_term = np.where(unlabelled > 0, lam**2 * var_f / np.maximum(unlabelled, 1), 0.0)
    rectifier = np.maximum(var_y - 2 * lam * covariance + lam**2 * var_f_labelled, 0.0)
    return z_value(level) * np.sqrt(judge_term + rectifier / n)


def classical_halfwidths(y, total: int, level: float = LEVEL) -> np.ndarray:
    """The human-only interval's half-width with n labels, n = 1 .. total; empty for labels of one class."""
    y = np.asarray(y, dtype=float)
    if len(y) < 2 or y.min() == y.max():
        return np.array([])
    return z_value(level) * np.sqrt(float(np.var(y)) / np.arange(1, total + 1, dtype=float))


def labels_for(halfwidths: np.ndarray, halfwidth: float) -> float:
    """The fewest labels whose half-width (a curve of ppi_halfwidths) is at most `halfwidth`; NaN when none."""
    reached = np.nonzero(halfwidths <= halfwidth)[0]
    return float(reached[0] + 1) if len(reached) else math.nan


def labels_needed_ppi(y, f, f_unlabelled, halfwidth: float, level: float = LEVEL) -> float:
    """The fewest labels (out of all the answers) whose PPI++ interval would have this half-width, were the measured
    variances and lam the true ones; NaN when even labelling every answer would not reach it, or when the labels
    are all of one class (no variance measured)."""
    return labels_for(ppi_halfwidths(y, f, f_unlabelled, level), halfwidth)


def labels_needed_classical(y, halfwidth: float, level: float = LEVEL) -> float:
    """Labels for a human-only normal interval of this half-width, at the measured accuracy (NaN when the labels are
    all of one class: their variance, 0, says nothing of the next ones)."""
    y = np.asarray(y, dtype=float)
    if len(y) < 2 or y.min() == y.max():
        return math.nan
    return float(math.ceil((z_value(level) / halfwidth) ** 2 * float(np.var(y))))


# The half-widths a plan of labels is offered for, when report.target_halfwidth is beyond a run's size.
SUITED_HALFWIDTHS = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2)


def suited_halfwidth(halfwidths: np.ndarray, target: float, labels: int = 0) -> float:
    """`target` when a plan within reach gets there (labelling at most half the run's answers, or `labels` in all,
    whichever is more; `halfwidths` the curve of ppi_halfwidths), else the narrowest of SUITED_HALFWIDTHS wider than
    it that does; NaN when none does (a run too small to estimate from a sample of its answers)."""
    reach = halfwidths[: max(1, len(halfwidths) // 2, min(labels, len(halfwidths)))]
    for h in (target, *(h for h in SUITED_HALFWIDTHS if h > target)):
        if len(reach) and reach.min() <= h:
            return h
    return math.nan


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
