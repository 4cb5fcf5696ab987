"""Results people read, diff and plot: per-sample CSV, summary CSV and figures per (run, judge), and a leaderboard.

    python -m pipeline stage=report run_id=<id>                 # rewrite one run's results from its records
    python -m pipeline stage=report report.runs=[a,b,c]         # ... for several runs, plus runs/leaderboard.csv
    python -m pipeline stage=report report.runs=[all]

runs/<run_id>/judge/<judge>/
    samples.csv      one row per question: the lexical criteria, the verdict and P(correct), NLL, human label
    summary.csv      one row: accuracy under every criterion with bootstrap 95% intervals; agreement and Cohen's
                     kappa between each pair of criteria; against human labels (agreement, kappa, false positives,
                     false negatives); AUROC of the generator's NLL against each criterion; invalid verdicts
    accuracy.png     accuracy per criterion with its interval
    nll.png          NLL of the answers the judge called correct vs incorrect (when the run has NLLs)
    reliability.png  P(correct) against the human labels (logprob mode with human labels)

Criteria (each a yes/no per answer): exact_match (SQuAD-normalised), token_f1 (F1 >= report.f1_threshold),
contains (a reference inside the answer), rouge_l (ROUGE-L > report.rouge_threshold), judge (the verdict, where
valid: an invalid verdict is left out, never counted as wrong), human (the human label, where there is one).
"""

from __future__ import annotations

import json
import logging
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import PipelineError
from .files import read_json, write_atomic
from .metrics import contains_reference, exact_match, rouge_l, token_f1
from .runs import StageDir, list_runs, resolve_run
from .stats import agreement, auroc, bootstrap_ci, cohen_kappa
from .verdict import CORRECT, INCORRECT, INVALID

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = ["id", "question", "references", "prediction", "finish_reason", "num_generated_tokens",
                  "sequence_nll", "mean_nll", "exact_match", "token_f1", "contains_reference", "rouge_l",
                  "human_label", "judge", "judge_verdict", "judge_p_correct", "judge_invalid_reason", "judge_reply"]
CRITERIA = ("exact_match", "token_f1", "contains", "rouge_l", "judge", "human")


class Settings:
    """The report.* settings (defaults when called without a config)."""

    def __init__(self, cfg=None):
        r = getattr(cfg, "report", None)
        self.bootstrap = r.bootstrap if r else 1000
        self.seed = r.seed if r else 0
        self.f1_threshold = r.f1_threshold if r else 0.5
        self.rouge_threshold = r.rouge_threshold if r else 0.5
        self.plots = r.plots if r else True


# ------------------------------------------------------------------------------------------- per sample

def sample_rows(generations: list[dict], verdicts: list[dict], run_dir: Path, judge: str) -> pd.DataFrame:
    by_id = {v["id"]: v for v in verdicts}
    missing = [g["id"] for g in generations if g["id"] not in by_id]
    if missing:
        raise PipelineError(f"run {run_dir.name}: judge {judge} has no verdict for {len(missing)} answers "
                            f"(first: {missing[:5]}); re-run stage=judge to finish it.")
    rows = []
    # data set order, whatever order they were made in (file order for records without an index)
    for g in sorted(generations, key=lambda g: g.get("index", 0)):
        v = by_id[g["id"]]
        pred, refs = g["prediction"], g["references"]
        label = g.get("human_label")
        rows.append({
            "id": g["id"],
            "question": g["question"],
            "references": json.dumps(refs, ensure_ascii=False),
            "prediction": pred,
            "finish_reason": g["finish_reason"],
            "num_generated_tokens": g["num_generated_tokens"],
            "sequence_nll": g["sequence_nll"],
            "mean_nll": g["mean_nll"],
            "exact_match": int(exact_match(pred, refs)),
            "token_f1": round(token_f1(pred, refs), 6),
            "contains_reference": int(contains_reference(pred, refs)),
            "rouge_l": round(rouge_l(pred, refs), 6),
            "human_label": None if label is None else int(label),
            "judge": v["judge"],
            "judge_verdict": v["verdict"],
            "judge_p_correct": v.get("p_correct"),
            "judge_invalid_reason": v.get("invalid_reason"),
            "judge_reply": v["reply"],
        })
    return pd.DataFrame(rows, columns=SAMPLE_COLUMNS)


