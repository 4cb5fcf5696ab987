"""estimates.py against the libraries that define each statistic (ppi-python, scikit-learn, scipy), and the PPI
interval's coverage on synthetic runs with a known truth: an informative judge, and a deliberately biased one."""

import math

import numpy as np
import pytest

ppi_py = pytest.importorskip("ppi_py")
sklearn_metrics = pytest.importorskip("sklearn.metrics")
from scipy import stats as scipy_stats  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402

from pipeline import estimates  # noqa: E402
from pipeline.stats import auroc, cohen_kappa  # noqa: E402


def synthetic(rng, n_all, accuracy, p_flip_correct, p_flip_wrong):
    """A run's true labels and a judge that calls a correct answer wrong with p_flip_correct and a wrong one
    correct with p_flip_wrong."""
    y = (rng.random(n_all) < accuracy).astype(float)
    flip = np.where(y == 1, rng.random(n_all) < p_flip_correct, rng.random(n_all) < p_flip_wrong)
    return y, np.where(flip, 1 - y, y)


@pytest.mark.parametrize("continuous", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ppi_equals_the_reference_implementation(seed, continuous):
    rng = np.random.default_rng(seed)
    y_all, f_all = synthetic(rng, 1500, 0.55 + 0.1 * seed, 0.1, 0.3)
    if continuous:  # a P(correct) rather than a verdict
        f_all = np.clip(f_all * 0.7 + rng.random(1500) * 0.3, 0, 1)
    labelled = rng.choice(1500, 120 + 40 * seed, replace=False)
    mask = np.zeros(1500, bool)
    mask[labelled] = True
    y, f, fu = y_all[mask], f_all[mask], f_all[~mask]
    ours = estimates.ppi_mean(y, f, fu)
    assert ours.value == pytest.approx(ppi_py.ppi_mean_pointestimate(y, f, fu)[0], abs=1e-9)
    lo, hi = ppi_py.ppi_mean_ci(y, f, fu, alpha=0.05)
    assert (ours.lo, ours.hi) == pytest.approx((lo[0], hi[0]), abs=1e-6)
    assert 0 <= ours.lam <= 1
    plain = estimates.ppi_mean(y, f, fu, lam=1.0)  # lam=1 is the original PPI
    assert plain.value == pytest.approx(ppi_py.ppi_mean_pointestimate(y, f, fu, lam=1)[0], abs=1e-9)
    lo1, hi1 = ppi_py.ppi_mean_ci(y, f, fu, alpha=0.05, lam=1)
    assert (plain.lo, plain.hi) == pytest.approx((lo1[0], hi1[0]), abs=1e-6)
    human = estimates.classical_mean(y)
    assert (human.lo, human.hi) == pytest.approx(ppi_py.classical_mean_ci(y, alpha=0.05), abs=1e-6)


def coverage(make_run, n_labels, repeats, seed):
    """Over `repeats` draws of `make_run(rng)` -> (true labels, judge scores, the truth) and of a uniform subset of
    n_labels labels: how often each interval covers the truth, and their mean widths."""
    rng = np.random.default_rng(seed)
    covered, widths = {"ppi": 0, "human": 0, "judge": 0}, {"ppi": [], "human": []}
    for _ in range(repeats):
        y_all, f_all, truth = make_run(rng)
        mask = np.zeros(len(y_all), bool)
        mask[rng.choice(len(y_all), n_labels, replace=False)] = True
        ppi = estimates.ppi_mean(y_all[mask], f_all[mask], f_all[~mask])
        human = estimates.classical_mean(y_all[mask])
        judge = estimates.classical_mean(f_all)  # the judge alone, over every answer
        for name, est in (("ppi", ppi), ("human", human)):
            covered[name] += est.lo <= truth <= est.hi
            widths[name].append(est.hi - est.lo)
        covered["judge"] += judge.lo <= truth <= judge.hi
    return ({k: round(v / repeats, 4) for k, v in covered.items()},
            {k: round(float(np.mean(v)), 4) for k, v in widths.items()})


def one_run(accuracy, p_flip_correct, p_flip_wrong, n_all=3000):
    """A fresh run from the same population each time: the truth is the population's accuracy."""
    return lambda rng: (*synthetic(rng, n_all, accuracy, p_flip_correct, p_flip_wrong), accuracy)


def this_run(rng, accuracy, p_flip_correct, p_flip_wrong, n_all=3000):
    """One fixed run, only the labelled subset drawn again: the truth is this run's own accuracy."""
    y_all, f_all = synthetic(rng, n_all, accuracy, p_flip_correct, p_flip_wrong)
    return lambda _: (y_all, f_all, y_all.mean())


def test_ppi_covers_95_percent_and_is_narrower_with_an_informative_judge():
    cover, width = coverage(one_run(0.62, 0.08, 0.08), 200, 4000, seed=11)  # the judge agrees ~92% of the time
    print(f"informative judge, population accuracy: coverage {cover}, mean widths {width}")
    assert 0.935 <= cover["ppi"] <= 0.965 and 0.93 <= cover["human"] <= 0.965
    assert width["ppi"] < 0.75 * width["human"]
    # The accuracy of one fixed run (a finite population, 200 of 3000 labelled): the interval, made for the
    # population, is conservative there (it ignores that the labelled answers are part of the run).
    cover, width = coverage(this_run(np.random.default_rng(7), 0.62, 0.08, 0.08), 200, 2000, seed=12)
    print(f"informative judge, this run's accuracy: coverage {cover}, mean widths {width}")
    assert 0.94 <= cover["ppi"] <= 0.99


def test_ppi_stays_valid_when_the_judge_is_biased():
    y_all, f_all = synthetic(np.random.default_rng(8), 3000, 0.5, 0.02, 0.45)  # credits ~half the wrong answers
    assert f_all.mean() - y_all.mean() > 0.2  # the judge alone overstates accuracy by 20 points
    cover, width = coverage(one_run(0.5, 0.02, 0.45), 200, 4000, seed=13)
    print(f"biased judge, population accuracy: coverage {cover}, mean widths {width}")
    # ~94% at 200 labels, as the human-only normal interval gets at an accuracy of 0.5 (both are normal intervals;
    # 10,000 repeats: 0.941 and 0.940; at 400 labels 0.950 and 0.952)
    assert 0.93 <= cover["ppi"] <= 0.965 and abs(cover["ppi"] - cover["human"]) < 0.015
    assert cover["judge"] == 0.0  # the judge's own interval never holds the truth
    assert width["ppi"] <= width["human"] * 1.001  # power tuning does no worse than the labels alone


def test_an_uninformative_judge_falls_back_to_the_labels():
    rng = np.random.default_rng(3)
    y = (rng.random(300) < 0.5).astype(float)
    f, fu = np.full(300, 1.0), np.full(2000, 1.0)  # says "correct" to everything
    est = estimates.ppi_mean(y, f, fu)
    assert est.lam == 0.0
    assert (est.value, est.lo, est.hi) == pytest.approx(tuple(vars(estimates.classical_mean(y)).values())[:3])


def test_labels_needed_reach_the_half_width_and_no_fewer_do():
    rng = np.random.default_rng(5)
    y_all, f_all = synthetic(rng, 5000, 0.6, 0.1, 0.1)
    y, f, fu = y_all[:150], f_all[:150], f_all[150:]
    needed = estimates.labels_needed_ppi(y, f, fu, 0.02)
    lam = estimates.power_tuning(y, f, fu)
    judge_var, rect_var = np.var(lam * f_all), np.var(y - lam * f)

    def halfwidth(n):
        return estimates.z_value() * math.sqrt(judge_var / (5000 - n) + rect_var / n)

    assert halfwidth(needed) <= 0.02 < halfwidth(needed - 1)
    classical = estimates.labels_needed_classical(y, 0.02)
    assert classical == math.ceil(1.959963984540054 ** 2 * np.var(y) / 0.02 ** 2)
    assert needed < classical  # the judge saves labels
    assert math.isnan(estimates.labels_needed_ppi(y, f, fu[:100], 0.001))  # unreachable with 250 answers


def test_intervals_stay_within_0_and_1():
    y = np.array([1.0] * 29 + [0.0])  # 29 of 30: the normal interval's upper end would be 1.031
    f, fu = y.copy(), np.full(200, 1.0)
    human = estimates.classical_mean(y)
    assert human.hi == 1.0 and human.lo == pytest.approx(ppi_py.classical_mean_ci(y, alpha=0.05)[0], abs=1e-9)
    assert ppi_py.classical_mean_ci(y, alpha=0.05)[1] > 1  # what was printed before
    ppi = estimates.ppi_mean(y, f, fu)
    assert 0 <= ppi.lo <= ppi.value <= ppi.hi == 1.0
    low = estimates.ppi_mean(1 - y, 1 - f, 1 - fu)  # and the mirror image at 0
    assert low.lo == 0.0 and low.hi == pytest.approx(1 - ppi.lo)


def test_labels_needed_of_one_class_is_undefined_not_zero():
    y, f, fu = np.ones(12), np.ones(12), np.full(28, 1.0)
    assert math.isnan(estimates.labels_needed_classical(y, 0.02))  # no variance measured: no figure (was 0)
    assert math.isnan(estimates.labels_needed_ppi(y, f, fu, 0.02))  # (was 1)


def test_kappa_threshold_equals_a_search_with_scikit_learn():
    rng = np.random.default_rng(4)
    y = (rng.random(400) < 0.6).astype(int)
    p = np.clip(0.35 * y + rng.random(400) * 0.65, 0, 1).round(2)  # ties on purpose
    t, kappa = estimates.best_kappa_threshold(p, y)
    grid = {c: sklearn_metrics.cohen_kappa_score(y, (p >= c).astype(int)) for c in np.unique(p)}
    best = max(grid.values())
    assert kappa == pytest.approx(best, abs=1e-12)
    assert t == min(c for c, k in grid.items() if abs(k - best) < 1e-12)
    for c in list(grid)[::17]:  # the whole curve, not just its top
        assert cohen_kappa(p >= c, y) == pytest.approx(grid[c], abs=1e-12)


def test_equal_error_threshold_matches_the_roc_curve():
    rng = np.random.default_rng(6)
    y = (rng.random(500) < 0.4).astype(int)
    p = np.clip(0.3 * y + rng.random(500) * 0.7, 0, 1)
    t, rate = estimates.equal_error_threshold(p, y)
    fpr, tpr, thresholds = sklearn_metrics.roc_curve(y, p, drop_intermediate=False)
    gap = np.abs(fpr - (1 - tpr))[1:]  # roc_curve's first point is "nothing called correct"
    i = int(np.argmin(gap))
    assert t == pytest.approx(thresholds[1:][i]) and rate == pytest.approx((fpr[1:][i] + 1 - tpr[1:][i]) / 2)


@pytest.mark.parametrize("bins", [5, 10, 15])
def test_calibration_error_equals_scikit_learns_curve(bins):
    rng = np.random.default_rng(bins)
    p = rng.random(700)
    p[:20] = 0.2  # values on bin edges
    y = (rng.random(700) < p ** 1.5).astype(int)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=bins, strategy="uniform")
    edges = np.linspace(0, 1, bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], p), minlength=bins)
    expected = float(np.sum(counts[counts > 0] / len(p) * np.abs(prob_true - prob_pred)))
    assert estimates.calibration_error(p, y, bins) == pytest.approx(expected, abs=1e-12)
    assert estimates.calibration_error(y.astype(float), y) == 0.0  # certain and right


