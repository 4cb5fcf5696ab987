"""Result CSVs of a judged run: one row per sample, and a one-row summary.

    runs/<run_id>/judge/<judge>/samples.csv   id, question, references, prediction, exact_match, token_f1,
                                             judge_verdict, judge_reply, sequence_nll, ... (README: "Result columns")
    runs/<run_id>/judge/<judge>/summary.csv   n, judge accuracy with the invalid count, exact match, F1, agreement

`stage=report` rewrites them for every finished judge of a run from the stored records alone.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from .errors import PipelineError
from .files import write_atomic
from .metrics import exact_match, token_f1
from .runs import StageDir, resolve_run
from .verdict import CORRECT, INCORRECT, INVALID

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = ["id", "question", "references", "prediction", "finish_reason", "num_generated_tokens",
                  "sequence_nll", "mean_nll", "exact_match", "token_f1", "judge", "judge_verdict",
                  "judge_invalid_reason", "judge_reply"]


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
        rows.append({
            "id": g["id"],
            "question": g["question"],
            "references": json.dumps(g["references"], ensure_ascii=False),
            "prediction": g["prediction"],
            "finish_reason": g["finish_reason"],
            "num_generated_tokens": g["num_generated_tokens"],
            "sequence_nll": g["sequence_nll"],
            "mean_nll": g["mean_nll"],
            "exact_match": int(exact_match(g["prediction"], g["references"])),
            "token_f1": round(token_f1(g["prediction"], g["references"]), 6),
            "judge": v["judge"],
            "judge_verdict": v["verdict"],
            "judge_invalid_reason": v.get("invalid_reason"),
            "judge_reply": v["reply"],
        })
    return pd.DataFrame(rows, columns=SAMPLE_COLUMNS)


def summarize(samples: pd.DataFrame, run_id: str, judge: str) -> pd.DataFrame:
    n = len(samples)
    counts = samples["judge_verdict"].value_counts()
    correct, incorrect, invalid = (int(counts.get(k, 0)) for k in (CORRECT, INCORRECT, INVALID))
    valid = samples[samples["judge_verdict"] != INVALID]
    judged_correct = valid["judge_verdict"] == CORRECT
    agree = (judged_correct.astype(int) == valid["exact_match"]).mean() if len(valid) else float("nan")
    return pd.DataFrame([{
        "run_id": run_id,
        "judge": judge,
        "n": n,
        "judge_correct": correct,
        "judge_incorrect": incorrect,
        "judge_invalid": invalid,
        "judge_accuracy": correct / (correct + incorrect) if correct + incorrect else float("nan"),
        "judge_accuracy_all": correct / n if n else float("nan"),
        "exact_match": samples["exact_match"].mean(),
        "token_f1": samples["token_f1"].mean(),
        "judge_em_agreement": agree,
        "judge_em_agreement_n": len(valid),
    }])


def write(run_dir: Path, judge: str) -> tuple[Path, Path]:
    """(Re)write samples.csv and summary.csv for one finished judge of a run."""
    gen = StageDir(run_dir / "generate", "generations.jsonl")
    stage = StageDir(run_dir / "judge" / judge, "verdicts.jsonl")
    if not stage.is_complete():
        raise PipelineError(f"run {run_dir.name}: judge {judge!r} has not finished ({stage.manifest_path} missing); "
                            f"run python -m pipeline stage=judge run_id={run_dir.name} judge={judge}.")
    samples = sample_rows(gen.read_records(), stage.read_records(), run_dir, judge)
    summary = summarize(samples, run_dir.name, judge)
    samples_path, summary_path = stage.path / "samples.csv", stage.path / "summary.csv"
    write_atomic(samples_path, samples.to_csv(index=False))
    write_atomic(summary_path, summary.to_csv(index=False, float_format="%.6g"))
    return samples_path, summary_path


def run(cfg) -> list[Path]:
    """stage=report: merge the run's sharded stages, then (re)write the CSVs of every finished judge."""
    from .merge import merge_run

    run_dir = resolve_run(Path(cfg.runs_dir), cfg.run_id)
    merge_run(run_dir)
    judges = sorted(p.name for p in (run_dir / "judge").glob("*") if StageDir(p, "verdicts.jsonl").is_complete())
    if not judges:
        raise PipelineError(f"run {run_dir.name} has no finished judge yet; run python -m pipeline stage=judge "
                            f"run_id={run_dir.name} first.")
    written = []
    for judge in judges:
        samples, summary = write(run_dir, judge)
        print(f"{judge}: {samples}\n{judge}: {summary}")
        written += [samples, summary]
    return written
