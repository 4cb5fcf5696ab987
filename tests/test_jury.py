"""jury.py (stage=jury) and panel.py: judges already run on a run combined into a judge of their own, and how much
they agree. Runs are made by hand (conftest.write_run), so no model is loaded: three judges disagree in known
patterns (invalid verdicts, one judge without P(correct), ties for majority), and every verdict, P(correct) and
audit string is checked against values worked out by hand here. Fleiss' kappa is checked against statsmodels,
pairwise kappa against scikit-learn, Krippendorff's alpha against the `krippendorff` package where installed."""

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from pipeline import jury, panel
from pipeline.errors import PipelineError
from pipeline.rows import GenerationRow
from pipeline.runs import StageDir

from conftest import make_cfg, one_error_line, read_jsonl, run_cli, verdict_row, write_run

IDS = [f"q{i}" for i in range(8)]
C, I, X = "correct", "incorrect", "invalid"
# (verdict, P(correct)) of each judge on q0..q7. b has no P(correct) (generate mode); c's invalid q6 carries a
# P(correct) that must be ignored.
A = [(C, .9), (I, .2), (C, .6), (X, None), (I, .4), (C, .8), (X, None), (I, .1)]
B = [(C, None), (C, None), (I, None), (C, None), (I, None), (X, None), (X, None), (C, None)]
CC = [(C, .7), (I, .3), (I, .45), (I, .35), (C, .55), (I, .1), (X, .9), (I, .05)]

# mean, threshold 0.5: each valid member's P(correct), or its vote as 1/0 (b), averaged; correct when >= 0.5
MEAN = [(C, (.9 + 1 + .7) / 3), (C, (.2 + 1 + .3) / 3), (I, (.6 + 0 + .45) / 3), (C, (1 + .35) / 2),
        (I, (.4 + 0 + .55) / 3), (I, (.8 + .1) / 2), (X, None), (I, (.1 + 1 + .05) / 3)]
# majority: more correct than incorrect votes among the valid ones; P(correct) the share of correct votes
MAJORITY = [(C, 1.0), (I, 1 / 3), (I, 1 / 3), (X, .5), (I, 1 / 3), (X, .5), (X, None), (I, 1 / 3)]
MAJORITY_REASONS = [None, None, None, "tie: 1 correct, 1 incorrect", None, "tie: 1 correct, 1 incorrect",
                    "no member gave a valid verdict", None]
REPLIES = ["a=correct(0.90) b=correct c=correct(0.70)", "a=incorrect(0.20) b=correct c=incorrect(0.30)",
           "a=correct(0.60) b=incorrect c=incorrect(0.45)", "a=invalid b=correct c=incorrect(0.35)",
           "a=incorrect(0.40) b=incorrect c=correct(0.55)", "a=correct(0.80) b=invalid c=incorrect(0.10)",
           "a=invalid b=invalid c=invalid", "a=incorrect(0.10) b=correct c=incorrect(0.05)"]


def answers(ids=IDS):
    return [GenerationRow.answer(i, f"question {i}?", [f"ref {i}"], f"answer {i}", n) for n, i in enumerate(ids)]


def verdicts(judge, table, mode="logprob", ids=IDS):
    return [verdict_row(i, judge, v, p, mode) for i, (v, p) in zip(ids, table)]


def panel_run(runs, run_id="r"):
    """A run whose answers are listed out of id order (index decides), judged by a, b (no P(correct)) and c."""
    order = [3, 0, 7, 1, 5, 2, 6, 4]
    rows = answers()
    return write_run(runs, run_id, [rows[k] for k in order],
                     {"a": verdicts("a", A), "b": verdicts("b", B, "generate"), "c": verdicts("c", CC)})


def cfg(runs, *overrides):
    return make_cfg(runs, "run_id=r", "jury.judges=[a,b,c]", "report.plots=false", "report.bootstrap=50", *overrides)


def records(run_dir, name):
    return read_jsonl(run_dir / "judge" / name / "verdicts.jsonl")


def test_mean_verdicts_p_correct_and_audit(tmp_path):
    run_dir = panel_run(tmp_path)
    path = jury.run(cfg(tmp_path, "jury.method=mean"))
    assert path == run_dir / "judge" / "jury-a_b_c"
    got = records(run_dir, "jury-a_b_c")
    assert [r["id"] for r in got] == IDS  # the generate stage's order
    assert [r["verdict"] for r in got] == [v for v, _ in MEAN]
    for r, (_, p) in zip(got, MEAN):
        assert r["p_correct"] == (None if p is None else pytest.approx(p, abs=1e-12))
    assert [r["invalid_reason"] for r in got] == [None] * 6 + ["no member gave a valid verdict", None]
    assert [r["reply"] for r in got] == REPLIES
    assert {(r["judge"], r["mode"], r["prompt_name"], r["prompt_version"], r["verdict_mass"], r["finish_reason"])
            for r in got} == {("jury-a_b_c", "jury", "jury:mean", 1, None, None)}