def test_own_kappa_and_auroc_equal_scikit_learn():
    rng = np.random.default_rng(9)
    for _ in range(5):
        a, b = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
        b[:150] = a[:150]
        assert cohen_kappa(a, b) == pytest.approx(sklearn_metrics.cohen_kappa_score(a, b), abs=1e-12)
        scores = rng.integers(0, 20, 300) / 20  # with ties
        assert auroc(scores, a) == pytest.approx(sklearn_metrics.roc_auc_score(a, scores), abs=1e-12)


def test_paired_bootstrap_agrees_with_scipy():
    rng = np.random.default_rng(10)
    a = rng.random(400) < 0.6
    b = np.where(rng.random(400) < 0.8, a, ~a)
    ours = estimates.paired_bootstrap(a, b, resamples=4000, seed=1)

    def kappa(i):
        return cohen_kappa(a[i.astype(int)], b[i.astype(int)])

    ref = scipy_stats.bootstrap((np.arange(400.0),), kappa, n_resamples=4000, method="percentile",
                                vectorized=False, random_state=2).confidence_interval
    assert ours["kappa"] == pytest.approx((ref.low, ref.high), abs=0.015)  # two random streams: close, not equal
    assert ours["agreement"][0] < np.mean(a == b) < ours["agreement"][1]
    assert ours == estimates.paired_bootstrap(a, b, resamples=4000, seed=1)  # seeded
