"""The pipeline from Python (a notebook, a script), without the command line: results as pandas DataFrames, and any
stage run from the same settings the command line takes.

    import pipeline

    pipeline.run("generate", "run_id=nq-8b", "dataset.limit=100")     # as `python -m pipeline stage=generate ...`
    pipeline.run("judge", "run_id=nq-8b", "judge=llama8b")
    samples = pipeline.load_samples("nq-8b")           # every finished judge's samples.csv, one frame
    metrics = pipeline.load_metrics("nq-8b", judge="llama8b")
    pipeline.run("report", "report.runs=[nq-8b,nq-1b]")
    board, pairs = pipeline.load_leaderboard(), pipeline.load_comparisons()

    cfg = pipeline.settings("judge=llama8b")           # the composed config, as `python -m pipeline --cfg job`

`runs_dir` is "runs" (relative to the working directory) unless given, as on the command line. A value out of range
or bad input raises pipeline.errors.PipelineError with the one line the command line prints; a misspelt key, Hydra's
own error.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .errors import PipelineError


def settings(*overrides: str):
    """The composed config of `python -m pipeline <overrides>` (checked as the command line checks it)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from .checks import check
    from .config import conf_dir, register

    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    check(cfg)
    return cfg


def run(stage: str, *overrides: str, runs_dir: str | Path | None = None):
    """Run one stage as `python -m pipeline stage=<stage> <overrides>` would, in this process; returns what the
    stage returns (its folder, or the files it wrote)."""
    from .__main__ import run_stage

    extra = [f"runs_dir={runs_dir}"] if runs_dir is not None else []
    return run_stage(settings(f"stage={stage}", *overrides, *extra))


def _judges(runs_dir: str | Path, run_id: str, judge: str | None) -> list[Path]:
    from .report import finished_judges
    from .runs import find_run

    run_dir = find_run(Path(runs_dir), run_id)
    names = [judge] if judge else finished_judges(run_dir)
    folders = [run_dir / "judge" / name for name in names]
    missing = [f for f in folders if not (f / "samples.csv").is_file()]
    if missing or not folders:
        raise PipelineError(f"run {run_dir.name}: no results for {', '.join(f.name for f in missing) or 'any judge'} "
                            f"yet; run python -m pipeline stage=report run_id={run_dir.name} (after stage=judge).")
    return folders


def _read(path: Path) -> pd.DataFrame:
    from .cells import read_csv

    return read_csv(path)


def load_samples(run_id: str | None = None, judge: str | None = None, runs_dir: str | Path = "runs") -> pd.DataFrame:
    """samples.csv of one judge, or of every finished judge of the run one after another (its `judge` column tells
    them apart), with a `run_id` column; the text cells as written (a leading ' taken off again)."""
    frames = []
    for folder in _judges(runs_dir, run_id, judge):
        frame = _read(folder / "samples.csv")
        if "run_id" not in frame.columns:  # written by a version before samples.csv named its run
            frame.insert(0, "run_id", folder.parents[1].name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def load_metrics(run_id: str | None = None, judge: str | None = None, runs_dir: str | Path = "runs") -> pd.DataFrame:
    """metrics.csv (the long table: run_id, dataset, generator, judge, criterion, statistic, against, value, lo, hi,
    n, note) of one judge or of every finished judge of the run, after the run's own rows that no judge enters (the
    lexical criteria, the human labels: `judge` empty), each statistic once."""
    folders = _judges(runs_dir, run_id, judge)
    run_file = folders[0].parents[1] / "metrics.csv"
    frames = ([_read(run_file)] if run_file.is_file() else []) + [_read(f / "metrics.csv") for f in folders]
    return pd.concat(frames, ignore_index=True)


def load_leaderboard(runs_dir: str | Path = "runs") -> pd.DataFrame:
    """runs/leaderboard.csv, as the last `stage=report report.runs=[...]` wrote it."""
    return _written(Path(runs_dir) / "leaderboard.csv")


def load_comparisons(runs_dir: str | Path = "runs") -> pd.DataFrame:
    """runs/comparisons.csv: the paired comparisons of runs over the same questions (metrics.csv's columns)."""
    return _written(Path(runs_dir) / "comparisons.csv")


def _written(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise PipelineError(f"{path} is not there yet: run python -m pipeline stage=report 'report.runs=[all]' "
                            f"(runs_dir={path.parent}) first.")
    return _read(path)
