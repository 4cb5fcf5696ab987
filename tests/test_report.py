"""report.py: samples.csv and summary.csv as pure functions of the stored records, invalid verdicts counted apart
from wrong ones, every criterion with its interval, the leaderboard over runs of different data sets, and a full disk
while reporting (one line; the rerun completes)."""

import json
import math
import subprocess

import pandas as pd
import pytest

from pipeline import report
from pipeline.metrics import exact_match, token_f1
from pipeline.rows import SAMPLE_COLUMNS, GenerationRow, VerdictRow

from conftest import copy_run, mount_or_skip, no_temporary_files, one_error_line, read_jsonl, run_cli


@pytest.mark.slow
def test_samples_csv_matches_the_records(judged_run):
    stage = judged_run / "judge/smollm2-135m"
    samples = pd.read_csv(stage / "samples.csv", keep_default_na=False)
    assert list(samples.columns) == SAMPLE_COLUMNS and len(samples) == 16
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
        assert "the disk is full" in line and "MiB more" in line and str(folder) in line
        no_temporary_files(disk)
        assert not (folder / "summary.csv").exists()
        filler.unlink()
        out = run_cli("stage=judge", "run_id=copy", f"runs_dir={disk}/runs", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert "writing them again" in out.stderr and (folder / "summary.csv").is_file()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
