"""tidy.py and the report's label-based statistics on hand-made runs (no model): metrics.csv's shape, the PPI rows
equal to the estimator on the same answers, the calibrated thresholds, the length breakdown on rows made so that
exact match fails only on long answers, the labels' provenance in the summary, and the leaderboard's PPI columns."""

import math

import numpy as np
import pandas as pd
import pytest

from pipeline import estimates, report, tidy
from pipeline.rows import GenerationRow

from conftest import make_cfg, run_cli, run_metrics, verdict_row, write_run


def labelled_run(tmp_path, n=240, labelled=90, seed=0, name="hand", topic=None):
    """A run whose answers are right 60% of the time; short right answers match the reference exactly, long
    right ones only contain it (so exact match fails on them); the judge errs on ~10%; the first `labelled`
    answers carry (imported) human labels."""
    rng = np.random.default_rng(seed)
    answers, verdicts = [], []
    for i in range(n):
        right, long = bool(rng.random() < 0.6), i % 4 == 0
        prediction = ("I am fairly sure that it is paris" if long else "paris") if right else \
            ("I am fairly sure that it is rome" if long else "rome")
        answers.append(GenerationRow.answer(f"q{i:03d}", f"capital {i}?", ["Paris"], prediction, i,
                                            right if i < labelled else None,
                                            {"topic": topic(i)} if topic else None))
        judged = right if rng.random() > 0.1 else not right
        p = float(np.clip((0.85 if judged else 0.2) + rng.normal(0, 0.08), 0, 1))
        verdicts.append(verdict_row(f"q{i:03d}", "j", "correct" if p >= 0.5 else "incorrect", p))
    return write_run(tmp_path / "runs", name, answers, {"j": verdicts})


def test_metrics_csv_has_the_long_columns_and_ppi_equals_the_estimator(tmp_path):
    run = labelled_run(tmp_path)
    report.write(run, "j")
    own, free = pd.read_csv(run / "judge/j/metrics.csv"), pd.read_csv(run / "metrics.csv")
    assert list(own.columns) == list(free.columns) == tidy.COLUMNS
    assert (own.judge == "j").all() and free.judge.isna().all()  # what no judge enters: once, in the run's file
    assert set(free.criterion) == {"exact_match", "token_f1", "contains", "rouge_l", "human"}  # (imported: no NLL)
    assert ((own.criterion.isin(["judge", "judge_p_correct"])) | (own.against == "judge")).all()
    metrics = run_metrics(run, "j")
    assert (metrics.run_id == "hand").all() and len(metrics) == len(own) + len(free)
    samples = pd.read_csv(run / "judge/j/samples.csv")
    human = pd.to_numeric(samples.human_label, errors="coerce").to_numpy()
    f = (samples.judge_verdict == "correct").astype(float).to_numpy()
    mask = ~np.isnan(human)
    expected = estimates.ppi_mean(human[mask], f[mask], f[~mask])
    row = tidy.pick(metrics, "judge", "ppi_accuracy", "human")
    assert (row["value"], row["lo"], row["hi"], row["n"]) == pytest.approx(
        (expected.value, expected.lo, expected.hi, 90), rel=1e-5)
    summary = pd.read_csv(run / "judge/j/summary.csv").iloc[0]
    assert summary.ppi_acc_judge == pytest.approx(expected.value, rel=1e-5)
    assert summary.ppi_acc_judge_lo < summary.ppi_acc_judge < summary.ppi_acc_judge_hi
    assert (summary.ppi_acc_judge_hi - summary.ppi_acc_judge_lo) < (summary.acc_human_hi - summary.acc_human_lo)
    p = samples.judge_p_correct.to_numpy()
    t, kappa = estimates.best_kappa_threshold(p[mask], human[mask])
    assert tidy.pick(metrics, "judge_p_correct", "threshold[max_kappa]", "human")["value"] == pytest.approx(t)
    assert summary.threshold_max_kappa == pytest.approx(t, rel=1e-5)
    assert summary.acc_judge_at_max_kappa == pytest.approx(np.mean(p >= t), rel=1e-5)
    assert summary.ece_p_correct_human == pytest.approx(estimates.calibration_error(p[mask], human[mask]), rel=1e-5)
    needed = tidy.pick(metrics, "human", "labels_needed")["value"]
    assert estimates.labels_needed_classical(human[mask], 0.02) > 240 and math.isnan(needed)  # beyond the run
    assert summary.labels_uniform == 0 and "imported with the answers" in summary.labels_warnings


