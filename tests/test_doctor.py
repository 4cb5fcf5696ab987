"""doctor.py (stage=doctor): what it reports about this node, its smoke test answering a real question, and the
exit status for a judge preset that cannot run here."""

import pytest

from conftest import run_cli


@pytest.mark.slow
@pytest.mark.integration
def test_cli_doctor_reports_the_node_and_fails_for_a_judge_that_cannot_run(tmp_path, model_dir):
    out = run_cli("stage=doctor", "doctor.smoke=true", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "int8  usable" in out.stdout and "nf4   usable" in out.stdout
    assert "llama70b-8bit" in out.stdout and "smollm2-135m" in out.stdout
    assert "Paris" in out.stdout  # the smoke test really answered
    out = run_cli("stage=doctor", "judge=llama70b-8bit", cwd=tmp_path)
    assert out.returncode == 2 and "cannot run on this node" in out.stderr
