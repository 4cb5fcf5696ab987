"""Tests of the local SLURM harness (tests/slurm_local.py) against a real single-node cluster.

They need root (slurmd, mknod, apt-get) and skip with the reason otherwise. One cluster with four fake GPUs is
shared by the module; the tests that stop a cluster start their own small one. Cluster roots are short
directories straight under /tmp, because munge's socket path must stay under ~107 bytes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from slurm_local import LocalSlurm, _cmdline, _comm, _environ, _is_running, is_available

pytestmark = pytest.mark.integration  # each test that starts a cluster is also slow
HARNESS = Path(__file__).with_name("slurm_local.py")
DAEMONS = {"munged", "slurmctld", "slurmd", "slurmstepd"}


def require_cluster() -> None:
    ok, why = is_available()
    if not ok:
        pytest.skip(why)


def short_root() -> Path:
    return Path(tempfile.mkdtemp(prefix="sl", dir="/tmp"))


def submit(cluster: LocalSlurm, *args: str) -> str:
    """sbatch --parsable ... -> the job id."""
    return cluster.run("sbatch", "--parsable", *args).stdout.strip().split(";")[0]


def leftovers(root: Path) -> list[str]:
    """Live processes that belong to the cluster under `root`: anything naming root on its command line
    (daemons, job scripts in the spool) and any slurmstepd whose SLURM_CONF lies under root."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or not _is_running(int(entry)):
            continue
        pid = int(entry)
        args = " ".join(_cmdline(pid))
        names_root = f"{root}/" in args
        our_stepd = _comm(pid) == "slurmstepd" and _environ(pid).get("SLURM_CONF", "").startswith(f"{root}/")
        if names_root or our_stepd:
            found.append(f"{pid} {_comm(pid)}: {args}")
    return found


@pytest.fixture(scope="module")
def cluster():
    """One running cluster (4 fake GPUs, 8 CPUs) for the module, stopped and deleted at the end."""
    require_cluster()
    root = short_root()
    local = LocalSlurm(root, gpus=4, cpus=8)
    try:
        local.start()
        yield local
    finally:
        local.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_gpu_array_tasks_each_get_their_own_gpu(cluster):
    out = cluster.root / "array"
    out.mkdir()
    script = f'echo "$SLURM_ARRAY_TASK_ID $CUDA_VISIBLE_DEVICES" > {out}/task_$SLURM_ARRAY_TASK_ID; sleep 1'
    job = submit(cluster, "--array=0-3", "--gres=gpu:1", f"--output={out}/%A_%a.log", "--wrap", script)

    assert cluster.wait_for_jobs([job], timeout=60) == {f"{job}_{task}": "COMPLETED" for task in range(4)}
    seen = {}
    for task in range(4):
        task_id, _, gpus = (out / f"task_{task}").read_text().strip().partition(" ")
        assert task_id == str(task)
        assert gpus, f"task {task} got no CUDA_VISIBLE_DEVICES"
        seen[task] = gpus
    assert sorted(seen.values()) == ["0", "1", "2", "3"], seen


@pytest.mark.slow
def test_afterok_dependent_runs_after_the_whole_array(cluster):
    out = cluster.root / "dep"
    out.mkdir()
    array = submit(cluster, "--array=0-3", "--output=/dev/null", "--wrap",
                   f"sleep 1; touch {out}/done_$SLURM_ARRAY_TASK_ID")
    dependent = submit(cluster, f"--dependency=afterok:{array}", "--output=/dev/null", "--wrap",
                       f"ls {out} | grep -c done_ > {out}/count")
    assert cluster.job_states(dependent) == {dependent: "PENDING"}

    states = cluster.wait_for_jobs([array, dependent], timeout=60)
    assert set(states.values()) == {"COMPLETED"} and len(states) == 5, states
    assert (out / "count").read_text().strip() == "4"


@pytest.mark.slow
def test_an_array_whose_first_tasks_slurmctld_has_forgotten_still_reads_whole(cluster, monkeypatch):
    # slurmctld drops each ended task MinJobAge (300 s) after it ended; on a slow machine it can still show an
    # array's last tasks when its first ones are gone (CI once read a 4-task array as 2 tasks). Waiting 300 s for
    # the purge is too slow for a test, so slurmctld's real answer is cut down to its last task, as a purge does.
    array = submit(cluster, "--array=0-2", "--output=/dev/null", "--wrap", "true")
    everything = {f"{array}_{task}": "COMPLETED" for task in range(3)}
    assert cluster.wait_for_jobs([array], timeout=60) == everything
    deadline = time.monotonic() + 30
    while cluster.jobcomp_states(array) != everything and time.monotonic() < deadline:
        time.sleep(0.2)
    real_run = cluster.run

    def forgetful_run(*args, **kwargs):
        result = real_run(*args, **kwargs)
        if args[:2] == ("scontrol", "show") and array in args:
            kept = [line for line in result.stdout.splitlines() if "ArrayTaskId=2 " in line]
            assert len(kept) == 1, result.stdout
            result.stdout = kept[0] + "\n"
        return result

    monkeypatch.setattr(cluster, "run", forgetful_run)
    assert cluster.job_states(array) == everything


