"""Results people read, diff and plot: per-sample CSV, summary CSV and figures per (run, judge), and a leaderboard.

    python -m pipeline stage=report run_id=<id>                 # rewrite one run's results from its records
    python -m pipeline stage=report report.runs=[a,b,c]         # ... for several runs, plus runs/leaderboard.csv
    python -m pipeline stage=report report.runs=[all]

runs/<run_id>/judge/<judge>/
    samples.csv      one row per question: the lexical criteria, the verdict and P(correct), NLL, human label
    summary.csv      one row: accuracy under every criterion with its 95% Wilson score interval (stats.py); agreement
                     and Cohen's kappa between each pair of criteria; against human labels (agreement, kappa, false
                     positives, false negatives); AUROC of the generator's NLL against each criterion; invalid
                     verdicts, their share and the judge's accuracy with them counted wrong and counted right; with
                     human labels, the prediction-powered (PPI++) accuracy and the calibrated thresholds
    metrics.csv      every statistic as one row of a long table (tidy.py): run_id, judge, criterion, statistic,
                     against, value, lo, hi, n, note
    report.html      all of it on one self-contained page, with a browser of every answer (pages.py)
    accuracy.png     accuracy per criterion with its interval
    nll.png          NLL of the answers the judge called correct vs incorrect (when the run has NLLs)
    reliability.png  P(correct) against the human labels (logprob mode with human labels)

Criteria (each a yes/no per answer): exact_match (SQuAD-normalised), token_f1 (F1 >= report.f1_threshold),
contains (a reference inside the answer), rouge_l (ROUGE-L > report.rouge_threshold), judge (the verdict, where
valid: an invalid verdict is left out, never counted as wrong), human (the human label, where there is one).

Accuracies (every criterion, the length breakdown, the page, the digest) have the Wilson score interval of a
proportion, which does not collapse to a point at 0/n or n/n; agreement and kappa keep the percentile bootstrap.
Two things the numbers alone would hide are said in words wherever they are shown:
  - too few labels: a statistic against the human labels (PPI++, labels needed, kappa and agreement with humans,
    by length too, calibrated thresholds) needs report.min_labels labels of both classes among the answers it rests
    on; with fewer its value is empty (NaN) and it reads "too few labels (n)" (summary.csv's labels_note, the
    `note` column of metrics.csv);
  - a judge whose share of invalid verdicts is above report.max_invalid_share is flagged (judge_invalid_flagged,
    a warning in the digest and on the page, ranked below the others on the leaderboard), with its accuracy
    counting every invalid verdict wrong and right beside the accuracy over the valid ones.
The CSVs are written for spreadsheets (cells.py: a text cell that would run as a formula gets a leading ').
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from .binding import answer_hashes, check_bound
from .config import ReportConfig
from .data import QAItem, content_hash
from .engines.cost import cost_line, with_engine
from .errors import PipelineError
from . import cells, pages
from .figures import plot
from .files import read_json, write_atomic
from .metrics import CRITERIA, contains_reference, exact_match, rouge_l, token_f1
from .rows import SAMPLE_COLUMNS, GenerationRow, SampleRow, VerdictRow, parse_rows
from .runs import StageDir, finished_judges, list_runs, find_run  # noqa: F401 (also report.finished_judges)
from .estimates import label_shortage
from .labelset import load_labels, with_labels
from .locks import results_lock
from .stats import agreement, auroc, cohen_kappa, proportion_interval
from .tidy import COLUMNS, MORE_LABELS, Table, metrics_table, paired_groups, paired_rows, pick
from .wording import (PPI_ASSUMPTION, cite_line, cut_line, invalid_warning, label_plan_line,  # noqa: F401
                      text)
from .verdict import CORRECT, INCORRECT, INVALID

log = logging.getLogger(__name__)

def settings(cfg=None) -> ReportConfig:
    """The report.* settings of a config; the schema's defaults without one."""
    return cfg.report if cfg is not None else ReportConfig()


# ------------------------------------------------------------------------------------------- per sample

