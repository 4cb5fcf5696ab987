"""__main__.py, the command line: the README's pipeline through it (generate -> judge -> CSVs -> report); what the
entry point does before any stage runs (find conf/, refuse a bad command line in one line); and every value a user
can get wrong (a bad setting, a runs_dir that is a file, a read-only folder) refused in one line with exit status 2
before anything is written."""

import os
import subprocess

import pandas as pd
import pytest

from conftest import CONF, mount_or_skip, one_error_line, read_jsonl, run_cli


def test_conf_dir_is_the_checkouts_or_the_environments_and_a_missing_one_is_one_line(tmp_path, monkeypatch):
    import pipeline.__main__ as entry
    from pipeline.config import conf_dir

    assert entry.conf_dir is conf_dir  # library modules take it from config.py, never from the entry point
    monkeypatch.delenv("PIPELINE_CONF_DIR", raising=False)
    assert conf_dir() == CONF
    monkeypatch.setenv("PIPELINE_CONF_DIR", str(tmp_path))
    with pytest.raises(SystemExit, match=f"error: no Hydra config at {tmp_path}/config.yaml"):
        conf_dir()
    out = run_cli("stage=report", cwd=tmp_path, env={**os.environ, "PIPELINE_CONF_DIR": str(tmp_path)})
    assert out.returncode == 1 and out.stderr.strip().splitlines() == [f"error: no Hydra config at {tmp_path}/"
                                                                       "config.yaml. Run from a checkout of the "
                                                                       "repository (pip install -e .), or set "
                                                                       "PIPELINE_CONF_DIR to its conf/ folder."]


@pytest.mark.parametrize("argv, says", [
    (["stage=generte"], "Invalid value 'generte'"),
    (["judge.max_new_tokens=8"], "max_new_tokens"),
    (["hardware=5xB200"], "Available options in 'hardware'"),
])
def test_precheck_says_a_bad_command_line_in_one_line_with_status_2(capsys, argv, says):
    from pipeline.__main__ import precheck

    with pytest.raises(SystemExit) as stopped:
        precheck(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and says in err[0]


def test_precheck_lets_a_good_command_line_and_hydras_flags_through():
    from pipeline.__main__ import precheck

    precheck(["stage=plan", "judge=llama70b-8bit", "hardware=4xA100-40GB"])
    precheck(["--cfg", "job", "stage=generte"])  # flags are Hydra's own to report


def test_a_value_the_checks_refuse_is_one_line_before_any_stage_starts(tmp_path):
    runs = tmp_path / "runs"
    out = run_cli("stage=judge", "judge.mode=generate", "judge_prompt=reasoned-v2", "judge_prompt.reply_tokens=0",
                  f"runs_dir={runs}", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == ["error: judge_prompt.reply_tokens=0 must be at least 1. Nothing was "
                                               "written; fix the value and run again."]
    assert not runs.exists()


def test_a_reasoned_prompt_in_logprob_mode_is_refused_before_anything_loads(tmp_path):
    """Issue repro: reasoned-v2 with the default logprob mode made 14 of 16 verdicts invalid and the 2 left an
    accuracy of 1.000 [1.000, 1.000]; the pair cannot give a meaningful number, so it is refused up front."""
    runs = tmp_path / "runs"
    out = run_cli("stage=judge", "judge_prompt=reasoned-v2", f"runs_dir={runs}", cwd=tmp_path)
    line = one_error_line(out)
    assert "judge_prompt=reasoned-v2 is written for judge.mode=generate, not judge.mode=logprob" in line
    assert "pass judge.mode=generate" in line and not runs.exists()


@pytest.mark.slow
@pytest.mark.integration
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


# ------------------------------------------------ refused before anything is written: one line, exit status 2

@pytest.mark.slow  # starts stage=generate in a subprocess
def test_cli_bad_inputs_give_one_clear_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "text": "Q?", "answers": ["a"]}\n')
    out = run_cli("stage=generate", f"dataset.path={bad}", f"runs_dir={tmp_path}/runs", cwd=tmp_path)
    assert out.returncode == 2 and "has no field 'question'" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists()  # nothing half-made
    out = run_cli("stage=judge", "run_id=../../etc", f"runs_dir={tmp_path}/runs", cwd=tmp_path)
    assert out.returncode == 2 and "not allowed" in out.stderr
    out = run_cli("stage=generate", "generator.batchsize=4", cwd=tmp_path)
    # caught by the typed schema before any work, said in one line
    assert out.returncode == 2 and "batchsize" in out.stderr and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("stage, overrides, says", [
    ("generate", ["generator.precision=bf61"], "Invalid value 'bf61', expected one of [auto, fp32"),
    ("generate", ["generator.device=gpu0"], "generator.device='gpu0' is not a device"),
    ("generate", ["generator.device=cuda"], "torch sees 0 CUDA GPU"),
    ("judge", ["judge=llama70b-4bit", "judge.compute_dtype=f16"], "Invalid value 'f16'"),
    ("judge", ["judge.mode=logprb"], "Invalid value 'logprb'"),
    ("judge", ["judge.placement.strategy=even"], "Invalid value 'even'"),
    ("judge", ["judge.placement.devices=gpu0"], "Invalid value 'gpu0'"),
    ("generte", [], "Invalid value 'generte'"),
    ("judge", ["judge_prompt.max_candidate_chars=0"], "judge_prompt.max_candidate_chars=0 must be at least 1"),
    ("judge", ["judge.min_verdict_mass=2"], "judge.min_verdict_mass=2.0 must lie in [0, 1]"),
    ("judge", ["judge.threshold=1.5"], "judge.threshold=1.5 must lie in [0, 1]"),
    ("generate", ["generator.batch_size=0", "dataset.limit=0"], "generator.batch_size=0 must be at least 1; "
                                                              "dataset.limit=0 must be at least 1"),
    ("judge", ["judge.name=" + "j" * 300], "at most 128 characters"),
    ("generate", ["run_id=" + "r" * 300], "at most 128 characters"),
])
def test_a_bad_value_is_one_line_and_leaves_nothing_behind(tmp_path, stage, overrides, says):
    runs = tmp_path / "runs"
    run_id = [] if any(o.startswith("run_id") for o in overrides) else ["run_id=r1"]
    out = run_cli(f"stage={stage}", *run_id, f"runs_dir={runs}", *overrides, cwd=tmp_path)
    assert says in one_error_line(out)
    assert not runs.exists()  # no run folder, no runs/latest, no stage.json: the corrected command just runs


def test_runs_dir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    assert "is a file, not a folder" in one_error_line(
        run_cli("stage=generate", f"runs_dir={tmp_path}/runs", cwd=tmp_path))


@pytest.mark.slow  # starts stage=generate in a subprocess
def test_a_read_only_folder_is_one_line(tmp_path):
    source, target = tmp_path / "src", tmp_path / "ro"
    source.mkdir()
    target.mkdir()
    mount_or_skip("--bind", str(source), str(target))
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
        out = run_cli("stage=generate", f"runs_dir={target}/runs", "dataset.limit=2", cwd=tmp_path)
        assert "cannot write here (Read-only file system)" in one_error_line(out)
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)