@pytest.mark.slow
def test_failed_parent_cancels_afterok_dependent(cluster):
    parent = submit(cluster, "--output=/dev/null", "--wrap", "exit 3")
    child = submit(cluster, f"--dependency=afterok:{parent}", "--output=/dev/null", "--wrap", "true")

    assert cluster.wait_for_jobs([parent, child], timeout=60) == {parent: "FAILED", child: "CANCELLED"}
    assert "ExitCode=3:0" in cluster.run("scontrol", "show", "job", "-o", parent).stdout
    assert "Reason=DependencyNeverSatisfied" in cluster.run("scontrol", "show", "job", "-o", child).stdout
    # The jobcomp file is what job_states() falls back on once slurmctld has purged the job.
    assert cluster.jobcomp_states(parent) == {parent: "FAILED"}


@pytest.mark.slow
def test_too_many_gpus_is_rejected_at_submission(cluster):
    result = cluster.run("sbatch", "--gres=gpu:9", "--job-name=too-many-gpus", "--wrap", "true", check=False)

    assert result.returncode != 0
    assert "Requested node configuration is not available" in result.stderr, result.stderr
    assert result.stdout.strip() == "", "sbatch handed out a job id"
    # slurmctld keeps a record of the refused request, born FAILED; it never pends or runs.
    records = cluster.run("squeue", "-h", "-t", "all", "-n", "too-many-gpus", "-o", "%T %r").stdout.splitlines()
    assert records == ["FAILED BadConstraints"], records


@pytest.mark.slow
def test_stop_leaves_no_daemons_steps_or_job_processes():
    require_cluster()
    root = short_root()
    local = LocalSlurm(root, gpus=0, cpus=2)
    try:
        local.start()
        no_gpu = local.run("sbatch", "--gres=gpu:1", "--wrap", "true", check=False)
        assert no_gpu.returncode != 0 and "Invalid generic resource" in no_gpu.stderr, no_gpu.stderr

        job = submit(local, "--output=/dev/null", "--wrap", "sleep 600 & sleep 600; wait")
        deadline = time.monotonic() + 30
        while list(local.job_processes().values()).count("sleep") < 2:
            assert time.monotonic() < deadline, f"job {job} never started: {local.job_states(job)}"
            time.sleep(0.1)
        before = local.job_processes()
        daemons = local.daemon_pids()
        assert set(daemons) == {"munged", "slurmctld", "slurmd"}

        local.stop()

        assert leftovers(root) == []
        for pid, name in {**before, **{p: n for n, p in daemons.items()}}.items():
            assert not (_is_running(pid) and _comm(pid) == name), f"{name} (pid {pid}) survived stop()"
        assert local.daemon_pids() == {}
        local.stop()  # a second stop is a no-op
    finally:
        local.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_command_line_start_and_stop():
    require_cluster()
    root = short_root()
    try:
        started = subprocess.run([sys.executable, str(HARNESS), "start", str(root), "--gpus", "2", "--cpus", "2"],
                                 capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stderr
        assert started.stdout.strip() == f"export SLURM_CONF={root}/etc/slurm.conf"
        env = {**os.environ, "SLURM_CONF": f"{root}/etc/slurm.conf"}
        sinfo = subprocess.run(["sinfo", "-h", "-o", "%T %G"], env=env, capture_output=True, text=True, timeout=30)
        assert sinfo.stdout.split() == ["idle", "gpu:2"], sinfo.stdout + sinfo.stderr

        stopped = subprocess.run([sys.executable, str(HARNESS), "stop", str(root)], capture_output=True, text=True,
                                 timeout=120)
        assert stopped.returncode == 0, stopped.stderr
        assert leftovers(root) == []
    finally:
        LocalSlurm(root).stop()
        shutil.rmtree(root, ignore_errors=True)


def test_root_too_long_for_the_munge_socket_is_refused():
    with pytest.raises(ValueError, match="unix-socket limit"):
        LocalSlurm("/tmp/" + "x" * 100)


@pytest.mark.slow
def test_start_refuses_a_port_that_is_taken():
    require_cluster()
    root = short_root()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        try:
            with pytest.raises(RuntimeError, match=f"port {port} is already in use"):
                LocalSlurm(root, ports=(port, port + 1 if port < 65535 else port - 1)).start()
            assert leftovers(root) == []
        finally:
            shutil.rmtree(root, ignore_errors=True)
