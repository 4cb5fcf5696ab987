"""stats.py: Cohen's kappa, raw agreement, AUROC with ties, and the seeded bootstrap interval, each against values
worked out by hand."""

import math

import numpy as np
import pytest

from pipeline.stats import agreement, auroc, bootstrap_ci, cohen_kappa


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


def test_bootstrap_interval_is_seeded_and_shrinks_with_more_data():
    rng = np.random.default_rng(1)
    small, large = rng.integers(0, 2, 40), rng.integers(0, 2, 4000)
    lo, hi = bootstrap_ci(small, resamples=500, seed=3)
    assert lo <= small.mean() <= hi and (lo, hi) == bootstrap_ci(small, resamples=500, seed=3)
    lo2, hi2 = bootstrap_ci(large, resamples=500, seed=3)
    assert hi2 - lo2 < (hi - lo) / 5
    assert all(math.isnan(x) for x in bootstrap_ci([]))