def criteria(samples: pd.DataFrame, s: Settings) -> pd.DataFrame:
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

def summarize(samples: pd.DataFrame, run_id: str, judge: str, s: Settings | None = None) -> pd.DataFrame:
    s = s or Settings()
    n = len(samples)
    counts = samples["judge_verdict"].value_counts()
    correct, incorrect, invalid = (int(counts.get(k, 0)) for k in (CORRECT, INCORRECT, INVALID))
    crit = criteria(samples, s)
    row: dict = {
        "run_id": run_id, "judge": judge, "n": n,
        "judge_correct": correct, "judge_incorrect": incorrect, "judge_invalid": invalid,
        "judge_accuracy": correct / (correct + incorrect) if correct + incorrect else np.nan,
        "judge_accuracy_all": correct / n if n else np.nan,
        "exact_match": samples["exact_match"].mean() if n else np.nan,
        "token_f1": samples["token_f1"].mean() if n else np.nan,
    }
    valid = crit["judge"].notna()
    row["judge_em_agreement"] = agreement(crit.loc[valid, "judge"], crit.loc[valid, "exact_match"]) \
        if valid.any() else np.nan
    row["judge_em_agreement_n"] = int(valid.sum())

    for c in CRITERIA:  # accuracy under every criterion, with a bootstrap interval
        values = crit[c].dropna().to_numpy()
        row[f"acc_{c}"] = values.mean() if len(values) else np.nan
        row[f"acc_{c}_lo"], row[f"acc_{c}_hi"] = bootstrap_ci(values, resamples=s.bootstrap, seed=s.seed)
        row[f"n_{c}"] = len(values)
    for a, b in combinations(CRITERIA, 2):  # agreement between each pair, where both are defined
        both = crit[[a, b]].dropna()
        row[f"agree_{a}_{b}"] = agreement(both[a], both[b]) if len(both) else np.nan
        row[f"kappa_{a}_{b}"] = cohen_kappa(both[a], both[b]) if len(both) else np.nan
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
    row["auroc_p_correct_human"] = auroc(p.iloc[:, 0], p["human"] == 1) if len(p) else np.nan
    row["brier_p_correct_human"] = float(((p.iloc[:, 0] - p["human"]) ** 2).mean()) if len(p) else np.nan
    return pd.DataFrame([row])


def digest(row: dict) -> str:
    """A few lines a person reads at the end of a run: accuracy by criterion with intervals, agreement."""
    def acc(c: str) -> str:
        if not row.get(f"n_{c}"):
            return ""
        return f"{c} {row[f'acc_{c}']:.3f} [{row[f'acc_{c}_lo']:.3f}, {row[f'acc_{c}_hi']:.3f}]"

    lines = [f"{row['run_id']} / {row['judge']}: n={row['n']}, verdicts {row['judge_correct']} correct, "
             f"{row['judge_incorrect']} incorrect, {row['judge_invalid']} invalid (left out, never counted as wrong)",
             "accuracy (95% CI): " + "; ".join(x for x in (acc(c) for c in CRITERIA) if x)]
    extra = [f"kappa judge vs exact match {row['kappa_exact_match_judge']:.2f}"]
    if row.get("n_human"):
        extra.append(f"kappa judge vs human {row['kappa_judge_human']:.2f}")
    if not pd.isna(row.get("auroc_sequence_nll_judge")):
        extra.append(f"AUROC of -NLL vs judge {row['auroc_sequence_nll_judge']:.2f}")
    lines.append("; ".join(extra))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ figures