def test_mean_threshold_moves_the_verdicts(tmp_path):
    run_dir = panel_run(tmp_path)
    jury.run(cfg(tmp_path, "jury.threshold=0.8", "jury.name=strict"))
    got = records(run_dir, "strict")
    assert [r["verdict"] for r in got] == [C, I, I, I, I, I, X, I]  # only q0 (0.867) reaches 0.8


def test_majority_verdicts_ties_and_shares(tmp_path):
    run_dir = panel_run(tmp_path)
    jury.run(cfg(tmp_path, "jury.method=majority", "jury.name=maj"))
    got = records(run_dir, "maj")
    assert [r["verdict"] for r in got] == [v for v, _ in MAJORITY]
    assert [r["p_correct"] for r in got] == [None if p is None else pytest.approx(p, abs=1e-12) for _, p in MAJORITY]
    assert [r["invalid_reason"] for r in got] == MAJORITY_REASONS
    assert [r["reply"] for r in got] == REPLIES and {r["prompt_name"] for r in got} == {"jury:majority"}


def test_manifest_panel_and_fingerprint(tmp_path):
    from sklearn.metrics import cohen_kappa_score
    from statsmodels.stats.inter_rater import fleiss_kappa

    run_dir = panel_run(tmp_path)
    jury.run(cfg(tmp_path, "jury.name=j"))
    m = StageDir(run_dir / "judge/j", "verdicts.jsonl").manifest()
    shas = {n: StageDir(run_dir / "judge" / n, "verdicts.jsonl").manifest()["records_file"]["sha256"] for n in "abc"}
    assert m["status"] == "complete" and m["stage"] == "judge" and m["records"] == 8
    assert m["judge"] == {"name": "j", "mode": "jury", "method": "mean", "threshold": 0.5, "members": ["a", "b", "c"]}
    assert m["member_records"] == shas
    assert m["fingerprint"] == {"jury": {"method": "mean", "threshold": 0.5, "members": ["a", "b", "c"],
                                         "member_records": shas}}
    p = m["panel"]
    assert p["members"] == ["a", "b", "c"] and set(p) >= {"pairs", "with_jury", "fleiss_kappa"}
    code = {C: 1.0, I: 0.0, X: math.nan}
    votes = {n: np.array([code[v] for v, _ in t]) for n, t in zip("abc", (A, B, CC))}
    for pair, (a, b) in zip(p["pairs"], [("a", "b"), ("a", "c"), ("b", "c")]):
        both = ~np.isnan(votes[a]) & ~np.isnan(votes[b])
        assert (pair["a"], pair["b"], pair["n"]) == (a, b, int(both.sum()))
        assert pair["kappa"] == pytest.approx(cohen_kappa_score(votes[a][both], votes[b][both]), abs=1e-12)
        assert pair["agreement"] == pytest.approx(np.mean(votes[a][both] == votes[b][both]), abs=1e-12)
    assert [(p["pairs"][k]["n"]) for k in range(3)] == [5, 6, 6]
    jury_votes = np.array([code[v] for v, _ in MEAN])
    for row, n in zip(p["with_jury"], "abc"):
        both = ~np.isnan(votes[n]) & ~np.isnan(jury_votes)
        assert (row["member"], row["n"]) == (n, int(both.sum()))
        assert row["kappa"] == pytest.approx(cohen_kappa_score(votes[n][both], jury_votes[both]), abs=1e-12)
    complete = [0, 1, 2, 4, 7]  # every member valid
    table = [[sum(votes[n][k] == 1 for n in "abc"), sum(votes[n][k] == 0 for n in "abc")] for k in complete]
    assert p["fleiss_kappa"]["n"] == 5
    assert p["fleiss_kappa"]["value"] == pytest.approx(fleiss_kappa(table), abs=1e-12)
    json.dumps(m, allow_nan=False)  # NaN is written as null


def random_table(rng, subjects, categories, raters, skew):
    """subjects x categories counts of `raters` ratings each, drawn with category weights skew**j (unbalanced)."""
    weights = skew ** np.arange(categories)
    return rng.multinomial(raters, weights / weights.sum(), size=subjects)


@pytest.mark.parametrize("seed, subjects, categories, raters, skew", [
    (0, 30, 2, 3, 1.0), (1, 50, 2, 5, 0.15), (2, 12, 3, 4, 1.0), (3, 200, 4, 7, 0.4), (4, 9, 5, 2, 0.05),
    (5, 64, 2, 10, 0.02)])
