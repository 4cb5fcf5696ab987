"""report.py: samples.csv and summary.csv as pure functions of the stored records, invalid verdicts counted apart
from wrong ones, every criterion with its interval, the leaderboard over runs of different data sets, and a full disk
while reporting (one line; the rerun completes). On hand-made runs: Wilson intervals at 0/16 and 2/2, a judge whose
verdicts are mostly invalid flagged everywhere, and text a spreadsheet would run as a formula escaped in every CSV."""

import csv
import json
import math
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from pipeline import report, tidy
from pipeline.metrics import exact_match, token_f1
from pipeline.rows import SAMPLE_COLUMNS, GenerationRow, VerdictRow

from conftest import (copy_run, make_cfg, mount_or_skip, no_temporary_files, one_error_line, read_jsonl, run_cli,
                      run_metrics, verdict_row, write_run)


@pytest.mark.slow
def test_samples_csv_matches_the_records(judged_run):
    stage = judged_run / "judge/smollm2-135m"
    samples = pd.read_csv(stage / "samples.csv", keep_default_na=False)
    assert list(samples.columns) == SAMPLE_COLUMNS + ["category"] and len(samples) == 16  # (kept)
    gens = {r["id"]: r for r in read_jsonl(judged_run / "generate/generations.jsonl")}
    assert list(samples["id"]) == sorted(gens, key=lambda i: gens[i]["index"])  # data set order
    verdicts = {v["id"]: v for v in read_jsonl(stage / "verdicts.jsonl")}
    for row in samples.itertuples():
        g = gens[row.id]
        assert json.loads(row.references) == g["references"] and row.prediction == g["prediction"]
        assert row.exact_match == int(exact_match(g["prediction"], g["references"]))
        assert row.token_f1 == pytest.approx(token_f1(g["prediction"], g["references"]), abs=1e-6)
        assert row.sequence_nll == pytest.approx(g["sequence_nll"])
        assert row.judge_verdict == verdicts[row.id]["verdict"] and row.judge_reply == verdicts[row.id]["reply"]
        assert row.category == g["meta"]["category"] and row.run_id == judged_run.name


@pytest.mark.slow
def test_answers_cut_at_the_token_limit_are_counted_and_said_first(judged_run):
    """The share of answers that stopped at generator.max_new_tokens (finish_reason length) is in summary.csv and
    right under the number to cite, in the digest and on the page."""
    stage = judged_run / "judge/smollm2-135m"
    samples = pd.read_csv(stage / "samples.csv", keep_default_na=False)
    summary = report.read_summary(stage / "summary.csv")
    cut = int((samples.finish_reason == "length").sum())
    limit = json.loads((judged_run / "generate/manifest.json").read_text())["fingerprint"]["generator"][
        "max_new_tokens"]
    assert cut > 0 and summary["answers_cut"] == cut and summary["max_new_tokens"] == limit
    assert summary["answers_cut_share"] == pytest.approx(cut / 16)
    lines = report.digest(summary).splitlines()
    assert lines[2] == report.cut_line(summary)
    assert lines[2].startswith(f"{cut} of 16 answers ({cut / 16:.1%}) stopped at generator.max_new_tokens={limit}")
    page = (stage / "report.html").read_text()
    assert page.index("To cite") < page.index(f"{cut} of 16 answers ({cut / 16:.1%}) stopped at") < page.index(
        'id="accuracy"')


@pytest.mark.slow
def test_summary_csv_is_consistent_with_samples(judged_run):
    stage = judged_run / "judge/smollm2-135m"
    samples = pd.read_csv(stage / "samples.csv", keep_default_na=False)
    summary = pd.read_csv(stage / "summary.csv").iloc[0]
    counts = samples["judge_verdict"].value_counts()
    assert summary["n"] == 16 and summary["run_id"] == "shared" and summary["judge"] == "smollm2-135m"
    assert summary["judge_correct"] == counts.get("correct", 0)
    assert summary["judge_correct"] + summary["judge_incorrect"] + summary["judge_invalid"] == 16
    valid = summary["judge_correct"] + summary["judge_incorrect"]
    assert summary["judge_accuracy"] == pytest.approx(summary["judge_correct"] / valid, rel=1e-5)
    assert summary["exact_match"] == pytest.approx(samples["exact_match"].mean(), rel=1e-5)
    assert summary["token_f1"] == pytest.approx(samples["token_f1"].mean(), rel=1e-5)
    ok = samples[samples.judge_verdict != "invalid"]
    agree = ((ok.judge_verdict == "correct").astype(int) == ok.exact_match).mean()
    assert summary["judge_em_agreement"] == pytest.approx(agree, rel=1e-5)