def sample_rows(answers: list[GenerationRow], verdicts: list[VerdictRow], run_dir: Path, judge: str,
                made: tuple[str, str] = ("", "")) -> pd.DataFrame:
    """samples.csv: one rows.SampleRow per answer, in data set order (file order for answers without an index), then
    the columns kept with the questions (GenerationRow.meta). `made`: the data set's and the generator's names."""
    by_id = {v.id: v for v in verdicts}
    missing = [a.id for a in answers if a.id not in by_id]
    if missing:
        raise PipelineError(f"run {run_dir.name}: judge {judge} has no verdict for {len(missing)} answers "
                            f"(first: {missing[:5]}); re-run stage=judge to finish it.")
    rows, kept = [], {}
    for a in sorted(answers, key=lambda a: a.index):
        scores = {"exact_match": exact_match(a.prediction, a.references),
                  "token_f1": token_f1(a.prediction, a.references),
                  "contains_reference": contains_reference(a.prediction, a.references),
                  "rouge_l": rouge_l(a.prediction, a.references)}
        rows.append(asdict(SampleRow.of((run_dir.name, *made), a, by_id[a.id], scores)))
        kept.update(dict.fromkeys(a.meta or {}))
    frame = pd.DataFrame(rows, columns=SAMPLE_COLUMNS)
    for column in ("human_label", "num_generated_tokens"):  # whole numbers with gaps: 1, 0 or empty, never "1.0"
        frame[column] = frame[column].astype("Int64")
    clash = [c for c in kept if c in frame.columns]
    if clash:
        raise PipelineError(f"run {run_dir.name}: a kept column is named like a column of samples.csv ({clash[0]!r}); "
                            "rename it in the data (or keep another column).")
    ordered = sorted(answers, key=lambda a: a.index)
    for column in kept:
        frame[column] = [(a.meta or {}).get(column) for a in ordered]
    return frame


def check_by(samples: pd.DataFrame, run_id: str, s: ReportConfig) -> None:
    """Every report.by column is a column of samples.csv; the error lists the ones a breakdown can use."""
    usable = [c for c in samples.columns if c not in SAMPLE_COLUMNS] + ["finish_reason"]
    for column in s.by:
        if column not in samples.columns:
            raise PipelineError(
                f"report.by=[{','.join(s.by)}]: run {run_id} has no column {column!r} (it can break down by: "
                f"{', '.join(usable)}). Keep the column with the questions when generating or importing "
                f"(dataset.fields.keep=[{column}] or import_fields.keep=[{column}]), or leave it out of report.by.")


def criteria(samples: pd.DataFrame, s: ReportConfig) -> pd.DataFrame:
    """One column per criterion: 1.0 (correct), 0.0 (not correct), NaN (undefined for that answer)."""
    judged = samples["judge_verdict"].map({CORRECT: 1.0, INCORRECT: 0.0, INVALID: np.nan})
    return pd.DataFrame({
        "exact_match": samples["exact_match"].astype(float),
        "token_f1": (samples["token_f1"] >= s.f1_threshold).astype(float),
        "contains": samples["contains_reference"].astype(float),
        "rouge_l": (samples["rouge_l"] > s.rouge_threshold).astype(float),
        "judge": judged.astype(float),
        "human": pd.to_numeric(samples["human_label"], errors="coerce").astype(float),
    })


# ----------------------------------------------------------------------------------------------- summary

def summarize(samples: pd.DataFrame, run_id: str, judge: str, s: ReportConfig | None = None) -> pd.DataFrame:
    s = s or settings()
    n = len(samples)
    counts = samples["judge_verdict"].value_counts()
    correct, incorrect, invalid = (int(counts.get(k, 0)) for k in (CORRECT, INCORRECT, INVALID))
    crit = criteria(samples, s)
    row: dict = {
        "run_id": run_id, "judge": judge, "n": n,
        "judge_correct": correct, "judge_incorrect": incorrect, "judge_invalid": invalid,
        "judge_accuracy": correct / (correct + incorrect) if correct + incorrect else np.nan,
        "judge_accuracy_all": correct / n if n else np.nan,
        **invalid_share(correct, invalid, n, s),
        **cut_off(samples),
        "exact_match": samples["exact_match"].mean() if n else np.nan,
        "token_f1": samples["token_f1"].mean() if n else np.nan,
    }
    valid = crit["judge"].notna()
    row["judge_em_agreement"] = agreement(crit.loc[valid, "judge"], crit.loc[valid, "exact_match"]) \
        if valid.any() else np.nan
    row["judge_em_agreement_n"] = int(valid.sum())

    for c in CRITERIA:  # accuracy under every criterion, with its Wilson interval
        values = crit[c].dropna().to_numpy()
        right = int((values == 1).sum())
        row[f"acc_{c}"] = right / len(values) if len(values) else np.nan
        row[f"acc_{c}_lo"], row[f"acc_{c}_hi"] = proportion_interval(right, len(values))
        row[f"n_{c}"] = len(values)
    # agreement between each pair, where both are defined (against the human labels: where those are enough)
    for a, b in combinations(CRITERIA, 2):
        both = crit[[a, b]].dropna()
        known = len(both) > 0 and not (b == "human" and label_shortage(both[b], s.min_labels))
        row[f"agree_{a}_{b}"] = agreement(both[a], both[b]) if known else np.nan
        row[f"kappa_{a}_{b}"] = cohen_kappa(both[a], both[b]) if known else np.nan
        row[f"n_{a}_{b}"] = len(both)
    for c in CRITERIA[:-1]:  # against the human labels: false positives and false negatives of each criterion
        both = crit[[c, "human"]].dropna()
        row[f"human_fp_{c}"] = int(((both[c] == 1) & (both["human"] == 0)).sum())
        row[f"human_fn_{c}"] = int(((both[c] == 0) & (both["human"] == 1)).sum())
    for nll in ("sequence_nll", "mean_nll"):  # the generator's uncertainty against each criterion
        for c in CRITERIA:
            both = pd.concat([samples[nll].astype(float), crit[c]], axis=1).dropna()
            row[f"auroc_{nll}_{c}"] = auroc(-both[nll], both[c] == 1) if len(both) else np.nan
    p = pd.concat([pd.to_numeric(samples["judge_p_correct"], errors="coerce"), crit["human"]], axis=1).dropna()
    known = len(p) > 0 and not label_shortage(p["human"], s.min_labels)
    row["auroc_p_correct_human"] = auroc(p.iloc[:, 0], p["human"] == 1) if known else np.nan
    row["brier_p_correct_human"] = float(((p.iloc[:, 0] - p["human"]) ** 2).mean()) if known else np.nan
    return pd.DataFrame([row])


