"""Faults at the worst moments, through the command line: finished work is never thrown away, a stage that fails
before its first record leaves nothing behind, and a full disk is one line naming the file.

Each test breaks a real file system (a small tmpfs, a path that cannot be written) or a real model folder (its weights
cut short), then runs the same command again the way a user would.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import SMALL, copy_run, mount_or_skip, no_temporary_files, one_error_line, read_jsonl, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.integration]

JUDGE = "judge/smollm2-135m"


def without_judge(judged_run, tmp_path):
    """A copy of the shared run with its answers only."""
    run = copy_run(judged_run, tmp_path)
    shutil.rmtree(run / "judge")
    return run


def test_a_manifest_that_cannot_be_written_keeps_the_verdicts_and_the_rerun_only_publishes(judged_run, tmp_path):
    run = without_judge(judged_run, tmp_path)
    stage = run / JUDGE
    (stage / "manifest.json").mkdir(parents=True)  # the last write of the stage fails, after the records are out
    out = run_cli("stage=judge", "run_id=copy", *SMALL, cwd=tmp_path)
    assert "manifest.json" in one_error_line(out)
    assert (stage / "stage.json").is_file() and len(read_jsonl(stage / "verdicts.jsonl")) == 16
    kept = (stage / "verdicts.jsonl").read_bytes()
    (stage / "manifest.json").rmdir()
    out = run_cli("stage=judge", "run_id=copy", *SMALL, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "16 records already written, 0 to go" in out.stderr and "loaded" not in out.stderr  # no model ran
    assert (stage / "verdicts.jsonl").read_bytes() == kept and (stage / "summary.csv").is_file()


def test_a_report_that_fails_never_touches_the_finished_stage(judged_run, tmp_path):
    run = without_judge(judged_run, tmp_path)
    stage = run / JUDGE
    (stage / "samples.csv").mkdir(parents=True)  # the report cannot write its first file
    out = run_cli("stage=judge", "run_id=copy", *SMALL, cwd=tmp_path)
    assert "samples.csv" in one_error_line(out)
    assert {"stage.json", "config.yaml", "manifest.json", "verdicts.jsonl"} <= {p.name for p in stage.iterdir()}
    kept = (stage / "verdicts.jsonl").read_bytes()
    (stage / "samples.csv").rmdir()
    out = run_cli("stage=judge", "run_id=copy", *SMALL, cwd=tmp_path)
    assert out.returncode == 0 and "writing them again" in out.stderr, out.stderr[-2000:]
    assert (stage / "verdicts.jsonl").read_bytes() == kept and (stage / "samples.csv").is_file()


def fill(disk, leave_kib: int):
    """Fill the file system at `disk` up to its last `leave_kib` KiB; the filler file is returned to free it."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - leave_kib * 1024))
    return filler


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mount_or_skip("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk))
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.parametrize("free_kib", [8, 16, 24])
def test_a_full_disk_at_the_first_writes_is_one_line_naming_the_file_and_leaves_no_run(small_disk, tmp_path, free_kib):
    fill(small_disk, free_kib)
    runs = small_disk / "runs"
    out = run_cli("stage=generate", "run_id=full", "dataset.limit=2", f"runs_dir={runs}", *SMALL, cwd=tmp_path)
    line = one_error_line(out)
    assert "the disk is full" in line and f"{runs}/full/" in line, line
    assert "Logging error" not in out.stderr and "a file it was writing" not in out.stderr
    assert not (runs / "full").exists() and not (runs / "latest").exists()
    no_temporary_files(small_disk)


def test_a_judge_on_a_nearly_full_disk_never_redoes_a_verdict_it_kept(judged_run, small_disk, tmp_path):
    """The issue's repro: a run on a small disk, filled to ~40 KiB free, judged; whatever write fails first, the
    rerun after freeing space judges only what was not kept."""
    run = without_judge(judged_run, small_disk)
    filler = fill(small_disk, 40)
    runs = small_disk / "runs"
    out = run_cli("stage=judge", "run_id=copy", f"runs_dir={runs}", "report.plots=false", *SMALL, cwd=tmp_path)
    assert "the disk is full" in one_error_line(out)
    stage = run / JUDGE
    kept = [f for f in ("verdicts.jsonl", "verdicts.jsonl.partial") if (stage / f).is_file()]
    kept_records = sum(len(read_jsonl(stage / f)) for f in kept)
    filler.unlink()
    out = run_cli("stage=judge", "run_id=copy", f"runs_dir={runs}", "report.plots=false", *SMALL, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    if kept_records:
        assert f"{kept_records} records already written, {16 - kept_records} to go" in out.stderr
    assert len(read_jsonl(stage / "verdicts.jsonl")) == 16 and (stage / "summary.csv").is_file()


def broken_model(model_dir, tmp_path):
    """A copy of the embedded model whose weights file was cut short (an interrupted download)."""
    folder = tmp_path / "broken-model"
    shutil.copytree(model_dir, folder)
    os.truncate(folder / "model.safetensors", 4096)
    return folder


def test_a_generator_that_does_not_load_leaves_no_run_and_keeps_latest(judged_run, model_dir, tmp_path):
    copy_run(judged_run, tmp_path)
    runs = tmp_path / "runs"
    os.symlink("copy", runs / "latest")
    out = run_cli("stage=generate", "run_id=new", f"generator.model={broken_model(model_dir, tmp_path)}",
                  "dataset.limit=2", *SMALL, cwd=tmp_path)
    assert "damaged or incomplete" in one_error_line(out)
    assert sorted(p.name for p in runs.iterdir()) == ["copy", "latest"] and os.readlink(runs / "latest") == "copy"


def test_a_judge_that_does_not_load_leaves_nothing_in_the_run(judged_run, model_dir, tmp_path):
    run = copy_run(judged_run, tmp_path)
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    out = run_cli("stage=judge", "run_id=copy", "judge.name=broken", f"judge.model={broken_model(model_dir, tmp_path)}",
                  *SMALL, cwd=tmp_path)
    assert "damaged or incomplete" in one_error_line(out)
    after = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    assert [p for p in after if p not in before and not p.startswith(".locks")] == []
    assert not (run / "judge/broken").exists() and not (run / ".locks/judge--broken.lock").exists()
