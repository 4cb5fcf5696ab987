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
from .stats import agreement, auroc, cohen_kappa, proportion_interval
from .tidy import metrics_table, paired_rows, pick
from .wording import PPI_ASSUMPTION, cite_line, invalid_warning, text  # noqa: F401 (also report.<name>)
from .verdict import CORRECT, INCORRECT, INVALID

log = logging.getLogger(__name__)

def settings(cfg=None) -> ReportConfig:
    """The report.* settings of a config; the schema's defaults without one."""
    return cfg.report if cfg is not None else ReportConfig()


# ------------------------------------------------------------------------------------------- per sample

def sample_rows(answers: list[GenerationRow], verdicts: list[VerdictRow], run_dir: Path, judge: str) -> pd.DataFrame:
    """samples.csv: one rows.SampleRow per answer, in data set order (file order for answers without an index)."""
    by_id = {v.id: v for v in verdicts}
    missing = [a.id for a in answers if a.id not in by_id]
    if missing:
        raise PipelineError(f"run {run_dir.name}: judge {judge} has no verdict for {len(missing)} answers "
                            f"(first: {missing[:5]}); re-run stage=judge to finish it.")
    rows = []
    for a in sorted(answers, key=lambda a: a.index):
        scores = {"exact_match": exact_match(a.prediction, a.references),
                  "token_f1": token_f1(a.prediction, a.references),
                  "contains_reference": contains_reference(a.prediction, a.references),
                  "rouge_l": rouge_l(a.prediction, a.references)}
        rows.append(asdict(SampleRow.of(a, by_id[a.id], scores)))
    frame = pd.DataFrame(rows, columns=SAMPLE_COLUMNS)
    for column in ("human_label", "num_generated_tokens"):  # whole numbers with gaps: 1, 0 or empty, never "1.0"
        frame[column] = frame[column].astype("Int64")
    return frame


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
        need = f"labels for a +-{target:g} interval: " if target else "labels needed: "
        lines.append(need + f"{fmt_count(row.get('labels_needed_ppi_judge'), row['n'])} with the judge (PPI++), "
                     f"{fmt_count(row.get('labels_needed_human'), row['n'])} without")
    if not pd.isna(row.get("threshold_max_kappa")):
        lines.append(f"calibrated P(correct) threshold: {row['threshold_max_kappa']:.3f} maximises kappa with humans "
                     f"(accuracy there {row['acc_judge_at_max_kappa']:.3f}), {row['threshold_equal_error']:.3f} "
                     f"equalises the error rates; calibration error (ECE) {row['ece_p_correct_human']:.3f}")
    warnings = row.get("labels_warnings")
    if isinstance(warnings, str) and warnings:
        lines += [f"warning: {w}" for w in warnings.split(" | ")]
    return lines


def fmt_count(value, answers: int) -> str:
    return f"more than the run's {answers} answers" if value is None or pd.isna(value) else str(int(value))