def cut_off(samples: pd.DataFrame) -> dict:
    """How many answers stopped at generator.max_new_tokens (finish_reason "length": possibly cut mid-answer), and
    their share; the share is NaN where no answer has a finish reason (imported ones)."""
    reasons = samples["finish_reason"]
    cut = int((reasons == "length").sum())
    return {"answers_cut": cut, "answers_cut_share": cut / len(samples) if reasons.notna().any() else np.nan}


def invalid_share(correct: int, invalid: int, n: int, s: ReportConfig) -> dict:
    """The share of invalid verdicts, whether it is above report.max_invalid_share (then the judge is flagged), and
    the bounds of the judge's accuracy over all n answers: every invalid verdict counted wrong, and counted right."""
    share = invalid / n if n else np.nan
    return {"judge_invalid_share": share, "judge_invalid_share_max": s.max_invalid_share,
            "judge_invalid_flagged": bool(n and share > s.max_invalid_share),
            "acc_judge_invalid_as_wrong": correct / n if n else np.nan,
            "acc_judge_invalid_as_right": (correct + invalid) / n if n else np.nan}


def with_estimates(summary: pd.DataFrame, metrics: pd.DataFrame, labels) -> pd.DataFrame:
    """summary.csv's columns for the label-based statistics (NaN without labels), from metrics.csv's rows."""
    row = summary.iloc[0].to_dict()
    ppi = pick(metrics, "judge", "ppi_accuracy", "human")
    row.update({"ppi_acc_judge": ppi.get("value", np.nan), "ppi_acc_judge_lo": ppi.get("lo", np.nan),
                "ppi_acc_judge_hi": ppi.get("hi", np.nan),
                "ppi_lambda_judge": pick(metrics, "judge", "ppi_lambda", "human").get("value", np.nan),
                "labels_needed_ppi_judge": pick(metrics, "judge", "labels_needed", "human").get("value", np.nan),
                "labels_needed_human": pick(metrics, "human", "labels_needed").get("value", np.nan),
                "halfwidth_ppi_judge_more": pick(metrics, "judge", f"halfwidth[labels+{MORE_LABELS}]",
                                                 "human").get("value", np.nan),
                "halfwidth_human_more": pick(metrics, "human", f"halfwidth[labels+{MORE_LABELS}]").get("value", np.nan),
                "suited_halfwidth": (suited := pick(metrics, "judge", "suited_halfwidth", "human").get("value",
                                                                                                      np.nan)),
                "labels_needed_ppi_judge_suited": np.nan if pd.isna(suited) else pick(
                    metrics, "judge", f"labels_needed[halfwidth={suited:g}]", "human").get("value", np.nan),
                "labels_needed_human_suited": np.nan if pd.isna(suited) else pick(
                    metrics, "human", f"labels_needed[halfwidth={suited:g}]").get("value", np.nan),
                "labels_uniform": bool(labels.drawn_uniformly) if labels.by_id else np.nan,
                "labels_source": labels.source if labels.by_id else "",
                "labels_warnings": " | ".join(labels.warnings),
                "labels_note": pick(metrics, "judge", "ppi_accuracy", "human").get("note", "")})
    for name in ("max_kappa", "equal_error"):
        row[f"threshold_{name}"] = pick(metrics, "judge_p_correct", f"threshold[{name}]", "human").get("value", np.nan)
        row[f"acc_judge_at_{name}"] = pick(metrics, "judge_p_correct", f"accuracy[{name}]").get("value", np.nan)
    row["ece_p_correct_human"] = pick(metrics, "judge_p_correct", "ece", "human").get("value", np.nan)
    return pd.DataFrame([row])


