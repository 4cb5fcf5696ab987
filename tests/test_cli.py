"""The README's pipeline through the real command line: generate -> judge -> CSVs -> report."""

import pandas as pd
import pytest

from conftest import read_jsonl, run_cli

pytestmark = pytest.mark.slow


def test_generate_judge_report_from_the_command_line(tmp_path, model_dir):
    common = ("dataset.limit=6", "progress=false")
    out = run_cli("stage=generate", *common, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    run_dir = (tmp_path / "runs/latest").resolve()
    assert run_dir.parent == tmp_path / "runs" and run_dir.name.endswith("-smollm2-135m-factoids")
    assert len(read_jsonl(run_dir / "generate/generations.jsonl")) == 6

    out = run_cli("stage=judge", *common, cwd=tmp_path)  # no run_id: the newest run
    assert out.returncode == 0, out.stderr
    assert "placement plan:" in out.stdout and "verdict: fits" in out.stdout
    summary = pd.read_csv(run_dir / "judge/smollm2-135m/summary.csv")
    assert summary.loc[0, "n"] == 6 and summary.loc[0, "run_id"] == run_dir.name

    samples = run_dir / "judge/smollm2-135m/samples.csv"
    before = samples.read_text()
    samples.unlink()
    out = run_cli("stage=report", f"run_id={run_dir.name}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert samples.read_text() == before  # CSVs are a pure function of the stored records