def test_the_length_breakdown_shows_exact_match_failing_on_long_answers(tmp_path):
    run = labelled_run(tmp_path, labelled=240)
    report.write(run, "j")
    metrics = run_metrics(run, "j")
    samples = pd.read_csv(run / "judge/j/samples.csv")
    long = samples.prediction.str.split().str.len() > 5
    assert long.sum() == 60  # every fourth answer
    for part, mask in (("words<=5", ~long), ("words>5", long)):
        rows = samples[mask]
        want = float(np.mean(rows.exact_match == rows.human_label))
        got = tidy.pick(metrics, "exact_match", f"agreement[{part}]", "human")
        assert got["value"] == pytest.approx(want) and got["n"] == mask.sum()
        judge = float(np.mean((rows.judge_verdict == "correct") == (rows.human_label == 1)))
        assert tidy.pick(metrics, "judge", f"agreement[{part}]", "human")["value"] == pytest.approx(judge)
    assert tidy.pick(metrics, "exact_match", "agreement[words<=5]", "human")["value"] == 1.0
    long_rows = samples[long]
    assert tidy.pick(metrics, "exact_match", "agreement[words>5]", "human")["value"] == pytest.approx(
        1 - long_rows.human_label.mean())  # exact match calls every long answer wrong
    assert tidy.pick(metrics, "exact_match", "accuracy[words>5]")["value"] == 0.0


def test_without_labels_there_is_no_ppi_and_nothing_claims_otherwise(tmp_path):
    run = labelled_run(tmp_path, labelled=0)
    report.write(run, "j")
    metrics = run_metrics(run, "j")
    assert not (metrics.against == "human").any()
    assert metrics.statistic.str.startswith("ppi").sum() == 0
    summary = pd.read_csv(run / "judge/j/summary.csv").iloc[0]
    assert math.isnan(summary.ppi_acc_judge) and math.isnan(summary.threshold_max_kappa)
    assert "PPI" not in report.digest(summary.to_dict())