def label_lines(row: dict, target: float | None = None) -> list[str]:
    """What the digest says about the human labels: PPI beside the judge-only and human-only estimates."""
    if not row.get("n_human"):
        return []
    lines = []
    if note := text(row.get("labels_note")):
        lines.append(f"human labels: {note}. PPI++, labels needed, kappa with humans and the calibrated thresholds "
                     f"are left empty until there are enough; humans alone {row['acc_human']:.3f} "
                     f"[{row['acc_human_lo']:.3f}, {row['acc_human_hi']:.3f}] (Wilson interval)")
    elif not pd.isna(row.get("ppi_acc_judge")):
        lines.append(f"accuracy from judge + {int(row['n_human'])} human labels (PPI++, lambda "
                     f"{row['ppi_lambda_judge']:.2f}): {row['ppi_acc_judge']:.3f} [{row['ppi_acc_judge_lo']:.3f}, "
                     f"{row['ppi_acc_judge_hi']:.3f}]; judge alone {row['acc_judge']:.3f}, humans alone "
                     f"{row['acc_human']:.3f} [{row['acc_human_lo']:.3f}, {row['acc_human_hi']:.3f}]. This "
                     + PPI_ASSUMPTION + ".")
        lines.append(label_plan_line(row, target))
    if not pd.isna(row.get("threshold_max_kappa")):
        lines.append(f"calibrated P(correct) threshold: {row['threshold_max_kappa']:.3f} maximises kappa with humans "
                     f"(accuracy there {row['acc_judge_at_max_kappa']:.3f}), {row['threshold_equal_error']:.3f} "
                     f"equalises the error rates; calibration error (ECE) {row['ece_p_correct_human']:.3f}")
    warnings = row.get("labels_warnings")
    if isinstance(warnings, str) and warnings:
        lines += [f"warning: {w}" for w in warnings.split(" | ")]
    return lines


def digest(row: dict, target: float | None = None) -> str:
    """A few lines a person reads at the end of a run: accuracy by criterion with intervals, agreement."""
    def acc(c: str) -> str:
        if not row.get(f"n_{c}"):
            return ""
        return f"{c} {row[f'acc_{c}']:.3f} [{row[f'acc_{c}_lo']:.3f}, {row[f'acc_{c}_hi']:.3f}]"

    lines = [f"{row['run_id']} / {row['judge']}: n={row['n']}, verdicts {row['judge_correct']} correct, "
             f"{row['judge_incorrect']} incorrect, {row['judge_invalid']} invalid (left out, never counted as wrong)",
             cite_line(row),
             *([cut] if (cut := cut_line(row)) else []),
             "accuracy (95% Wilson interval): " + "; ".join(x for x in (acc(c) for c in CRITERIA) if x)]
    if warning := invalid_warning(row):
        lines.append(f"warning: {warning}")
    extra = [f"kappa judge vs exact match {row['kappa_exact_match_judge']:.2f}"]
    if row.get("n_judge_human"):
        extra.append(f"kappa judge vs human {row['kappa_judge_human']:.2f}" if not pd.isna(row["kappa_judge_human"])
                     else f"kappa judge vs human: too few labels ({int(row['n_judge_human'])})")
    if not pd.isna(row.get("auroc_sequence_nll_judge")):
        extra.append(f"AUROC of -NLL vs judge {row['auroc_sequence_nll_judge']:.2f}")
    lines.append("; ".join(extra))
    if cost := cost_line(row):
        lines.append(cost)
    return "\n".join(lines + label_lines(row, target))


# ---------------------------------------------------------------------------------------------- the stage

def write(run_dir: Path, judge: str, s: ReportConfig | None = None) -> tuple[Path, Path]:
    """(Re)write samples.csv, summary.csv and the figures for one finished judge of a run."""
    s = s or settings()
    gen = StageDir(run_dir / "generate", "generations.jsonl")
    stage = StageDir(run_dir / "judge" / judge, "verdicts.jsonl")
    if not stage.is_complete():
        raise PipelineError(f"run {run_dir.name}: judge {judge!r} has not finished ({stage.manifest_path} missing); "
                            f"run python -m pipeline stage=judge run_id={run_dir.name} judge={judge}.")

    with stage.lock():  # not while a judge of the same name is still writing
        answers = parse_rows(GenerationRow, gen.read_records(), gen.records_path)
        hashes = answer_hashes(answers)
        labels = load_labels(run_dir, answers)
        made = gen.manifest()
        samples = sample_rows(with_labels(answers, labels), read_verdicts(run_dir, judge, hashes), run_dir, judge,
                              (made.get("dataset", {}).get("name") or "", made.get("generator", {}).get("name") or ""))
        check_by(samples, run_dir.name, s)
        summary = summarize(samples, run_dir.name, judge, s)
        metrics = metrics_table(samples, criteria(samples, s), summary.iloc[0].to_dict(), s, labels.drawn_uniformly,
                                stage.manifest().get("panel"))
        others = pages.other_judges(run_dir, judge, lambda name: read_verdicts(run_dir, name, hashes))
        metrics = with_judges_compared(metrics, samples, others)
        summary = with_engine(with_estimates(summary, metrics, labels), stage.manifest())
        summary["max_new_tokens"] = made.get("fingerprint", {}).get("generator", {}).get("max_new_tokens")
        samples_path, summary_path = stage.path / "samples.csv", stage.path / "summary.csv"
        text = cells.to_csv(samples)  # (text that would run as a formula gets a ')
        same = samples_path.is_file() and samples_path.read_bytes() == text.encode("utf-8")
        write_atomic(samples_path, text)
        write_atomic(summary_path, cells.to_csv(summary, float_format="%.6g"))
        with results_lock(run_dir.parent):
            write_metrics(run_dir, judge, metrics, same)
        if s.plots:
            plot(samples, summary, stage.path, f"{run_dir.name} / {judge}",
                 threshold=(stage.manifest().get("judge") or {}).get("threshold"))
        write_atomic(stage.path / "report.html", pages.judge_page(
            run_id=run_dir.name, judge=judge, samples=samples, crit=criteria(samples, s),
            summary=summary.iloc[0].to_dict(), metrics=metrics, labels=labels, manifest=stage.manifest(),
            generation=gen.manifest(), others=others, folder=stage.path, s=s))
    return samples_path, summary_path


