"""The Python API (pipeline/api.py): a stage run from Python as from the command line, and the results as frames."""

from __future__ import annotations

import pandas as pd
import pytest

import pipeline
from pipeline.errors import PipelineError

from conftest import copy_run


def test_results_load_as_frames_and_a_stage_runs_from_python(judged_run, tmp_path):
    runs = copy_run(judged_run, tmp_path, "nb").parent
    with pytest.raises(PipelineError, match="comparisons.csv is not there yet"):
        pipeline.load_comparisons(runs)
    out = pipeline.run("report", "run_id=nb", "report.plots=false", runs_dir=runs)
    assert out == [runs / "nb" / "judge"]
    samples = pipeline.load_samples("nb", runs_dir=runs)
    assert len(samples) == 16 and set(samples["run_id"]) == {"nb"} and set(samples["judge"]) == {"smollm2-135m"}
    assert samples.equals(pipeline.load_samples("nb", judge="smollm2-135m", runs_dir=runs))
    metrics = pipeline.load_metrics(runs_dir=runs)  # no run_id: the latest run, as on the command line
    acc = metrics[(metrics.criterion == "judge") & (metrics.statistic == "accuracy")]["value"].iloc[0]
    assert acc == pytest.approx((samples["judge_verdict"] == "correct").sum() / (samples["judge_verdict"] != "invalid").sum())

    pipeline.run("report", "report.runs=[all]", "report.plots=false", runs_dir=runs)
    board = pipeline.load_leaderboard(runs)
    assert list(board["run_id"]) == ["nb"] and isinstance(pipeline.load_comparisons(runs), pd.DataFrame)
    assert pipeline.settings("judge=llama8b").judge.name == "llama8b"
    with pytest.raises(PipelineError, match="judge.batch_size=0 must be at least 1"):
        pipeline.run("judge", "judge.batch_size=0", runs_dir=runs)
    with pytest.raises(PipelineError, match="no results for nope"):
        pipeline.load_samples("nb", judge="nope", runs_dir=runs)