def plot(samples: pd.DataFrame, summary: pd.DataFrame, folder: Path, title: str, s: Settings) -> list[Path]:
    """accuracy.png, and nll.png / reliability.png when the data allow; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    row = summary.iloc[0]
    shown = [c for c in CRITERIA if row[f"n_{c}"] > 0]
    acc = np.array([row[f"acc_{c}"] for c in shown])
    lo, hi = np.array([row[f"acc_{c}_lo"] for c in shown]), np.array([row[f"acc_{c}_hi"] for c in shown])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(shown, acc, color="#4c72b0", yerr=[np.nan_to_num(acc - lo), np.nan_to_num(hi - acc)], capsize=4)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("accuracy (95% bootstrap CI)")
    ax.set_title(f"{title}: accuracy by criterion (n={len(samples)})", fontsize=10)
    for x, (a, top, c) in enumerate(zip(acc, hi, shown)):
        y = (top if not np.isnan(top) else a) + 0.02
        ax.text(x, y, f"{a:.2f} (n={row[f'n_{c}']})", ha="center", va="bottom", fontsize=8)
    written.append(save(fig, folder / "accuracy.png"))

    nll = samples["sequence_nll"].astype(float)
    verdict = samples["judge_verdict"]
    if nll.notna().any() and verdict.isin([CORRECT, INCORRECT]).any():
        fig, ax = plt.subplots(figsize=(7, 4))
        bins = np.histogram_bin_edges(nll.dropna(), bins=20)
        for label, color in ((CORRECT, "#55a868"), (INCORRECT, "#c44e52")):
            part = nll[(verdict == label) & nll.notna()]
            if len(part):
                ax.hist(part, bins=bins, alpha=0.6, color=color, label=f"judged {label} (n={len(part)})")
        ax.set_xlabel("sequence NLL of the generated answer")
        ax.set_ylabel("answers")
        ax.set_title(f"{title}: NLL by verdict (AUROC of -NLL for the judge's verdict: "
                     f"{row['auroc_sequence_nll_judge']:.2f})", fontsize=10)
        ax.legend()
        written.append(save(fig, folder / "nll.png"))

    p = pd.concat([pd.to_numeric(samples["judge_p_correct"], errors="coerce"),
                   pd.to_numeric(samples["human_label"], errors="coerce")], axis=1).dropna()
    if len(p):
        p.columns = ["p", "human"]
        edges = np.linspace(0, 1, 11)
        which = np.clip(np.digitize(p["p"], edges) - 1, 0, 9)
        mids, rates, sizes = [], [], []
        for b in range(10):
            part = p[which == b]
            if len(part):
                mids.append(part["p"].mean())
                rates.append(part["human"].mean())
                sizes.append(len(part))
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
        ax.plot(mids, rates, "o-", color="#4c72b0", label="judge")
        for x, y, k in zip(mids, rates, sizes):
            ax.annotate(str(k), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("judge P(correct), binned")
        ax.set_ylabel("fraction correct by human label")
        ax.set_title(f"{title}: reliability (Brier {row['brier_p_correct_human']:.3f})", fontsize=10)
        ax.legend(loc="upper left")
        written.append(save(fig, folder / "reliability.png"))
    return written


def save(fig, path: Path) -> Path:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, buffer.getvalue())
    return path


# ---------------------------------------------------------------------------------------------- the stage

def write(run_dir: Path, judge: str, s: Settings | None = None) -> tuple[Path, Path]:
    """(Re)write samples.csv, summary.csv and the figures for one finished judge of a run."""
    s = s or Settings()
    gen = StageDir(run_dir / "generate", "generations.jsonl")
    stage = StageDir(run_dir / "judge" / judge, "verdicts.jsonl")
    if not stage.is_complete():
        raise PipelineError(f"run {run_dir.name}: judge {judge!r} has not finished ({stage.manifest_path} missing); "
                            f"run python -m pipeline stage=judge run_id={run_dir.name} judge={judge}.")
    with stage.lock():  # not while a judge of the same name is still writing
        samples = sample_rows(gen.read_records(), stage.read_records(), run_dir, judge)
        summary = summarize(samples, run_dir.name, judge, s)
        samples_path, summary_path = stage.path / "samples.csv", stage.path / "summary.csv"
        write_atomic(samples_path, samples.to_csv(index=False))
        write_atomic(summary_path, summary.to_csv(index=False, float_format="%.6g"))
        if s.plots:
            plot(samples, summary, stage.path, f"{run_dir.name} / {judge}", s)
    return samples_path, summary_path


def finished_judges(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "judge").glob("*") if StageDir(p, "verdicts.jsonl").is_complete())


def report_run(run_dir: Path, s: Settings) -> list[dict]:
    """Merge the run's shards, rewrite every finished judge's results; one leaderboard row per judge."""
    from .merge import merge_run

    merge_run(run_dir)
    judges = finished_judges(run_dir)
    if not judges:
        raise PipelineError(f"run {run_dir.name} has no finished judge yet; run python -m pipeline stage=judge "
                            f"run_id={run_dir.name} first.")
    gen_manifest = read_json(run_dir / "generate/manifest.json")
    dataset = gen_manifest.get("dataset", {})
    rows = []
    for judge in judges:
        samples_path, summary_path = write(run_dir, judge, s)
        summary = pd.read_csv(summary_path).iloc[0].to_dict()
        print(f"{digest(summary)}\nresults: {samples_path.parent}/{{samples,summary}}.csv and figures\n")
        judge_manifest = read_json(run_dir / "judge" / judge / "manifest.json")
        rows.append({"dataset": dataset.get("name"), "dataset_sha256": (dataset.get("content_sha256") or "")[:12],
                     "generator": gen_manifest.get("generator", {}).get("name"),
                     "judge_mode": judge_manifest.get("judge", {}).get("mode"), **summary})
    return rows


LEADERBOARD_COLUMNS = ["dataset", "dataset_sha256", "run_id", "generator", "judge", "judge_mode", "n",
                       "acc_judge", "acc_judge_lo", "acc_judge_hi", "judge_invalid", "acc_exact_match",
                       "acc_token_f1", "acc_contains", "acc_rouge_l", "acc_human", "kappa_judge_human",
                       "kappa_exact_match_judge", "auroc_sequence_nll_judge", "auroc_sequence_nll_exact_match"]


def run(cfg) -> list[Path]:
    """stage=report: one run (run_id), or several (report.runs) with a leaderboard across them."""
    s = Settings(cfg)
    runs_dir = Path(cfg.runs_dir)
    names = list(cfg.report.runs) if cfg.report.runs else None
    if names == ["all"]:
        names = list_runs(runs_dir)
    if not names:
        run_dir = resolve_run(runs_dir, cfg.run_id)
        report_run(run_dir, s)
        return [run_dir / "judge"]
    rows, skipped = [], []
    for run_dir in [resolve_run(runs_dir, n) for n in names]:
        try:
            rows += report_run(run_dir, s)
        except PipelineError as e:  # one unfinished run does not hold up the others' results
            skipped.append(f"{run_dir.name}: {e}")
    for line in skipped:
        print(f"skipped {line}")
    if not rows:
        raise PipelineError(f"none of the runs has a finished judge to report ({len(skipped)} skipped, above).")
    board = pd.DataFrame(rows)[LEADERBOARD_COLUMNS].sort_values(["dataset", "dataset_sha256", "acc_judge"],
                                                               ascending=[True, True, False])
    out = Path(cfg.report.leaderboard) if cfg.report.leaderboard else runs_dir / "leaderboard.csv"
    write_atomic(out, board.to_csv(index=False, float_format="%.4g"))
    groups = board.groupby(["dataset", "dataset_sha256"], dropna=False).size()
    print(f"leaderboard: {out} ({len(board)} rows)")
    if len(groups) > 1:
        listing = "; ".join(f"{name} [{sha}]: {k} row(s)" for (name, sha), k in groups.items())
        print(f"note: these runs cover {len(groups)} different data sets ({listing}). The leaderboard keeps them in "
              "separate groups (dataset, dataset_sha256); compare rows within a group only.")
    return [out]