def with_judges_compared(metrics: pd.DataFrame, samples: pd.DataFrame,
                         others: dict[str, dict[str, float | None]]) -> pd.DataFrame:
    """metrics.csv plus this judge's paired comparison with every other judge of the run, on the same answers."""
    mine = samples["judge_verdict"].map({CORRECT: 1.0, INCORRECT: 0.0}).astype(float).to_numpy()
    table = Table.of(samples, samples["judge"].iloc[0] if len(samples) else "")
    for name, verdicts in sorted(others.items()):
        theirs = np.array([np.nan if verdicts.get(i) is None else float(verdicts[i]) for i in samples["id"]])
        paired_rows(table, "judge", f"judge:{name}", mine, theirs)
    return pd.concat([metrics, table.frame()], ignore_index=True) if table.rows else metrics


def write_metrics(run_dir: Path, judge: str, metrics: pd.DataFrame, same_samples: bool = False) -> None:
    """The judge's rows to its metrics.csv, the rows no judge enters (empty `judge`) to the run's: each judge of the
    run writes the same ones there, so a concatenation of the run's files holds every statistic once.

    The paired comparisons with other runs (against run:<id>, written by a report over several runs) stay while what
    they were computed from stands: in the judge's file while its samples.csv is unchanged (`same_samples`), in the
    run's file while it exists (generating the answers again moves it aside). Otherwise they go, and so do the other
    runs' rows against this one and comparisons.csv's rows of it: a report over both runs computes them again."""
    free = metrics["judge"].fillna("") == ""
    own, shared = run_dir / "judge" / judge / "metrics.csv", run_dir / "metrics.csv"
    kept_own = paired_with_runs(own) if same_samples else None
    kept_shared = paired_with_runs(shared)
    write_atomic(own, cells.to_csv(pd.concat([metrics[~free], kept_own]) if kept_own is not None and len(kept_own)
                                   else metrics[~free], float_format="%.6g"))
    text = cells.to_csv(pd.concat([metrics[free], kept_shared]) if kept_shared is not None and len(kept_shared)
                        else metrics[free], float_format="%.6g")
    if not shared.is_file() or shared.read_bytes() != text.encode("utf-8"):  # the same for every judge: left be
        write_atomic(shared, text)
    if not same_samples:
        forget_comparisons(run_dir, judge)
    if kept_shared is None:
        forget_comparisons(run_dir, "")


def paired_with_runs(path: Path) -> pd.DataFrame | None:
    """The rows of a metrics.csv against another run (run:<id>); None when there is no such file."""
    if not path.is_file():
        return None
    metrics = cells.read_csv(path)
    return metrics[metrics["against"].fillna("").astype(str).str.startswith("run:")]


def forget_comparisons(run_dir: Path, judge: str) -> None:
    """Drop every other run's rows against this one (for `judge`, or "" for the criteria no judge enters) and
    comparisons.csv's rows of this run: they were computed from results that have just changed."""
    runs_dir, me = run_dir.parent, run_dir.name
    files = [d / "judge" / judge / "metrics.csv" if judge else d / "metrics.csv"
             for d in runs_dir.iterdir() if d.is_dir() and not d.is_symlink() and d.name != me]
    for path in [f for f in files if f.is_file()] + [runs_dir / "comparisons.csv"] * (
            runs_dir / "comparisons.csv").is_file():
        metrics = cells.read_csv(path)
        stale = (metrics["judge"].fillna("").astype(str) == judge) & (
            (metrics["against"] == f"run:{me}") | ((metrics["run_id"].astype(str) == me)
                                                   & metrics["against"].fillna("").astype(str).str.startswith("run:")))
        if stale.any():
            write_atomic(path, cells.to_csv(metrics[~stale], float_format="%.6g"))
            log.info("%s: dropped %d paired comparison rows with run %s%s, whose results changed; a report over "
                     "both runs (report.runs=[...]) computes them again", path, int(stale.sum()), me,
                     f" (judge {judge})" if judge else "")


