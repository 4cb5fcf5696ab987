"""stats.py: Cohen's kappa, raw agreement and AUROC with ties against values worked out by hand; the Wilson interval
of a proportion against statsmodels (the bootstrap of agreement and kappa: tests/test_estimates.py)."""

import math

import numpy as np
import pytest

from pipeline.stats import agreement, auroc, cohen_kappa, proportion_interval


def test_cohen_kappa_known_values():
    # 50 items: both yes 20, only A yes 5, only B yes 10, both no 15 -> p_o = .7, p_e = .5*.6 + .5*.4 = .5, k = .4
    a = [1] * 20 + [1] * 5 + [0] * 10 + [0] * 15
    b = [1] * 20 + [0] * 5 + [1] * 10 + [0] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert agreement(a, b) == pytest.approx(0.7)
    assert cohen_kappa([1, 0, 1], [1, 0, 1]) == 1.0
    assert math.isnan(cohen_kappa([1, 1], [1, 1]))  # both raters constant and equal: chance agreement is 1


def test_auroc_known_values_and_ties():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([1, 1, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.5)  # all tied: one half
    assert auroc([3, 2, 1], [1, 1, 0]) == 1.0 and auroc([1, 2, 3], [1, 1, 0]) == 0.0
    assert math.isnan(auroc([1, 2], [1, 1]))  # one class only


@pytest.mark.parametrize("correct, n", [(0, 16), (2, 2), (16, 16), (1, 1), (0, 1), (5, 20), (137, 200), (1, 3000)])
def test_wilson_interval_equals_statsmodels(correct, n):
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_interval(correct, n)
    assert (lo, hi) == pytest.approx(proportion_confint(correct, n, alpha=0.05, method="wilson"), abs=1e-12)
    assert 0 <= lo <= correct / n <= hi <= 1


def test_proportion_interval_does_not_collapse_at_the_edges():
    assert proportion_interval(0, 16)[1] > 0.15  # 0/16 is not "certainly 0": the bootstrap gave [0, 0]
    assert proportion_interval(2, 2)[0] < 0.5  # nor 2/2 certainly 1
    assert all(math.isnan(x) for x in proportion_interval(0, 0))


@pytest.mark.parametrize("n", [16, 50])
def test_wilson_interval_covers_about_95_percent_at_small_n(n):
    from scipy.stats import binom

    coverage = []
    for p in np.linspace(0.05, 0.95, 37):  # exact: the probability of every k whose interval holds p
        covering = [k for k in range(n + 1) if proportion_interval(k, n)[0] <= p <= proportion_interval(k, n)[1]]
        coverage.append(binom.pmf(covering, n, p).sum())
    assert 0.94 <= np.mean(coverage) <= 0.965 and min(coverage) > 0.9
