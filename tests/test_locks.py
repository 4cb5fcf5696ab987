"""locks.py: one process per stage. A second process stops at once naming the holder (pid, host), a lock whose
holder died is taken over, and two generates started together on one run leave every id exactly once."""

import json
import logging
import os
import signal
import subprocess
import sys

import pytest

from pipeline.locks import StageLock
from pipeline.runs import StageDir

from conftest import SMALL, one_error_line, read_jsonl, run_cli


HOLD_LOCK = """
import sys, time
from pathlib import Path
from pipeline.runs import StageDir
with StageDir(Path(sys.argv[1]), "generations.jsonl").lock():
    print("holding", flush=True)
    time.sleep(600)
"""


@pytest.mark.slow
@pytest.mark.integration
def test_a_second_process_stops_at_once_naming_the_holder_and_a_dead_holder_is_taken_over(tmp_path, model_dir):
    run = tmp_path / "runs" / "locked"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"run_id": "locked", "created": 0}))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run / "generate")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        out = run_cli("stage=generate", "run_id=locked", f"runs_dir={tmp_path}/runs", "dataset.limit=2", *SMALL,
                      cwd=tmp_path)
        line = one_error_line(out)
        assert "in use by another process" in line and f"pid {holder.pid}" in line and "host " in line
        assert not (run / "generate" / "stage.json").exists()  # the loser wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    out = run_cli("stage=generate", "run_id=locked", f"runs_dir={tmp_path}/runs", "dataset.limit=2", *SMALL,
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"taking over the lock last held by pid {holder.pid}" in out.stderr
    assert len(read_jsonl(run / "generate/generations.jsonl")) == 2


@pytest.mark.slow
@pytest.mark.integration
def test_two_generates_at_once_on_one_run_leave_every_id_exactly_once(tmp_path, model_dir):
    args = [sys.executable, "-m", "pipeline", "stage=generate", "run_id=twice", f"runs_dir={tmp_path}/runs",
            "dataset.limit=8", "generator.batch_size=2", *SMALL]
    procs = [subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    for rc, err in results:  # each either did the work, found it done, or stopped at the lock with one line
        assert rc == 0 or (rc == 2 and "in use by another process" in err), err
    assert any(rc == 0 for rc, _ in results)
    stage = StageDir(tmp_path / "runs/twice/generate", "generations.jsonl")
    ids = [r["id"] for r in stage.read_records()]  # verified against the manifest
    assert len(ids) == len(set(ids)) == 8


def test_a_clean_release_leaves_no_holder_to_report(tmp_path, caplog):
    lock_file = tmp_path / ".locks/stage.lock"
    with StageLock(lock_file, "stage/"):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()  # who holds it, while held
    assert lock_file.read_text() == ""
    with caplog.at_level(logging.INFO, logger="pipeline"), StageLock(lock_file, "stage/"):
        pass
    assert "taking over" not in caplog.text