def write_and_print(run_dir: Path, judge: str, s: ReportConfig | None = None) -> tuple[Path, Path]:
    """`write`, then print the digest a person reads at the end of a stage (judge, import, jury)."""
    s = s or settings()
    samples, summary = write(run_dir, judge, s)
    log.info("run %s: results in %s and %s", run_dir.name, samples, summary)
    print("\n" + full_digest(run_dir, judge, summary, s), flush=True)
    return samples, summary


def full_digest(run_dir: Path, judge: str, summary_path: Path, s: ReportConfig) -> str:
    """The digest of a judge's summary.csv, then its breakdown by the report.by columns."""
    lines = [digest(read_summary(summary_path), s.target_halfwidth)]
    if s.by:
        lines += subset_lines(read_metrics(run_dir, judge), s)
    return "\n".join(lines)


def read_metrics(run_dir: Path, judge: str) -> pd.DataFrame:
    """Every statistic of a run's judge: the run's metrics.csv (what no judge enters) and the judge's."""
    files = [run_dir / "metrics.csv", run_dir / "judge" / judge / "metrics.csv"]
    return pd.concat([cells.read_csv(f) for f in files if f.is_file()], ignore_index=True)


SUBSETS_SHOWN = 12  # the digest names this many values of a report.by column; metrics.csv has them all


def subset_lines(metrics: pd.DataFrame, s: ReportConfig) -> list[str]:
    """The digest's lines for each report.by column: the judge's accuracy in each subset, and PPI++ stratified by it."""
    lines = []
    for t in pages.subset_tables(metrics, s):
        parts = [f"{r['value']} {r['judge']['value']:.3f} [{r['judge']['lo']:.3f}, {r['judge']['hi']:.3f}] "
                 f"(n={int(r['judge']['n'])})" for r in t["rows"] if r["judge"]]
        more = f"; and {len(parts) - SUBSETS_SHOWN} more in metrics.csv" if len(parts) > SUBSETS_SHOWN else ""
        lines.append(f"judge accuracy by {t['column']} (95% Wilson): " + "; ".join(parts[:SUBSETS_SHOWN]) + more)
        if (st := t["stratified"]) is not None:
            lines.append(f"PPI++ stratified by {t['column']}: " + (
                st["note"] if text(st.get("note")) else f"{st['value']:.3f} [{st['lo']:.3f}, {st['hi']:.3f}]"))
    return lines


RESULT_FILES = ("samples.csv", "summary.csv", "metrics.csv", "report.html")


def read_summary(path: Path) -> dict:
    """summary.csv's row as written, its text cells as they were before cells.to_csv escaped them."""
    return cells.read_csv(path).iloc[0].to_dict()


def read_verdicts(run_dir: Path, judge: str, hashes: dict[str, str]) -> list[VerdictRow]:
    """A finished judge's verdicts, verified against its manifest and refused if any was given to another answer than
    the run's now (`hashes`: binding.answer_hashes of the run's answers)."""
    stage = StageDir(run_dir / "judge" / judge, "verdicts.jsonl")
    verdicts = parse_rows(VerdictRow, stage.read_records(), stage.records_path)
    check_bound(hashes, verdicts, stage.records_path, judge, run_dir.name)
    return verdicts


def results_present(folder: Path) -> bool:
    """Whether the result CSVs of a finished judge are there and not older than its manifest (a stage killed, or
    out of disk, while reporting has them missing or stale: it writes them again when run again)."""
    made = (folder / "manifest.json").stat().st_mtime_ns
    return all((folder / f).is_file() and (folder / f).stat().st_mtime_ns >= made for f in RESULT_FILES)


def questions_key(run_dir: Path) -> str:
    """The leaderboard's data set fingerprint of a run: sha256 (first 12 hex digits) of its ids, questions and
    references, in id order, so that two runs over the same questions share it whatever order or file they came in
    (the manifest's content_sha256 follows the data set's order)."""
    gen = StageDir(run_dir / "generate", "generations.jsonl")
    answers = parse_rows(GenerationRow, gen.read_records(), gen.records_path)
    return content_hash(sorted((QAItem(a.id, a.question, tuple(a.references)) for a in answers),
                               key=lambda item: item.id))[:12]


