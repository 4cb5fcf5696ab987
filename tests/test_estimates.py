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
    cov, var_f = np.cov(y, f, bias=True)[0, 1], np.var(f_all, ddof=1)

    def halfwidth(n):  # PPI++ with n labels of 5000, its lam tuned for n, the measured moments taken as true
        lam = min(max(cov / ((1 + n / (5000 - n)) * var_f), 0), 1)
        return estimates.z_value() * math.sqrt(lam**2 * var_f / (5000 - n) + np.var(y - lam * f) / n)

    assert halfwidth(needed) <= 0.02 < halfwidth(needed - 1)
    now = estimates.ppi_mean(y, f, fu)
    assert estimates.ppi_halfwidths(y, f, fu)[149] == pytest.approx(now.halfwidth, rel=0.02)  # (the curve at 150)
    classical = estimates.labels_needed_classical(y, 0.02)
    assert classical == math.ceil(1.959963984540054 ** 2 * np.var(y) / 0.02 ** 2)
    assert needed < classical  # the judge saves labels
    assert math.isnan(estimates.labels_needed_ppi(y, f, fu[:100], 0.001))  # unreachable with 250 answers


def test_the_half_width_curve_only_falls_and_ends_at_the_labels_alone():
    """Labelling more answers never widens the projected interval: with lam fixed the judge's term would grow as the
    unlabelled answers run out (this curve rose from 0.17 to 0.46 over a 240-answer run's last 10 labels)."""
    rng = np.random.default_rng(9)
    y_all, f_all = synthetic(rng, 240, 0.6, 0.1, 0.1)
    curve = estimates.ppi_halfwidths(y_all[:90], f_all[:90], f_all[90:])
    assert len(curve) == 240 and np.all(np.diff(curve) <= 1e-12)
    assert curve[-1] == pytest.approx(estimates.z_value() * math.sqrt(np.var(y_all[:90]) / 240))


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


# ------------------------------------------------------------------ stratified PPI++ (StratPPI, Fisch et al. 2024)

def strata_run(rng, sizes=(1500, 900, 600), accuracy=(0.8, 0.5, 0.3), agreement=(0.97, 0.65, 0.85)):
    """A run of three subsets whose accuracies differ and on which the judge is right with different rates (it is
    nearly perfect on the first, close to a coin on the second)."""
    strata = np.repeat(np.arange(len(sizes)), sizes)
    acc, agree = np.asarray(accuracy)[strata], np.asarray(agreement)[strata]
    y = (rng.random(len(strata)) < acc).astype(float)
    f = np.where(rng.random(len(strata)) < agree, y, 1 - y)
    truth = float(np.dot(np.asarray(sizes) / sum(sizes), accuracy))
    return y, f, strata, truth


def test_one_subset_is_plain_ppi():
    rng = np.random.default_rng(4)
    y_all, f_all = synthetic(rng, 1000, 0.6, 0.1, 0.2)
    mask = rng.random(1000) < 0.2
    one = estimates.stratified_ppi_mean(y_all[mask], f_all[mask], f_all[~mask], ["a"] * mask.sum(),
                                        ["a"] * (~mask).sum())
    plain = estimates.ppi_mean(y_all[mask], f_all[mask], f_all[~mask])
    assert (one.value, one.lo, one.hi, one.n, one.lam) == pytest.approx(
        (plain.value, plain.lo, plain.hi, plain.n, plain.lam))


def test_a_judge_without_signal_gives_the_post_stratified_mean_of_the_labels():
    """A judge that says the same of every answer has no variance: lam is 0 in every subset and the estimate is the
    textbook post-stratified mean, sum_k N_k/N * mean(y_k), with se sqrt(sum_k (N_k/N)^2 var(y_k)/n_k)."""
    rng = np.random.default_rng(5)
    strata_all = np.repeat(["a", "b", "c"], [500, 300, 200])
    y_all = (rng.random(1000) < np.select([strata_all == "a", strata_all == "b"], [0.9, 0.5], 0.2)).astype(float)
    mask = rng.random(1000) < 0.15
    f_all = np.ones(1000)
    est = estimates.stratified_ppi_mean(y_all[mask], f_all[mask], f_all[~mask], strata_all[mask], strata_all[~mask])
    weights = {k: (strata_all == k).mean() for k in "abc"}
    parts = {k: y_all[mask & (strata_all == k)] for k in "abc"}
    value = sum(weights[k] * parts[k].mean() for k in "abc")
    se = math.sqrt(sum(weights[k] ** 2 * parts[k].var() / len(parts[k]) for k in "abc"))
    z = scipy_stats.norm.ppf(0.975)
    assert (est.value, est.lo, est.hi) == pytest.approx((value, value - z * se, value + z * se))


def test_stratified_ppi_covers_95_percent_when_the_judge_differs_by_subset():
    """2000 runs drawn again from the population, 150 uniform labels each: the stratified interval covers the
    population accuracy ~95% of the time, as the plain one does, and is narrower on average (measured: 0.940 and
    0.944, mean widths 0.111 and 0.115; a lam tuned within each subset gave 0.923)."""
    rng = np.random.default_rng(21)
    repeats, n_labels = 2000, 150
    covered = {"stratified": 0, "plain": 0}
    widths = {"stratified": [], "plain": []}
    for _ in range(repeats):
        y_all, f_all, strata_all, truth = strata_run(rng)
        mask = np.zeros(len(y_all), bool)
        mask[rng.choice(len(y_all), n_labels, replace=False)] = True
        if estimates.stratum_shortage(y_all[mask], strata_all[mask], 30, strata_all):
            continue  # (the smallest subset, a fifth of the run, gets 10 labels or more in nearly every draw)
        strat = estimates.stratified_ppi_mean(y_all[mask], f_all[mask], f_all[~mask], strata_all[mask],
                                              strata_all[~mask])
        plain = estimates.ppi_mean(y_all[mask], f_all[mask], f_all[~mask])
        for name, est in (("stratified", strat), ("plain", plain)):
            covered[name] += est.lo <= truth <= est.hi
            widths[name].append(est.hi - est.lo)
    done = len(widths["plain"])
    cover = {k: v / done for k, v in covered.items()}
    width = {k: float(np.mean(v)) for k, v in widths.items()}
    print(f"stratified PPI++ over {done} runs: coverage {cover}, mean widths {width}")
    assert done >= 0.98 * repeats
    assert 0.93 <= cover["stratified"] <= 0.965 and 0.93 <= cover["plain"] <= 0.965
    assert width["stratified"] < 0.98 * width["plain"]


def test_stratum_shortage_names_the_subsets_with_too_few_labels():
    y = np.array([1, 0] * 20, dtype=float)
    strata = np.array(["a"] * 30 + ["b"] * 8 + ["c"] * 2)
    note = estimates.stratum_shortage(y, strata, 30, np.r_[strata, ["d", "d"]])
    assert note.startswith("too few labels in 3 of 4 subsets: b (8), c (2), d (0); each needs 10")
    assert estimates.stratum_shortage(y, np.array(["a"] * 20 + ["b"] * 20), 30) == ""
    assert estimates.stratum_shortage(y[:12], strata[:12], 30).startswith("too few labels (12)")
    with pytest.raises(ValueError, match="subset 'd' holds 0 labels"):
        estimates.stratified_ppi_mean(y, y, [1.0, 0.0], strata, ["d", "d"])