def test_invalid_verdicts_are_counted_apart_never_as_wrong(tmp_path):
    gens = [GenerationRow(id=f"q{i}", index=i, question="Q?", references=["Paris"], prompt=None, prediction=p,
                          finish_reason="eos", num_generated_tokens=3, token_ids=None, tokens=None,
                          token_logprobs=None, sequence_nll=1.0 + i, mean_nll=0.3)
            for i, p in enumerate(["Paris", "Lyon", "Paris"])]
    verdicts = [VerdictRow(id=f"q{i}", judge="j", mode="generate", prompt_name="p", prompt_version=1,
                           verdict="invalid", invalid_reason="empty reply", p_correct=None, verdict_mass=None,
                           reply="", finish_reason="eos") for i in range(3)]
    samples = report.sample_rows(gens, verdicts, tmp_path, "j")
    s = report.summarize(samples, "r", "j").iloc[0]
    assert s["judge_invalid"] == 3 and s["judge_incorrect"] == 0 and math.isnan(s["judge_accuracy"])
    assert s["n_judge"] == 0 and math.isnan(s["acc_judge"]) and math.isnan(s["kappa_exact_match_judge"])
    assert s["exact_match"] == pytest.approx(2 / 3) and s["acc_exact_match"] == pytest.approx(2 / 3)


@pytest.mark.slow
def test_summary_of_a_generated_run_has_every_criterion_with_intervals(judged_run):
    s = pd.read_csv(judged_run / "judge/smollm2-135m/summary.csv").iloc[0]
    for c in ("exact_match", "token_f1", "contains", "rouge_l", "judge"):
        assert s[f"acc_{c}_lo"] <= s[f"acc_{c}"] <= s[f"acc_{c}_hi"] and s[f"n_{c}"] == 16
    assert s["n_human"] == 0 and math.isnan(s["acc_human"])
    assert -1 <= s["kappa_exact_match_judge"] <= 1 and 0 <= s["auroc_sequence_nll_judge"] <= 1
    assert (judged_run / "judge/smollm2-135m/nll.png").is_file()