def report_run(run_dir: Path, s: ReportConfig) -> list[dict]:
    """Merge the run's shards, rewrite every finished judge's results; one leaderboard row per judge."""
    from .merge import merge_run

    merge_run(run_dir)
    judges = finished_judges(run_dir)
    if not judges:
        raise PipelineError(f"run {run_dir.name} has no finished judge yet; run python -m pipeline stage=judge "
                            f"run_id={run_dir.name} first.")
    gen_manifest = read_json(run_dir / "generate/manifest.json")
    dataset = gen_manifest.get("dataset", {})
    rows, key = [], questions_key(run_dir)  # one read of the answers per run, not per judge
    for judge in judges:
        samples_path, summary_path = write(run_dir, judge, s)
        summary = read_summary(summary_path)
        print(f"{full_digest(run_dir, judge, summary_path, s)}\nresults: {samples_path.parent}/"
              f"{{samples,summary,metrics}}.csv, figures; to read: {samples_path.parent / 'report.html'}\n")
        judge_manifest = read_json(run_dir / "judge" / judge / "manifest.json")
        rows.append({"dataset": dataset.get("name"), "dataset_sha256": key,
                     "generator": gen_manifest.get("generator", {}).get("name"),
                     "judge_mode": judge_manifest.get("judge", {}).get("mode"), **summary})
    return rows


LEADERBOARD_COLUMNS = ["dataset", "dataset_sha256", "run_id", "generator", "judge", "judge_mode", "n",
                       "acc_judge", "acc_judge_lo", "acc_judge_hi", "ppi_acc_judge", "ppi_acc_judge_lo",
                       "ppi_acc_judge_hi", "n_human", "labels_note", "judge_invalid", "judge_invalid_share",
                       "judge_invalid_flagged", "acc_judge_invalid_as_wrong", "acc_judge_invalid_as_right",
                       "acc_exact_match",
                       "acc_token_f1", "acc_contains", "acc_rouge_l", "acc_human", "kappa_judge_human",
                       "kappa_exact_match_judge", "auroc_sequence_nll_judge", "auroc_sequence_nll_exact_match"]


def run(cfg) -> list[Path]:
    """stage=report: one run (run_id), or several (report.runs) with a leaderboard across them."""
    s = settings(cfg)
    runs_dir = Path(cfg.runs_dir)
    names = list(cfg.report.runs) if cfg.report.runs else None
    if names == ["all"]:
        names = list_runs(runs_dir)
    if not names:
        run_dir = find_run(runs_dir, cfg.run_id)
        report_run(run_dir, s)
        return [run_dir / "judge"]
    with results_lock(runs_dir):  # from the first samples read to the last file written: no run changes meanwhile
        return report_runs(runs_dir, names, cfg, s)


def report_runs(runs_dir: Path, names: list[str], cfg, s: ReportConfig) -> list[Path]:
    """stage=report over several runs: each run's reports, the leaderboard and the paired comparisons."""
    rows, skipped = [], []
    run_dirs = [find_run(runs_dir, n) for n in names]
    for run_dir in run_dirs:
        try:
            rows += report_run(run_dir, s)
        except PipelineError as e:  # one unfinished run does not hold up the others' results
            skipped.append(f"{run_dir.name}: {e}")
    for line in skipped:
        print(f"skipped {line}")
    if not rows:
        raise PipelineError(f"none of the runs has a finished judge to report ({len(skipped)} skipped, above).")
    # Grouped by the questions themselves (the data set's fingerprint: ids, questions, references), named by every
    # name its runs gave it; within a group by accuracy, a judge flagged for its invalid verdicts below the others,
    # whatever its accuracy over the few valid ones.
    board = pd.DataFrame(rows)[LEADERBOARD_COLUMNS]
    names = board.groupby("dataset_sha256")["dataset"].agg(lambda x: " = ".join(sorted({str(v) for v in x})))
    board["dataset"] = board["dataset_sha256"].map(names)
    board = board.sort_values(["dataset", "dataset_sha256", "judge_invalid_flagged", "acc_judge"],
                              ascending=[True, True, True, False])
    out = Path(cfg.report.leaderboard) if cfg.report.leaderboard else runs_dir / "leaderboard.csv"
    compared, disagree = compare_runs(board, {r.name: r for r in run_dirs}, s)
    write_atomic(out.with_name("comparisons.csv"), cells.to_csv(compared, float_format="%.6g"))
    write_atomic(out, cells.to_csv(board, float_format="%.4g"))
    write_atomic(out.with_suffix(".html"), pages.leaderboard_page(board, out, runs_dir, compared, disagree))
    groups = board.groupby(["dataset", "dataset_sha256"], dropna=False).size()
    print(f"leaderboard: {out} and {out.with_suffix('.html')} ({len(board)} rows)")
    for line in paired_lines(compared):
        print(line)
    if len(compared):
        print(f"paired comparisons: {out.with_name('comparisons.csv')} (and each run's metrics.csv, against run:<id>)")
    if len(groups) > 1:
        listing = "; ".join(f"{name} [{sha}]: {k} row(s)" for (name, sha), k in groups.items())
        print(f"note: these runs cover {len(groups)} different data sets ({listing}). The leaderboard keeps them in "
              "separate groups (by the data set's fingerprint, dataset_sha256); compare rows within a group only.")
    return [out]