def test_fleiss_kappa_matches_statsmodels(seed, subjects, categories, raters, skew):
    from statsmodels.stats.inter_rater import fleiss_kappa

    table = random_table(np.random.default_rng(seed), subjects, categories, raters, skew)
    expected = fleiss_kappa(table)
    assert not math.isnan(expected)
    assert panel.fleiss_kappa(table) == pytest.approx(expected, abs=1e-12, rel=0)


def test_fleiss_kappa_undefined_and_refused_cases():
    assert math.isnan(panel.fleiss_kappa([[3, 0], [3, 0]]))  # one category only: chance agreement is 1
    assert math.isnan(panel.fleiss_kappa(np.zeros((0, 2))))
    assert panel.fleiss_kappa([[2, 0], [0, 2]]) == 1.0
    with pytest.raises(ValueError, match="same number of raters"):
        panel.fleiss_kappa([[2, 1], [1, 1]])


# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", example C: nominal data, four observers,
# twelve units, missing values; alpha = 0.743.
KRIPPENDORFF_C = [[1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
                  [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
                  [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
                  [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None]]


def test_krippendorff_alpha_of_the_published_example():
    data = np.array(KRIPPENDORFF_C, dtype=float)
    assert round(panel.krippendorff_alpha(data), 3) == 0.743
    assert math.isnan(panel.krippendorff_alpha(np.full((3, 4), np.nan)))


@pytest.mark.parametrize("seed", range(4))
def test_krippendorff_alpha_matches_the_krippendorff_package(seed):
    krippendorff = pytest.importorskip("krippendorff", reason="the krippendorff package is not installed; the "
                                                              "published example above still checks alpha")
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 2 + seed % 3, size=(3 + seed, 40)).astype(float)
    data[rng.random(data.shape) < 0.25] = np.nan
    expected = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")
    assert panel.krippendorff_alpha(data) == pytest.approx(expected, abs=1e-12, rel=0)


def test_a_jury_may_sit_on_a_jury_and_coverage_is_checked(tmp_path):
    run_dir = panel_run(tmp_path)
    jury.run(cfg(tmp_path, "jury.judges=[a,b]", "jury.name=ab"))
    jury.run(cfg(tmp_path, "jury.judges=[ab,c]", "jury.name=top", "jury.method=majority"))
    top = records(run_dir, "top")
    assert top[0]["reply"].startswith("ab=correct(") and top[0]["verdict"] == C
    write_run(tmp_path, "short", answers(), {"a": verdicts("a", A), "b": verdicts("b", B[:7], ids=IDS[:7])})
    with pytest.raises(PipelineError, match=r"judge 'b' of run short does not cover.*no verdict for 1 answer \(q7\)"):
        jury.run(cfg(tmp_path, "run_id=short", "jury.judges=[a,b]"))
    assert not (tmp_path / "short/judge/jury-a_b").exists()


@pytest.mark.parametrize("judges, says", [
    ("[ab,a]", r"jury.judges: 'ab' is a jury whose members include 'a', and jury.judges=\['ab', 'a'\] lists 'a' too"),
    ("[top,b]", r"jury.judges: 'top' is a jury whose members include 'b' \(through 'ab'\), and .* lists 'b' too"),
    ("[top,ab]", r"jury.judges: 'top' is a jury whose members include 'ab', and .* lists 'ab' too"),
    ("[ab,ac]", r"jury.judges: 'ab' and 'ac' are juries that both count 'a'"),
], ids=["direct", "through a jury", "a jury and its member jury", "two juries sharing a member"])
def test_a_jury_that_holds_another_member_is_refused(tmp_path, judges, says):
    # each judge must vote once: a member that also sits on a member jury would vote twice
    run_dir = panel_run(tmp_path)
    jury.run(cfg(tmp_path, "jury.judges=[a,b]", "jury.name=ab"))
    jury.run(cfg(tmp_path, "jury.judges=[a,c]", "jury.name=ac"))
    jury.run(cfg(tmp_path, "jury.judges=[ab,c]", "jury.name=top"))
    with pytest.raises(PipelineError, match=says) as e:
        jury.run(cfg(tmp_path, f"jury.judges={judges}", "jury.name=new"))
    assert "\n" not in str(e.value) and "leave" in str(e.value)
    assert not (run_dir / "judge/new").exists()
    with pytest.raises(PipelineError, match=r"jury.name='ab' already votes inside member 'top'"):
        jury.run(cfg(tmp_path, "jury.judges=[top,a]", "jury.name=ab", "overwrite=true"))  # would vote on itself
    assert [r["reply"] for r in records(run_dir, "ab")][0].startswith("a=correct")


def test_unfinished_member_and_duplicates_are_refused(tmp_path):
    run_dir = panel_run(tmp_path)
    (run_dir / "judge/d").mkdir()
    with pytest.raises(PipelineError, match=r"judge 'd' of run r has not finished.*stage=judge run_id=r judge=d"):
        jury.run(cfg(tmp_path, "jury.judges=[a,d]"))
    with pytest.raises(PipelineError, match=r"names a more than once"):
        jury.run(cfg(tmp_path, "jury.judges=[a,b,a]"))
    assert sorted(p.name for p in (run_dir / "judge").iterdir()) == ["a", "b", "c", "d"]


def test_running_again_is_a_no_op(tmp_path, caplog):
    run_dir = panel_run(tmp_path)
    jury.run(cfg(tmp_path))
    folder = run_dir / "judge/jury-a_b_c"
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    with caplog.at_level("INFO", logger="pipeline"):
        jury.run(cfg(tmp_path))
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    assert "already complete with these settings" in caplog.text
    with pytest.raises(PipelineError, match=r"other settings \(jury.method: 'mean' -> 'majority'"):
        jury.run(cfg(tmp_path, "jury.method=majority"))


def test_a_member_judged_again_is_refused_until_overwrite(tmp_path):
    run_dir = panel_run(tmp_path)
    jury.run(cfg(tmp_path))
    flipped = [(I if v == C else C if v == I else v, p) for v, p in B]
    b = StageDir(run_dir / "judge/b", "verdicts.jsonl")
    b.publish([v.to_json() for v in verdicts("b", flipped, "generate")],
              {"stage": "judge", "run_id": "r", "records": 8, "fingerprint": {"hand-made": "b2"},
               "judge": {"name": "b", "mode": "generate"}})
    with pytest.raises(PipelineError, match=r"jury-a_b_c/ already holds a finished stage made with other settings "
                                            r"\(jury.member_records.b: .*overwrite=true"):
        jury.run(cfg(tmp_path))
    assert records(run_dir, "jury-a_b_c")[0]["reply"] == REPLIES[0]
    jury.run(cfg(tmp_path, "overwrite=true"))
    got = records(run_dir, "jury-a_b_c")
    assert got[0]["reply"] == "a=correct(0.90) b=incorrect c=correct(0.70)"
    assert got[1]["verdict"] == I and got[1]["p_correct"] == pytest.approx((.2 + 0 + .3) / 3, abs=1e-12)
    assert list((run_dir / "replaced").glob("*/judge/jury-a_b_c/verdicts.jsonl"))  # moved aside, not deleted


# ------------------------------------------------------------------------------------------- the command line

def cli(tmp_path, *args):
    return run_cli("stage=jury", "run_id=r", f"runs_dir={tmp_path}", "report.plots=false", "report.bootstrap=50",
                   *args, cwd=tmp_path)


@pytest.mark.integration
def test_cli_makes_a_jury_reported_like_any_judge(tmp_path):
    run_dir = panel_run(tmp_path)
    out = cli(tmp_path, "jury.judges=[a,b,c]", "jury.name=panel3", "jury.method=majority")
    assert out.returncode == 0, out.stderr[-3000:]
    samples = pd.read_csv(run_dir / "judge/panel3/samples.csv")
    summary = pd.read_csv(run_dir / "judge/panel3/summary.csv")
    assert list(samples["id"]) == IDS and set(samples["judge"]) == {"panel3"}
    assert list(samples["judge_verdict"]) == [v for v, _ in MAJORITY]
    assert list(summary["judge"]) == ["panel3"] and summary["judge_invalid"][0] == 3
    assert "r / panel3: n=8, verdicts 1 correct, 4 incorrect, 3 invalid" in out.stdout
    assert "Fleiss' kappa" in out.stdout and "a vs b " in out.stdout and "b vs c " in out.stdout


@pytest.mark.integration
@pytest.mark.parametrize("args, message", [
    (["jury.judges=[a]"], r"error: jury.judges=\['a'\] names 1 judge; a jury needs at least two"),
    (["jury.judges=[a,zz]"], r"error: jury.judges: 'zz' is not a judge of run r .*finished judges: a, b, c\.$"),
    (["jury.judges=[a,b]", "jury.name=b"], r"error: jury.name='b' is also a member of the jury"),
])
def test_cli_errors_are_one_line(tmp_path, args, message):
    run_dir = panel_run(tmp_path)
    line = one_error_line(cli(tmp_path, *args))
    assert re.search(message, line), line
    assert sorted(p.name for p in (run_dir / "judge").iterdir()) == ["a", "b", "c"]