def test_labels_drawn_by_stage_label_count_as_uniform_and_the_leaderboard_carries_ppi(tmp_path):
    run = labelled_run(tmp_path, labelled=0)
    out = run_cli("stage=label", "run_id=hand", "label.n=80", "label.seed=3", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    sheet = run / "labels/sheet-n80-seed3.csv"
    filled = pd.read_csv(sheet, dtype=str, keep_default_na=False)
    filled["human_label"] = ["yes" if "paris" in p else "no" for p in filled.prediction]
    filled.to_csv(sheet, index=False)
    out = run_cli("stage=label", "run_id=hand", f"label.sheet={sheet}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    summary = pd.read_csv(run / "judge/j/summary.csv").iloc[0]
    assert summary.n_human == 80 and summary.labels_uniform == 1 and pd.isna(summary.labels_warnings)
    assert "PPI++" in out.stdout and "uniform random sample" in out.stdout and "warning" not in out.stdout
    out = run_cli("stage=report", "report.runs=[hand]", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    board = pd.read_csv(tmp_path / "runs/leaderboard.csv")
    assert board.loc[0, "ppi_acc_judge"] == pytest.approx(summary.ppi_acc_judge, rel=1e-3)
    assert board.loc[0, "n_human"] == 80


def test_report_settings_reach_the_statistics(tmp_path):
    run = labelled_run(tmp_path)
    cfg = make_cfg(tmp_path / "runs", "report.target_halfwidth=0.05", "report.length_words=3",
                   "report.calibration_bins=4")
    report.write(run, "j", report.settings(cfg))
    metrics = run_metrics(run, "j")
    samples = pd.read_csv(run / "judge/j/samples.csv")
    human = pd.to_numeric(samples.human_label, errors="coerce").to_numpy()
    mask = ~np.isnan(human)
    needed = estimates.labels_needed_classical(human[mask], 0.05)
    assert needed > 240 and math.isnan(tidy.pick(metrics, "human", "labels_needed")["value"])  # beyond the run
    cfg = make_cfg(tmp_path / "runs", "report.target_halfwidth=0.08")
    report.write(run, "j", report.settings(cfg))
    assert tidy.pick(run_metrics(run, "j"), "human", "labels_needed")["value"] == \
        estimates.labels_needed_classical(human[mask], 0.08) <= 240
    assert tidy.pick(metrics, "judge", "accuracy[words<=3]")  # the boundary moved
    assert tidy.pick(metrics, "judge_p_correct", "ece", "human")["value"] == pytest.approx(
        estimates.calibration_error(samples.judge_p_correct.to_numpy()[mask], human[mask], 4), rel=1e-5)


def test_ppi_stratified_by_a_report_by_column_equals_the_estimator(tmp_path):
    run = labelled_run(tmp_path, topic=lambda i: ["geo", "history", "science"][i % 3])  # 30 labels in each
    report.write(run, "j", report.settings(make_cfg(tmp_path / "runs", "report.by=[topic]")))
    metrics = run_metrics(run, "j")
    samples = pd.read_csv(run / "judge/j/samples.csv")
    human = pd.to_numeric(samples.human_label, errors="coerce").to_numpy()
    mask = ~np.isnan(human)
    topic = samples.topic.to_numpy()
    for name, f in (("judge", (samples.judge_verdict == "correct").astype(float).to_numpy()),
                    ("judge_p_correct", samples.judge_p_correct.to_numpy())):
        expected = estimates.stratified_ppi_mean(human[mask], f[mask], f[~mask], topic[mask], topic[~mask])
        row = tidy.pick(metrics, name, "ppi_accuracy[by topic]", "human")
        assert (row["value"], row["lo"], row["hi"], row["n"]) == pytest.approx(
            (expected.value, expected.lo, expected.hi, 90), rel=1e-5) and row["judge"] == "j"
        plain = tidy.pick(metrics, name, "ppi_accuracy", "human")
        # (labels spread over the topics as the answers are, the estimates coincide; the intervals do not)
        assert row["hi"] - row["lo"] != pytest.approx(plain["hi"] - plain["lo"], abs=1e-6)
    assert tidy.pick(metrics, "judge", "accuracy[topic=geo]")["n"] == 80


def test_a_stratified_estimate_with_a_thin_subset_is_empty_and_says_which(tmp_path):
    run = labelled_run(tmp_path, topic=lambda i: "rare" if i % 30 == 0 else ["geo", "history"][i % 2])
    report.write(run, "j", report.settings(make_cfg(tmp_path / "runs", "report.by=[topic]")))
    row = tidy.pick(run_metrics(run, "j"), "judge", "ppi_accuracy[by topic]", "human")
    assert math.isnan(row["value"]) and row["n"] == 90
    assert row["note"].startswith("too few labels in 1 of 3 subsets: rare (3); each needs 10")
    assert not math.isnan(tidy.pick(run_metrics(run, "j"), "judge", "ppi_accuracy", "human")["value"])


def test_the_label_plan_offers_a_half_width_the_run_can_reach(tmp_path):
    """+-0.02 is beyond 240 answers: the plan says so and gives the labels for the narrowest half-width that labelling
    half of them reaches, and what 100 more labels would give, all from the estimator's own curve."""
    run = labelled_run(tmp_path)
    report.write(run, "j")
    metrics = run_metrics(run, "j")
    samples = pd.read_csv(run / "judge/j/samples.csv")
    human = pd.to_numeric(samples.human_label, errors="coerce").to_numpy()
    mask = ~np.isnan(human)
    f = (samples.judge_verdict == "correct").astype(float).to_numpy()
    curve = estimates.ppi_halfwidths(human[mask], f[mask], f[~mask])
    assert len(curve) == 240 and np.all(np.diff(curve) <= 1e-12)
    assert tidy.pick(metrics, "judge", "halfwidth[labels+100]", "human")["value"] == pytest.approx(curve[189])
    assert math.isnan(tidy.pick(metrics, "judge", "labels_needed", "human")["value"])  # not even with all 240
    h = tidy.pick(metrics, "judge", "suited_halfwidth", "human")["value"]
    wider = [x for x in estimates.SUITED_HALFWIDTHS if x > 0.02]
    reach = curve[:190]  # 100 more than the 90 labels it has (more than half of its 240 answers)
    assert h in wider and reach.min() <= h
    assert all(reach.min() > x for x in wider if x < h), "the narrowest one within reach"
    needed = tidy.pick(metrics, "judge", f"labels_needed[halfwidth={h:g}]", "human")["value"]
    assert needed == estimates.labels_for(curve, h) <= 190
    assert curve[int(needed) - 1] <= h < curve[int(needed) - 2]
    row = report.read_summary(run / "judge/j/summary.csv")
    line = report.label_lines(row, 0.02)[1]
    assert line.startswith(f"labels: the PPI++ interval is +-{(row['ppi_acc_judge_hi'] - row['ppi_acc_judge_lo']) / 2:.3f}"
                           " with 90 labels; 100 more would make it about +-")
    assert f"+-0.02 (report.target_halfwidth) is beyond a run of 240 answers; for +-{h:g}: {int(needed)} labels " \
           "with the judge (PPI++)" in line
    assert "more than the run's" not in line
    page = (run / "judge/j/report.html").read_text()
    assert f'data-flag="label-plan">More labels: {line.removeprefix("labels: ")}.</p>' in page.replace("&#43;", "+")


def test_a_reachable_target_gets_its_labels_and_no_other_plan(tmp_path):
    run = labelled_run(tmp_path)
    report.write(run, "j", report.settings(make_cfg(tmp_path / "runs", "report.target_halfwidth=0.1")))
    metrics = run_metrics(run, "j")
    assert not tidy.pick(metrics, "judge", "suited_halfwidth", "human")
    needed = tidy.pick(metrics, "judge", "labels_needed", "human")["value"]
    human = tidy.pick(metrics, "human", "labels_needed")["value"]
    line = report.label_lines(report.read_summary(run / "judge/j/summary.csv"), 0.1)[1]
    assert line.endswith(f"; for +-0.1: {int(needed)} labels with the judge (PPI++), {int(human)} without")


def few_labels_run(tmp_path, labels, n=16, name="few"):
    """n answers, all "paris" (right), the first len(labels) of them labelled `labels`; a judge calls 4 in 5 right."""
    answers = [GenerationRow.answer(f"q{i:02d}", f"capital {i}?", ["Paris"], "paris", i,
                                    labels[i] if i < len(labels) else None) for i in range(n)]
    verdicts = [verdict_row(a.id, "j", "correct" if i % 5 else "incorrect", 0.9 if i % 5 else 0.2)
                for i, a in enumerate(answers)]
    return write_run(tmp_path / "runs", name, answers, {"j": verdicts})


def test_two_labels_are_too_few_labels_not_an_interval_beyond_0_and_1(tmp_path):
    run = few_labels_run(tmp_path, [True, False])
    report.write(run, "j")
    summary = pd.read_csv(run / "judge/j/summary.csv").iloc[0]
    for column in ("ppi_acc_judge", "ppi_acc_judge_lo", "ppi_acc_judge_hi", "labels_needed_ppi_judge",
                   "labels_needed_human", "threshold_max_kappa", "threshold_equal_error", "kappa_judge_human",
                   "ece_p_correct_human"):
        assert math.isnan(summary[column]), column
    assert summary.labels_note.startswith("too few labels (2)") and "report.min_labels=30" in summary.labels_note
    metrics = run_metrics(run, "j")
    ppi = tidy.pick(metrics, "judge", "ppi_accuracy", "human")
    assert math.isnan(ppi["value"]) and ppi["n"] == 2 and ppi["note"].startswith("too few labels (2)")
    assert tidy.pick(metrics, "judge_p_correct", "threshold[max_kappa]", "human")["note"].startswith("too few")
    text = report.digest(summary.to_dict())
    assert "too few labels (2)" in text and "-0.193" not in text and "1.193" not in text
    assert "kappa judge vs human: too few labels (2)" in text
    page = (run / "judge/j/report.html").read_text()
    assert "too few labels (2)" in page and "-0.193" not in page


def test_labels_of_one_class_are_too_few_whatever_their_number(tmp_path):
    run = few_labels_run(tmp_path, [True] * 12, n=40)
    report.write(run, "j")
    text = report.digest(pd.read_csv(run / "judge/j/summary.csv").iloc[0].to_dict())
    assert "too few labels (12)" in text and "1.000 [1.000, 1.000]" not in text
    assert "1 with the judge" not in text and "0 without" not in text  # labels needed from no variance at all
    cfg = make_cfg(tmp_path / "runs", "report.min_labels=5")
    report.write(run, "j", report.settings(cfg))
    summary = pd.read_csv(run / "judge/j/summary.csv").iloc[0]
    assert math.isnan(summary.ppi_acc_judge) and math.isnan(summary.labels_needed_human)
    assert summary.labels_note == "too few labels (12): all of them say correct; both classes are needed"
    assert "too few labels (12)" in (run / "judge/j/report.html").read_text()


def test_each_part_of_the_length_breakdown_needs_enough_labels(tmp_path):
    run = labelled_run(tmp_path, labelled=90)  # 23 of the labelled answers are long, 67 short
    report.write(run, "j")
    metrics = run_metrics(run, "j")
    long = tidy.pick(metrics, "judge", "kappa[words>5]", "human")
    assert long["n"] == 23 and math.isnan(long["value"]) and long["note"].startswith("too few labels (23)")
    short = tidy.pick(metrics, "judge", "kappa[words<=5]", "human")
    assert short["n"] == 67 and 0 < short["value"] <= 1 and pd.isna(short["note"])
    assert not math.isnan(tidy.pick(metrics, "judge", "ppi_accuracy", "human")["value"])  # 90 labels overall
    page = (run / "judge/j/report.html").read_text()
    assert "too few labels (23)" in page.split('id="length"')[1]
    report.write(run, "j", report.settings(make_cfg(tmp_path / "runs", "report.min_labels=20")))
    metrics = run_metrics(run, "j")
    assert not math.isnan(tidy.pick(metrics, "judge", "kappa[words>5]", "human")["value"])


def test_three_labelled_long_answers_give_no_kappa(tmp_path):
    run = labelled_run(tmp_path, labelled=10)  # answers 0, 4 and 8 are long
    report.write(run, "j")
    metrics = run_metrics(run, "j")
    for statistic in ("kappa[words>5]", "agreement[words>5]"):
        row = tidy.pick(metrics, "judge", statistic, "human")
        assert row["n"] == 3 and math.isnan(row["value"]) and row["note"].startswith("too few labels (3)")