LEXICAL = ("exact_match", "token_f1", "contains", "rouge_l")  # the criteria no judge enters


def compare_runs(board: pd.DataFrame, run_dirs: dict[str, Path], s: ReportConfig) -> tuple[pd.DataFrame, dict]:
    """Every two runs over the same questions (one dataset_sha256): the paired difference, McNemar p, wins and losses
    (tidy.paired_rows) of each lexical criterion once, and of the verdicts of each judge both have, from samples.csv.
    Added to both runs' metrics.csv files (against run:<the other>, replacing such rows of an earlier report: the
    lexical ones to the run's own file, the judge's to the judge's); returned once per pair for comparisons.csv, with
    the ids where the judge's verdicts part ({(run, other, judge): {"run": right only in run, "other": ...}})."""
    found: list[list] = []
    added: dict[Path, list[list]] = {}
    read: dict[Path, tuple[pd.DataFrame, pd.DataFrame]] = {}
    disagree: dict[tuple[str, str, str], dict[str, list[str]]] = {}

    def of(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:  # each samples.csv read once, however many pairs
        if folder not in read:
            samples = cells.read_csv(folder / "samples.csv")
            read[folder] = samples, criteria(samples, s).set_index(samples["id"].astype(str))
        return read[folder]

    def both_ways(a: str, b: str, folders: tuple[Path, Path], judge: str, compared: tuple[str, ...],
                  into: tuple[Path, Path]) -> None:
        """a against b and b against a under each of `compared`, from the samples in `folders`; the rows go to
        the metrics files `into`, a's to a's comparisons."""
        (sa, ca), (sb, cb) = of(folders[0]), of(folders[1])
        ta, tb = Table.of(sa, judge), Table.of(sb, judge)
        for c in compared:
            theirs = cb.reindex(ca.index)[c]
            found.extend(paired_rows(ta, c, f"run:{b}", ca[c].to_numpy(), theirs.to_numpy()))
            paired_rows(tb, c, f"run:{a}", cb[c].to_numpy(), ca.reindex(cb.index)[c].to_numpy())
            if c == "judge":  # the answers where the verdicts part, for the leaderboard's compare view
                disagree[(a, b, judge)] = {"run": list(ca.index[(ca[c] == 1) & (theirs == 0)]),
                                           "other": list(ca.index[(ca[c] == 0) & (theirs == 1)])}
        added.setdefault(into[0], []).extend(ta.rows)
        added.setdefault(into[1], []).extend(tb.rows)

    for _, group in board.groupby("dataset_sha256"):
        judged = {run: sorted(set(part["judge"])) for run, part in group.groupby("run_id")}
        for a, b in combinations(sorted(judged), 2):
            ra, rb = run_dirs[a], run_dirs[b]
            # the lexical criteria do not depend on the judge: once, from the first judge's samples of each run
            both_ways(a, b, (ra / "judge" / judged[a][0], rb / "judge" / judged[b][0]), "", LEXICAL,
                      (ra / "metrics.csv", rb / "metrics.csv"))
            for judge in sorted(set(judged[a]) & set(judged[b])):
                fa, fb = ra / "judge" / judge, rb / "judge" / judge
                both_ways(a, b, (fa, fb), judge, ("judge",), (fa / "metrics.csv", fb / "metrics.csv"))
    files = {run_dirs[r] / "judge" / j / "metrics.csv" for r, j in zip(board["run_id"], board["judge"])}
    for path in files | {run_dirs[r] / "metrics.csv" for r in board["run_id"]}:
        metrics = cells.read_csv(path) if path.is_file() else pd.DataFrame(columns=COLUMNS)
        metrics = metrics[~metrics["against"].fillna("").astype(str).str.startswith("run:")]
        if path in added:
            metrics = pd.concat([metrics, pd.DataFrame(added[path], columns=COLUMNS)], ignore_index=True)
        write_atomic(path, cells.to_csv(metrics, float_format="%.6g"))
    return pd.DataFrame(found, columns=COLUMNS), disagree


def paired_lines(compared: pd.DataFrame) -> list[str]:
    """The digest's lines: for each pair of runs and judge, the judge's accuracy difference, its interval, McNemar p
    and who wins where."""
    lines = []
    for g in paired_groups(compared):
        got = g["criteria"].get("judge")
        if not got or "difference" not in got:
            continue
        d, run, other = got["difference"], g["run"], g["other"]
        lines.append(f"paired ({g['judge']}, {d['n']} answers with a valid verdict in both): {run} - {other} = "
                     f"{d['value']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}], "
                     f"McNemar p = {got['mcnemar_p']['value']:.3g}; "
                     f"{run} right where {other} is wrong on {int(got['wins']['value'])}, the reverse on "
                     f"{int(got['losses']['value'])}")
    return lines