@pytest.mark.slow
@pytest.mark.integration
def test_leaderboard_keeps_different_data_sets_apart_and_says_so(clear_cut_run, judged_run, tmp_path):
    import shutil

    runs = tmp_path / "runs"
    for run in (clear_cut_run, judged_run):
        shutil.copytree(run, runs / run.name, symlinks=True)
    (runs / "unfinished/generate").mkdir(parents=True)  # a run still generating is skipped, and named
    (runs / "unfinished/run.json").write_text('{"created": 2}')
    out = run_cli("stage=report", "report.runs=[all]", f"runs_dir={runs}", "report.bootstrap=200", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "2 different data sets" in out.stdout and "compare rows within a group only" in out.stdout
    assert "skipped unfinished:" in out.stdout
    board = pd.read_csv(runs / "leaderboard.csv")
    assert set(board["run_id"]) == {"clear", "shared"} and board["dataset"].nunique() == 2
    assert {"acc_judge", "acc_judge_lo", "acc_judge_hi", "kappa_judge_human", "judge_invalid"} <= set(board.columns)


@pytest.mark.slow
@pytest.mark.integration
def test_a_full_disk_while_reporting_is_one_line_and_the_rerun_completes(judged_run, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mount_or_skip("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk))
    try:
        run = copy_run(judged_run, disk)
        folder = run / "judge/smollm2-135m"
        for name in ("samples.csv", "summary.csv", "accuracy.png", "nll.png"):
            (folder / name).unlink(missing_ok=True)
        filler = disk / "filler"
        with open(filler, "wb", buffering=0) as f:  # fill the disk up to its last few KiB
            try:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
            except OSError:
                pass
        out = run_cli("stage=report", "run_id=copy", f"runs_dir={disk}/runs", "report.plots=false", cwd=tmp_path)
        line = one_error_line(out)
        assert "the disk is full" in line and re.search(r"needing [\d.]+ [KM]iB more", line) and str(folder) in line
        no_temporary_files(disk)
        assert not (folder / "summary.csv").exists()
        filler.unlink()
        out = run_cli("stage=judge", "run_id=copy", f"runs_dir={disk}/runs", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert "writing them again" in out.stderr and (folder / "summary.csv").is_file()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


# ------------------------------------------------------------------- hand-made runs at the edges (issue 18)

def edge_run(runs_dir, name="edge"):
    """16 answers that no lexical criterion calls right ("rome" for Paris), and two judges: j, whose verdicts are
    invalid but for two (both correct), as a prompt the logprob mode cannot read leaves them; k, valid throughout,
    half of them correct."""
    answers = [GenerationRow.answer(f"q{i:02d}", f"question {i}?", ["Paris"], "rome", i) for i in range(16)]
    j = [verdict_row(a.id, "j", "correct" if i < 2 else "invalid", 0.9 if i < 2 else None)
         for i, a in enumerate(answers)]
    k = [verdict_row(a.id, "k", "correct" if i % 2 else "incorrect", 0.8 if i % 2 else 0.3)
         for i, a in enumerate(answers)]
    return write_run(runs_dir, name, answers, {"j": j, "k": k})


def test_accuracy_intervals_are_wilson_and_do_not_collapse_at_the_edges(tmp_path):
    from statsmodels.stats.proportion import proportion_confint

    run = edge_run(tmp_path / "runs")
    report.write(run, "j")
    s = pd.read_csv(run / "judge/j/summary.csv").iloc[0]
    assert s.acc_exact_match == 0 and s.n_exact_match == 16 and s.n_judge == 2 and s.acc_judge == 1
    for c, (k, n) in (("exact_match", (0, 16)), ("contains", (0, 16)), ("judge", (2, 2))):
        want = proportion_confint(k, n, alpha=0.05, method="wilson")
        assert (s[f"acc_{c}_lo"], s[f"acc_{c}_hi"]) == pytest.approx(want, rel=1e-5), c
    assert s.acc_exact_match_hi > 0.15 and s.acc_judge_lo < 0.5  # the bootstrap said [0, 0] and [1, 1]
    metrics = run_metrics(run, "j")
    row = tidy.pick(metrics, "judge", "accuracy")
    assert (row["lo"], row["hi"]) == pytest.approx((s.acc_judge_lo, s.acc_judge_hi), rel=1e-5)
    short = tidy.pick(metrics, "exact_match", "accuracy[words<=5]")  # the length breakdown has the same interval
    assert (short["value"], short["n"]) == (0, 16)
    assert (short["lo"], short["hi"]) == pytest.approx(proportion_confint(0, 16, method="wilson"), rel=1e-5)
    text = report.digest(s.to_dict())
    assert "exact_match 0.000 [0.000, 0.194]" in text and "judge 1.000 [0.342, 1.000]" in text
    page = (run / "judge/j/report.html").read_text()
    assert "[0.000, 0.194]" in page and "Wilson score intervals" in page and "Percentile bootstrap" not in page


def test_a_judge_mostly_invalid_is_flagged_everywhere_and_ranked_below(tmp_path):
    runs = tmp_path / "runs"
    edge_run(runs)
    report.run(make_cfg(runs, "report.runs=[edge]"))
    j = pd.read_csv(runs / "edge/judge/j/summary.csv").iloc[0]
    k = pd.read_csv(runs / "edge/judge/k/summary.csv").iloc[0]
    assert j.judge_invalid_share == pytest.approx(14 / 16) and bool(j.judge_invalid_flagged)
    assert j.acc_judge_invalid_as_wrong == pytest.approx(2 / 16) and j.acc_judge_invalid_as_right == 1
    assert k.judge_invalid_share == 0 and not bool(k.judge_invalid_flagged)
    assert k.acc_judge_invalid_as_wrong == k.acc_judge_invalid_as_right == k.acc_judge == 0.5
    text = report.digest(j.to_dict())
    assert "warning: 14 of 16 verdicts are invalid (87.5%, more than report.max_invalid_share=5%)" in text
    assert "0.125 (every invalid verdict counted wrong) to 1.000 (counted right)" in text
    assert "warning" not in report.digest(k.to_dict())
    page = (runs / "edge/judge/j/report.html").read_text()
    assert 'data-flag="invalid"' in page and "14 of 16 verdicts are invalid" in page
    assert 'data-flag="invalid"' not in (runs / "edge/judge/k/report.html").read_text()
    board = pd.read_csv(runs / "leaderboard.csv")
    assert list(board.judge) == ["k", "j"]  # j's 1.000 over 2 verdicts no longer ranks first
    assert list(board.judge_invalid_flagged) == [False, True]
    assert board.acc_judge_invalid_as_wrong.tolist() == pytest.approx([0.5, 0.125])
    html = (runs / "leaderboard.html").read_text()
    assert html.count('data-flag="invalid"') == 1 and "87.5% invalid" in html
    cfg = make_cfg(runs, "report.runs=[edge]", "report.max_invalid_share=0.9")  # the threshold is a setting
    report.run(cfg)
    assert not pd.read_csv(runs / "leaderboard.csv").judge_invalid_flagged.any()


FORMULAS = ("=1+1", "-5", "+7", "@SUM(A1)", "\t=2", "\r-3", "'quoted", "=HYPERLINK(\"http://x\",\"y\")")
TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def formula_run(runs_dir):
    """Answers whose ids, questions, predictions, replies and data set carry text a spreadsheet would run, and a
    judge k that disagrees with exact match on every answer (kappa -1: a negative number stays a number)."""
    answers, judged = [], []
    for i, text in enumerate(FORMULAS * 2):
        right = i % 2 == 0
        answers.append(GenerationRow.answer(text if i < len(FORMULAS) else f"id{i}", f"{text} question {i}",
                                            ["Paris"], ("paris" if right else text), i))
        v = verdict_row(answers[-1].id, "k", "incorrect" if right else "correct", 0.2 if right else 0.8)
        judged.append(replace(v, reply=f"-{text}"))
    run = write_run(runs_dir, "fx", answers, {"k": judged})
    manifest = json.loads((run / "generate/manifest.json").read_text())
    manifest["dataset"]["name"], manifest["generator"]["name"] = "=cmd|' /C calc'!A0", "+generator"
    (run / "generate/manifest.json").write_text(json.dumps(manifest))
    return run, answers


def cells(path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return [cell for row in csv.reader(f) for cell in row]


def is_number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def test_formula_like_text_never_reaches_a_spreadsheet_as_a_formula(tmp_path):
    runs = tmp_path / "runs"
    run, answers = formula_run(runs)
    report.run(make_cfg(runs, "report.runs=[fx]"))
    folder = run / "judge/k"
    for path in (folder / "samples.csv", folder / "summary.csv", folder / "metrics.csv", runs / "leaderboard.csv"):
        risky = [c for c in cells(path) if c.startswith(TRIGGERS) and not is_number(c)]
        assert risky == [], path.name
    with open(folder / "summary.csv", newline="") as f:
        kappa = next(csv.DictReader(f))["kappa_exact_match_judge"]
    assert float(kappa) == -1 and kappa.startswith("-")  # a negative kappa is a number, not a formula
    raw = cells(folder / "samples.csv")
    assert "'=1+1" in raw and "'-5" in raw and "''quoted" in raw and "'\t=2" in raw
    from pipeline.cells import read_csv

    samples = read_csv(folder / "samples.csv")  # read back, the cells are the answers' own text
    assert list(samples.id) == [a.id for a in answers] and list(samples.question) == [a.question for a in answers]
    assert list(samples.prediction) == [a.prediction for a in answers]
    records = read_jsonl(run / "generate/generations.jsonl")  # the records were never escaped
    assert [r["id"] for r in records] == [a.id for a in answers]
    assert [r["prediction"] for r in records] == [a.prediction for a in answers]
    replies = {r["id"]: r["reply"] for r in read_jsonl(folder / "verdicts.jsonl")}
    assert all(reply.startswith("-") for reply in replies.values())
    board = read_csv(runs / "leaderboard.csv")
    assert board.loc[0, "dataset"] == "=cmd|' /C calc'!A0" and board.loc[0, "generator"] == "+generator"
    html = (runs / "leaderboard.html").read_text()
    assert 'href="fx/judge/k/report.html"' in html  # the row read back still names its run


# ------------------------------------------------------------------------------------------- paired comparisons

def test_two_runs_over_the_same_questions_are_one_group_with_a_paired_difference(judged_run, tmp_path):
    """A run made here and one imported from another system (named after the file: `answers`), over the same 16
    questions, judged by the same judge: one leaderboard group named by both, and for each criterion the paired
    difference with its interval, McNemar's p (statsmodels' on the same table), wins and losses, in comparisons.csv,
    in both runs' metrics.csv (against run:<other>), in the digest and on the leaderboard page."""
    from statsmodels.stats.contingency_tables import mcnemar

    runs = copy_run(judged_run, tmp_path, "here").parent
    answers = read_jsonl(runs / "here/generate/generations.jsonl")
    other = [{"id": a["id"], "question": a["question"], "references": a["references"],
              "prediction": a["references"][0] if i % 3 else "no idea"} for i, a in enumerate(answers)]
    (tmp_path / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in other))
    for args in (["stage=import", "predictions=answers.jsonl", "run_id=there"], ["stage=judge", "run_id=there"]):
        out = run_cli(*args, f"runs_dir={runs}", "progress=false", "report.plots=false", cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
    out = run_cli("stage=report", "report.runs=[here,there]", f"runs_dir={runs}", "progress=false",
                  "report.plots=false", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "different data sets" not in out.stdout
    board = pd.read_csv(runs / "leaderboard.csv")
    assert set(board["dataset"]) == {"answers = factoids"} and board["dataset_sha256"].nunique() == 1

    compared = pd.read_csv(runs / "comparisons.csv")
    assert set(compared["run_id"]) == {"here"} and set(compared["against"]) == {"run:there"}
    em = {r["statistic"]: r for r in compared[compared.criterion == "exact_match"].to_dict("records")}
    mine = [exact_match(a["prediction"], a["references"]) for a in answers]
    theirs = [exact_match(o["prediction"], o["references"]) for o in other]
    wins = sum(x and not y for x, y in zip(mine, theirs))
    losses = sum(y and not x for x, y in zip(mine, theirs))
    assert (em["wins"]["value"], em["losses"]["value"], em["difference"]["n"]) == (wins, losses, 16)
    assert em["difference"]["value"] == pytest.approx((wins - losses) / 16)
    assert em["difference"]["lo"] < em["difference"]["value"] < em["difference"]["hi"]
    both = sum(x and y for x, y in zip(mine, theirs))
    table = [[both, wins], [losses, 16 - both - wins - losses]]
    assert em["mcnemar_p"]["value"] == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-5)

    assert compared[compared.criterion == "exact_match"].judge.isna().all()  # once per pair, whatever the judges
    assert (compared[compared.criterion == "judge"].judge == "smollm2-135m").all()
    assert set(compared.dataset) == {"factoids"} and set(compared.generator) == {"smollm2-135m"}
    there = pd.read_csv(runs / "there/metrics.csv")  # the run's own file: the rows no judge enters
    back = there[(there.against == "run:here") & (there.criterion == "exact_match")].set_index("statistic")
    assert back.loc["wins", "value"] == losses and back.loc["difference", "value"] == pytest.approx(-(wins - losses) / 16)
    assert set(there.dataset) == {"answers"} and set(there.generator) == {"import:answers"}
    judged_there = pd.read_csv(runs / "there/judge/smollm2-135m/metrics.csv")
    assert set(judged_there[judged_there.against == "run:here"].criterion) == {"judge"}
    assert "paired (smollm2-135m, " in out.stdout and "here - there = " in out.stdout and "McNemar p = " in out.stdout
    page = (runs / "leaderboard.html").read_text()
    assert "Paired comparisons (the same questions)" in page and 'data-other="there"' in page
    # the answers the judge calls right in one run only, each linked to both runs' answer browsers
    verdicts = {run: {v["id"]: v["verdict"] for v in read_jsonl(runs / f"{run}/judge/smollm2-135m/verdicts.jsonl")}
                for run in ("here", "there")}
    split = [i for i in verdicts["here"] if {verdicts["here"][i], verdicts["there"][i]} == {"correct", "incorrect"}]
    assert split
    listed = page.split('class="disagree" data-run="here" data-other="there"')[1].split("</details>")[0]
    assert f"<summary>{len(split)} answers where the verdicts part" in listed
    for i in split:
        assert f'<li data-id="{i}">' in listed and f'href="here/judge/smollm2-135m/report.html#id={i}"' in listed
        assert f'href="there/judge/smollm2-135m/report.html#id={i}"' in listed

    # the data set's name is the file's unless the command gives one
    out = run_cli("stage=import", "predictions=answers.jsonl", "run_id=named", "dataset.name=factoids",
                  f"runs_dir={runs}", "progress=false", cwd=tmp_path)
    assert json.loads((runs / "named/generate/manifest.json").read_text())["dataset"]["name"] == "factoids"
    assert json.loads((runs / "there/generate/manifest.json").read_text())["dataset"]["name"] == "answers"

    # reported again: the rows are replaced, not added twice
    out = run_cli("stage=report", "report.runs=[here,there]", f"runs_dir={runs}", "progress=false",
                  "report.plots=false", cwd=tmp_path)
    again = pd.read_csv(runs / "there/metrics.csv")
    assert len(again[again.against == "run:here"]) == len(there[there.against == "run:here"])
    again = pd.read_csv(runs / "there/judge/smollm2-135m/metrics.csv")
    assert len(again[again.against == "run:here"]) == len(judged_there[judged_there.against == "run:here"])

    # one run reported again alone, its results unchanged: the comparisons stand
    out = run_cli("stage=report", "run_id=here", f"runs_dir={runs}", "progress=false", "report.plots=false",
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    here = pd.read_csv(runs / "here/judge/smollm2-135m/metrics.csv")
    assert (here.against == "run:there").sum() == 4 and (pd.read_csv(runs / "here/metrics.csv").against
                                                         == "run:there").sum() == 4 * 4
    # the other run judged anew (other verdicts): every comparison of its verdicts goes, here, there and in
    # comparisons.csv; the lexical ones, of answers that did not change, stay
    out = run_cli("stage=judge", "run_id=there", "overwrite=true", "judge.threshold=0.95", f"runs_dir={runs}",
                  "progress=false", "report.plots=false", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not (pd.read_csv(runs / "here/judge/smollm2-135m/metrics.csv").against == "run:there").any()
    assert not (pd.read_csv(runs / "there/judge/smollm2-135m/metrics.csv").against == "run:here").any()
    compared = pd.read_csv(runs / "comparisons.csv")
    assert set(compared.criterion) == set(report.LEXICAL)  # the judge's rows gone, the lexical ones kept
    assert (pd.read_csv(runs / "here/metrics.csv").against == "run:there").sum() == 4 * 4


def waiting_for_a_lock(pid: int) -> bool:
    """Whether process `pid` is blocked waiting for a file lock (a "->" line of /proc/locks names the waiter)."""
    lines = Path("/proc/locks").read_text().splitlines()
    return any("->" in line and line.split("->", 1)[1].split()[3] == str(pid) for line in lines)


def test_a_report_over_runs_waits_while_another_process_rewrites_their_shared_results(judged_run, tmp_path):
    """Comparisons between runs live in every run's metrics.csv and in comparisons.csv; a judge's report drops the
    ones its new verdicts undo. A report over several runs that wrote between those steps would put back rows of
    the old verdicts, so both hold runs/.results.lock: here the test holds it (as a judge's report would), and the
    report over two runs waits in the kernel, writes nothing meanwhile, and finishes once it is let go."""
    import fcntl
    import os
    import sys
    import time

    runs = copy_run(judged_run, tmp_path, "a").parent
    copy_run(judged_run, tmp_path, "b")
    fd = os.open(runs / ".results.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "stage=report", "report.runs=[a,b]",
                             f"runs_dir={runs}", "progress=false", "report.plots=false"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not waiting_for_a_lock(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert waiting_for_a_lock(proc.pid), f"the report did not wait for the lock (status {proc.poll()})"
        assert not (runs / "comparisons.csv").exists() and not (runs / "leaderboard.csv").exists()
    finally:
        os.close(fd)  # let it go
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    compared = pd.read_csv(runs / "comparisons.csv")
    assert set(compared["against"]) == {"run:b"} and (compared["statistic"] == "difference").any()


def test_answers_made_again_take_the_runs_own_metrics_aside_with_the_judges(judged_run, tmp_path):
    """runs/<id>/metrics.csv holds statistics of the answers (exact match, the labels, comparisons with other runs):
    generating them again with overwrite=true moves it to replaced/ with the judges' results, so no statistic of
    the old answers is read with the new ones."""
    run = copy_run(judged_run, tmp_path, "again")
    before = (run / "metrics.csv").read_bytes()
    out = run_cli("stage=generate", "run_id=again", "overwrite=true", "dataset.limit=16", "generator.max_new_tokens=3",
                  f"runs_dir={run.parent}", "progress=false", "threads=1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not (run / "metrics.csv").exists() and not (run / "judge").exists()
    moved = list((run / "replaced").glob("*/metrics.csv"))
    assert len(moved) == 1 and moved[0].read_bytes() == before
    assert (moved[0].parent / "judge/smollm2-135m/metrics.csv").is_file()


def test_two_judges_on_the_same_answers_are_compared_paired(judged_run, tmp_path):
    """Each judge's metrics.csv compares it with every other judge of the run on the same answers: difference of
    their accuracies over the answers both judged validly, its interval, McNemar's p, wins and losses."""
    from pipeline import judge

    runs = copy_run(judged_run, tmp_path, "two").parent
    judge.run(make_cfg(runs, "run_id=two", "judge.name=gen", "judge.mode=generate", "report.plots=false"))
    report.write(runs / "two", "smollm2-135m")
    a = {v["id"]: v["verdict"] for v in read_jsonl(runs / "two/judge/smollm2-135m/verdicts.jsonl")}
    b = {v["id"]: v["verdict"] for v in read_jsonl(runs / "two/judge/gen/verdicts.jsonl")}
    valid = [k for k in a if a[k] != "invalid" and b[k] != "invalid"]
    wins = sum(a[k] == "correct" and b[k] == "incorrect" for k in valid)
    losses = sum(a[k] == "incorrect" and b[k] == "correct" for k in valid)
    for name, (w, l) in (("smollm2-135m", (wins, losses)), ("gen", (losses, wins))):
        m = pd.read_csv(runs / f"two/judge/{name}/metrics.csv")
        other = "gen" if name == "smollm2-135m" else "smollm2-135m"
        got = m[m.against == f"judge:{other}"].set_index("statistic")
        assert (got.loc["wins", "value"], got.loc["losses", "value"]) == (w, l)
        assert got.loc["difference", "n"] == len(valid)
        assert got.loc["difference", "value"] == pytest.approx((w - l) / len(valid))
        assert got.loc["difference", "lo"] <= got.loc["difference", "value"] <= got.loc["difference", "hi"]


# ------------------------------------------------------------------------------------------- your own columns

def test_kept_columns_reach_samples_csv_and_report_by_breaks_every_result_down(judged_run, tmp_path):
    """The shared run keeps the embedded data set's `category` column (dataset.fields.keep): it is in every record and in
    samples.csv beside run_id, dataset and generator; report.by=[category] adds each subset's accuracy (Wilson
    interval, counted here from samples.csv), agreement and kappa to metrics.csv, a section to the page and lines to
    the digest. A column the run does not have is one line naming what it does have."""
    from statsmodels.stats.proportion import proportion_confint

    runs = copy_run(judged_run, tmp_path, "kept").parent
    records = read_jsonl(runs / "kept/generate/generations.jsonl")
    assert all(set(r["meta"]) == {"category"} and r["schema"] == "generation/3" for r in records)
    out = run_cli("stage=report", "run_id=kept", "report.by=[category]", f"runs_dir={runs}", "progress=false",
                  "report.plots=false", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    folder = runs / "kept/judge/smollm2-135m"
    samples = pd.read_csv(folder / "samples.csv")
    assert list(samples.columns[:4]) == ["run_id", "dataset", "generator", "id"] and samples.columns[-1] == "category"
    assert set(samples.run_id) == {"kept"} and set(samples.dataset) == {"factoids"}
    assert set(samples.generator) == {"smollm2-135m"}
    want = {json.loads(line)["id"]: json.loads(line)["category"] for line in
            (Path(__file__).parents[1] / "src/pipeline/data/factoids.jsonl").read_text().splitlines()}
    assert samples.set_index("id").category.to_dict() == {i: want[i] for i in samples.id}

    metrics = run_metrics(runs / "kept", "smollm2-135m")
    for category, part in samples.groupby("category"):
        right = int((part.judge_verdict == "correct").sum())
        valid = int(part.judge_verdict.isin(["correct", "incorrect"]).sum())
        row = tidy.pick(metrics, "judge", f"accuracy[category={category}]")
        if valid:
            assert (row["value"], row["n"]) == (pytest.approx(right / valid), valid)
            assert (row["lo"], row["hi"]) == pytest.approx(proportion_confint(right, valid, method="wilson"), rel=1e-5)
        em = tidy.pick(metrics, "exact_match", f"accuracy[category={category}]")
        assert (em["value"], em["n"]) == (pytest.approx(part.exact_match.mean()), len(part))
        assert pd.isna(em["judge"])  # no judge enters it: in the run's own metrics.csv, once
    assert f"judge accuracy by category (95% Wilson): " in out.stdout
    page = (folder / "report.html").read_text()
    assert 'id="by-category"' in page and page.count("data-subset=") == samples.category.nunique()

    out = run_cli("stage=report", "run_id=kept", "report.by=[topic]", f"runs_dir={runs}", "progress=false",
                  "report.plots=false", cwd=tmp_path)
    assert out.returncode == 2
    line = one_error_line(out)
    assert "report.by=[topic]" in line and "no column 'topic'" in line and "category" in line
    assert "dataset.fields.keep=[topic]" in line


def test_kept_columns_come_through_import_and_bad_ones_are_refused(tmp_path):
    """import_fields.keep carries a file's columns (a latency, a topic) into the records; a kept column that holds a
    list is refused naming its row; a kept column named like a samples.csv column is refused before anything runs."""
    rows = [{"id": f"q{i}", "question": f"capital {i}?", "references": ["Paris"], "prediction": "paris" if i % 2 else "rome",
             "latency_ms": 100 + i, "topic": "geo" if i < 3 else None} for i in range(6)]
    (tmp_path / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = run_cli("stage=import", "predictions=answers.jsonl", "run_id=imp", "import_fields.keep=[latency_ms,topic]",
                  "progress=false", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    records = read_jsonl(tmp_path / "runs/imp/generate/generations.jsonl")
    assert [r["meta"] for r in records[:4]] == [{"latency_ms": 100 + i, "topic": "geo" if i < 3 else None}
                                               for i in range(4)]
    rows[4]["topic"] = ["geo", "maths"]
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = run_cli("stage=import", "predictions=bad.jsonl", "run_id=bad", "import_fields.keep=[topic]",
                  "progress=false", cwd=tmp_path)
    assert out.returncode == 2 and "row 5 (id q4): kept column 'topic' holds list" in one_error_line(out)
    assert not (tmp_path / "runs/bad").exists()
    out = run_cli("stage=import", "predictions=answers.jsonl", "run_id=clash", "import_fields.keep=[prediction]",
                  "progress=false", cwd=tmp_path)
    assert out.returncode == 2 and "import_fields.keep=[prediction] names 'prediction'" in one_error_line(out)