def digest(row: dict, target: float | None = None) -> str:
    """A few lines a person reads at the end of a run: accuracy by criterion with intervals, agreement."""
    def acc(c: str) -> str:
        if not row.get(f"n_{c}"):
            return ""
        return f"{c} {row[f'acc_{c}']:.3f} [{row[f'acc_{c}_lo']:.3f}, {row[f'acc_{c}_hi']:.3f}]"

    lines = [f"{row['run_id']} / {row['judge']}: n={row['n']}, verdicts {row['judge_correct']} correct, "
             f"{row['judge_incorrect']} incorrect, {row['judge_invalid']} invalid (left out, never counted as wrong)",
             cite_line(row),
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
        samples = sample_rows(with_labels(answers, labels), read_verdicts(run_dir, judge, hashes), run_dir, judge)
        summary = summarize(samples, run_dir.name, judge, s)
        metrics = metrics_table(samples, criteria(samples, s), summary.iloc[0].to_dict(), s, labels.drawn_uniformly,
                                stage.manifest().get("panel"))
        others = pages.other_judges(run_dir, judge, lambda name: read_verdicts(run_dir, name, hashes))
        metrics = with_judges_compared(metrics, samples, summary.iloc[0].to_dict(), others)
        summary = with_engine(with_estimates(summary, metrics, labels), stage.manifest())
        samples_path, summary_path = stage.path / "samples.csv", stage.path / "summary.csv"
        write_atomic(samples_path, cells.to_csv(samples))  # (text that would run as a formula gets a ')
        write_atomic(summary_path, cells.to_csv(summary, float_format="%.6g"))
        write_atomic(stage.path / "metrics.csv", cells.to_csv(metrics, float_format="%.6g"))
        if s.plots:
            plot(samples, summary, stage.path, f"{run_dir.name} / {judge}")
        write_atomic(stage.path / "report.html", pages.judge_page(
            run_id=run_dir.name, judge=judge, samples=samples, crit=criteria(samples, s),
            summary=summary.iloc[0].to_dict(), metrics=metrics, labels=labels, manifest=stage.manifest(),
            generation=gen.manifest(), others=others, folder=stage.path, s=s))
    return samples_path, summary_path


def with_judges_compared(metrics: pd.DataFrame, samples: pd.DataFrame, summary: dict,
                         others: dict[str, dict[str, float | None]]) -> pd.DataFrame:
    """metrics.csv plus this judge's paired comparison with every other judge of the run, on the same answers."""
    mine = samples["judge_verdict"].map({CORRECT: 1.0, INCORRECT: 0.0}).astype(float).to_numpy()
    rows = []
    for name, verdicts in sorted(others.items()):
        theirs = np.array([np.nan if verdicts.get(i) is None else float(verdicts[i]) for i in samples["id"]])
        rows += paired_rows(summary["run_id"], summary["judge"], "judge", f"judge:{name}", mine, theirs)
    return pd.concat([metrics, pd.DataFrame(rows, columns=metrics.columns)], ignore_index=True) if rows else metrics


def write_and_print(run_dir: Path, judge: str, s: ReportConfig | None = None) -> tuple[Path, Path]:
    """`write`, then print the digest a person reads at the end of a stage (judge, import, jury)."""
    s = s or settings()
    samples, summary = write(run_dir, judge, s)
    log.info("run %s: results in %s and %s", run_dir.name, samples, summary)
    print("\n" + digest(read_summary(summary), s.target_halfwidth), flush=True)
    return samples, summary


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
        print(f"{digest(summary, s.target_halfwidth)}\nresults: {samples_path.parent}/{{samples,summary,metrics}}.csv, "
              f"figures; to read: {samples_path.parent / 'report.html'}\n")
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
    compared = compare_runs(board, {r.name: r for r in run_dirs}, s)
    write_atomic(out.with_name("comparisons.csv"), cells.to_csv(compared, float_format="%.6g"))
    write_atomic(out, cells.to_csv(board, float_format="%.4g"))
    write_atomic(out.with_suffix(".html"), pages.leaderboard_page(board, out, runs_dir, compared))
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


PAIRED_CRITERIA = ("judge", "exact_match", "token_f1", "contains", "rouge_l")


def compare_runs(board: pd.DataFrame, run_dirs: dict[str, Path], s: ReportConfig) -> pd.DataFrame:
    """Every two runs over the same questions (one dataset_sha256), for each judge both have: each criterion's paired
    difference, McNemar p, wins and losses (tidy.paired_rows), from samples.csv. Added to both runs' metrics.csv
    (against run:<the other>, replacing such rows of an earlier report); returned once per pair for comparisons.csv."""
    from .tidy import COLUMNS

    found: list[list] = []
    added: dict[Path, list[list]] = {}
    read: dict[Path, pd.DataFrame] = {}

    def crit_of(folder: Path) -> pd.DataFrame:  # each samples.csv read once, however many pairs it is in
        if folder not in read:
            samples = cells.read_csv(folder / "samples.csv")
            read[folder] = criteria(samples, s).set_index(samples["id"].astype(str))
        return read[folder]

    for _, group in board.groupby("dataset_sha256"):
        judged = {run: set(part["judge"]) for run, part in group.groupby("run_id")}
        for a, b in combinations(sorted(judged), 2):
            for judge in sorted(judged[a] & judged[b]):
                fa, fb = run_dirs[a] / "judge" / judge, run_dirs[b] / "judge" / judge
                ca = crit_of(fa)
                cb = crit_of(fb).reindex(ca.index)
                for c in PAIRED_CRITERIA:
                    forward = paired_rows(a, judge, c, f"run:{b}", ca[c].to_numpy(), cb[c].to_numpy())
                    found += forward
                    added.setdefault(fa, []).extend(forward)
                    added.setdefault(fb, []).extend(paired_rows(b, judge, c, f"run:{a}", cb[c].to_numpy(),
                                                                ca[c].to_numpy()))
    for folder in {run_dirs[r] / "judge" / j for r, j in zip(board["run_id"], board["judge"])}:
        metrics = cells.read_csv(folder / "metrics.csv")
        metrics = metrics[~metrics["against"].fillna("").astype(str).str.startswith("run:")]
        if folder in added:
            metrics = pd.concat([metrics, pd.DataFrame(added[folder], columns=COLUMNS)], ignore_index=True)
        write_atomic(folder / "metrics.csv", cells.to_csv(metrics, float_format="%.6g"))
    return pd.DataFrame(found, columns=COLUMNS)


def paired_lines(compared: pd.DataFrame) -> list[str]:
    """The digest's lines: for each pair of runs and judge, the judge's accuracy difference, its interval, McNemar p
    and who wins where."""
    lines = []
    rows = compared[compared["criterion"] == "judge"]
    for (run, judge, against), part in rows.groupby(["run_id", "judge", "against"], sort=False):
        got = {r["statistic"]: r for r in part.to_dict("records")}
        d, other = got["difference"], against.removeprefix("run:")
        lines.append(f"paired ({judge}, {d['n']} answers with a valid verdict in both): {run} - {other} = {d['value']:+.3f} "
                     f"[{d['lo']:+.3f}, {d['hi']:+.3f}], McNemar p = {got['mcnemar_p']['value']:.3g}; {run} right "
                     f"where {other} is wrong on {int(got['wins']['value'])}, the reverse on "
                     f"{int(got['losses']['value'])}")
    return lines
