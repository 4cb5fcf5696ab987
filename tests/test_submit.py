"""submit.py (stage=submit) on a real SLURM: a single-node cluster (Debian's slurmctld/slurmd/munge, fake GPU devices)
started for this module by tests/slurm_local.py (the `cluster` fixture of conftest.py), and the real chain submitted
by `python -m pipeline stage=submit`; also its dry run, the requeue on SIGUSR1 and a Hydra multirun on SLURM.

Needs root (slurmd, mknod, apt-get); skipped with the reason otherwise. CI runs as root, so CI runs these.
"""

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from slurm_local import _cmdline, _environ, _fields, _is_running

from conftest import one_error_line, read_jsonl, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.integration]
SLURM_GPUS = 4  # fake GPUs of the module's cluster (conftest.py)
REPO = Path(__file__).resolve().parents[1]
# What every submitted job shares here: a small slice of the embedded data set, one CPU and little memory per task.
SMALL = ["dataset.limit=16", "threads=1", "slurm.partition=debug", "slurm.cpus_per_task=1", "slurm.mem=2G",
         "slurm.report_cpus=1", "slurm.report_mem=1G", "slurm.judge_gpus=1", "slurm.generate_gpus=1",
         "slurm.allow_cpu_torch=true"]  # the cluster's GPUs are fake files; torch here is the CPU build


def submit(cluster, tmp_path, run_id, *overrides, check=True):
    out = run_cli("stage=submit", f"run_id={run_id}", f"runs_dir={tmp_path}/runs", *SMALL, *overrides,
                  cwd=tmp_path, env=cluster.env)
    if check:
        assert out.returncode == 0, out.stderr
        return json.loads((tmp_path / "runs" / run_id / "slurm/submit.json").read_text())["jobs"], out
    return None, out


def states_of(cluster, jobs, timeout=600):
    return cluster.wait_for_jobs(list(jobs.values()), timeout=timeout)


def by_job(states, job):
    return {k: v for k, v in states.items() if k == job or k.startswith(f"{job}_")}


def test_the_whole_chain_runs_and_writes_the_csvs(cluster, tmp_path, model_dir):
    started = time.monotonic()
    jobs, out = submit(cluster, tmp_path, "chain", "slurm.generate_shards=4", "slurm.judge_shards=2",
                       'slurm.setup=["echo set-up lines ran", "export SITE_READY=yes"]',
                       'slurm.report.extra_args=["--comment=report-job"]')
    assert "squeue -j" in out.stdout and jobs["generate"] in out.stdout
    states = states_of(cluster, jobs)
    elapsed = time.monotonic() - started
    assert set(states.values()) == {"COMPLETED"}, states
    assert len(by_job(states, jobs["generate"])) == 4 and len(by_job(states, jobs["judge"])) == 2

    run = tmp_path / "runs/chain"
    samples = pd.read_csv(run / "judge/smollm2-135m/samples.csv")
    assert len(samples) == 16 and samples["id"].is_unique
    gen = json.loads((run / "generate/manifest.json").read_text())
    assert gen["merged_from"]["shard_count"] == 4 and gen["records"] == 16
    judged = json.loads((run / "judge/smollm2-135m/manifest.json").read_text())
    assert judged["merged_from"]["shard_count"] == 2
    for shard in (run / "judge/smollm2-135m/shards").iterdir():  # each judge task planned for its own allocation
        assert (shard / "plan.json").is_file()
        assert json.loads((shard / "manifest.json").read_text())["slurm"]["SLURM_ARRAY_JOB_ID"] == jobs["judge"]
    logs = sorted((run / "slurm").glob("*.out"))
    assert len(logs) == 4 + 2 + 1, logs
    for log in logs:  # slurm.setup's lines ran at the top of every job, before Python
        text = log.read_text()
        assert "pipeline: sourcing the set-up lines of" in text, log
        assert "set-up lines ran" in text, log
    commands = json.loads((run / "slurm/submit.json").read_text())["commands"]
    assert "--comment=report-job" in commands["report"] and "--comment=report-job" not in commands["judge"]
    print(f"\n4-shard chain (generate x4 -> judge x2 -> report) on 16 questions: {elapsed:.0f} s wall")


def task_process(run_id, task_id):
    """The python process of one array task of `run_id`."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _is_running(int(entry)):
            pid = int(entry)
            args = _cmdline(pid)
            if "pipeline" in args and f"run_id={run_id}" in args and "stage=generate" in args \
                    and _environ(pid).get("SLURM_ARRAY_TASK_ID") == str(task_id):
                return pid
    return None


def test_a_served_judge_runs_as_a_sharded_chain_and_agrees_with_the_hf_engine(cluster, vllm_server, tmp_path,
                                                                                model_dir):
    """judge.engine=openai on the real SLURM: the judge tasks ask for no GPU, each shard sends its answers to the
    tests' vLLM server, the shards merge with their token counts added up, and the verdicts are the hf engine's on the
    same answers (judged here afterwards)."""
    jobs, out = submit(cluster, tmp_path, "served", "slurm.generate_shards=2", "slurm.judge_shards=2",
                       "slurm.judge_gpus=null", "judge.engine=openai", f"judge.api.base_url={vllm_server}",
                       "report.plots=false")
    states = states_of(cluster, jobs)
    assert set(states.values()) == {"COMPLETED"}, states
    commands = json.loads((tmp_path / "runs/served/slurm/submit.json").read_text())["commands"]
    assert "--gres" not in commands["judge"] and "--gres=gpu:1" in commands["generate"]
    folder = tmp_path / "runs/served/judge/smollm2-135m"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["merged_from"]["shard_count"] == 2 and manifest["judge"]["engine"] == "openai"
    shards = [json.loads(m.read_text())["engine"]["usage"] for m in sorted(folder.glob("shards/*/manifest.json"))]
    assert len(shards) == 2 and manifest["engine"]["usage"]["prompt_tokens"] == sum(u["prompt_tokens"] for u in shards)
    served = {v["id"]: v for v in read_jsonl(folder / "verdicts.jsonl")}
    assert len(served) == 16
    out = run_cli("stage=judge", "run_id=served", "judge.name=local", f"runs_dir={tmp_path}/runs", "threads=1",
                  "progress=false", "report.plots=false", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    local = {v["id"]: v for v in read_jsonl(tmp_path / "runs/served/judge/local/verdicts.jsonl")}
    assert {i: v["verdict"] for i, v in served.items()} == {i: v["verdict"] for i, v in local.items()}
    assert max(abs(served[i]["p_correct"] - local[i]["p_correct"]) for i in served) < 1e-4


def test_a_killed_task_cancels_its_dependents_and_a_resubmit_completes(cluster, tmp_path, model_dir):
    chain = ("slurm.generate_shards=4", "slurm.judge_shards=2", "generator.batch_size=1", "dataset.limit=24")
    jobs, _ = submit(cluster, tmp_path, "killed", *chain)
    partial = tmp_path / "runs/killed/generate/shards/00001-of-00004/generations.jsonl.partial"
    deadline = time.monotonic() + 300
    while not (partial.exists() and partial.read_bytes().count(b"\n") >= 1):
        assert time.monotonic() < deadline, "shard 1 never started writing"
        time.sleep(0.1)
    pid = task_process("killed", 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # mid-way: it has written some answers, not all
    states = states_of(cluster, jobs)
    gen = by_job(states, jobs["generate"])
    assert gen[f"{jobs['generate']}_1"] in ("FAILED", "CANCELLED"), states
    assert set(by_job(states, jobs["judge"]).values()) == {"CANCELLED"}, states  # not pending forever
    assert states[jobs["report"]] == "CANCELLED", states
    kept = partial.read_bytes().count(b"\n")
    assert 1 <= kept < 6

    jobs2, _ = submit(cluster, tmp_path, "killed", *chain)  # the same command again
    states = states_of(cluster, jobs2)
    assert set(states.values()) == {"COMPLETED"}, states
    run = tmp_path / "runs/killed"
    ids = [r["id"] for r in read_jsonl(run / "generate/generations.jsonl")]
    assert len(ids) == 24 and len(set(ids)) == 24
    shard1 = json.loads((run / "generate/shards/00001-of-00004/manifest.json").read_text())
    assert shard1["resumed_with"] == kept  # finished work was kept, not redone
    assert len(pd.read_csv(run / "judge/smollm2-135m/samples.csv")) == 24


def wait_for_job(cluster, job, condition, timeout):
    """Poll `scontrol show job` until condition(fields) holds; return the fields (Key=Value pairs)."""
    deadline = time.monotonic() + timeout
    while True:
        fields = _fields(cluster.run("scontrol", "show", "job", "-o", job).stdout)
        if condition(fields):
            return fields
        assert time.monotonic() < deadline, f"job {job} never reached the awaited state; last seen: {fields}"
        time.sleep(0.1)


def test_time_limit_warning_makes_the_task_stop_cleanly_and_requeue_itself(cluster, tmp_path, model_dir):
    started = time.monotonic()
    runs = tmp_path / "runs"
    out = cluster.run("sbatch", "--parsable", "--requeue", f"--chdir={tmp_path}", f"--output={tmp_path}/usr1.out",
                      f"--export=ALL,PIPELINE_PYTHON={sys.executable}", "--cpus-per-task=1", "--mem=2G",
                      str(REPO / "slurm/generate.sbatch"), "run_id=usr1", f"runs_dir={runs}", "dataset.limit=16",
                      "generator.batch_size=1", "threads=1")
    job = out.stdout.strip()
    partial = runs / "usr1/generate/generations.jsonl.partial"
    deadline = time.monotonic() + 300
    while not (partial.exists() and partial.read_bytes().count(b"\n") >= 2):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    # The signal is sent here, once the task has written answers, instead of waiting for a time limit: what
    # --signal=B:USR1@120 sends before the limit.
    cluster.run("scancel", "--signal=USR1", "--batch", job)
    signalled = time.monotonic()
    # The task finishes its batch, exits and requeues itself. SLURM first shows the job COMPLETING (Restarts=1)
    # while the old run is torn down, then PENDING with reason BeginTime: held for the credential lifetime (~120 s),
    # because slurmd has revoked the old run's credential. A start time set before that point is overwritten, so
    # wait for exactly that state.
    held = wait_for_job(cluster, job, lambda r: r.get("JobState") == "PENDING" and r.get("Restarts") == "1"
                        and r.get("Reason") == "BeginTime", timeout=120)
    requeued = time.monotonic()
    kept = partial.read_bytes().count(b"\n")  # what the stopped run wrote: whole batches only
    # Release it early. slurmd refuses to launch the job with a credential made in the same second as the
    # revocation ("Job credential revoked", and the job ends FAILED). The revocation happened before the PENDING
    # state seen above, so wait until the clock is a whole second past the second that state was seen in.
    time.sleep(max(0.0, math.floor(time.time()) + 2 - time.time()))
    cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    released = time.monotonic()
    wait_for_job(cluster, job, lambda r: r.get("JobState") != "PENDING", timeout=120)
    restarted = time.monotonic()
    states = cluster.wait_for_jobs([job], timeout=300)
    assert states[job] == "COMPLETED", (states, held, cluster.log_path("slurmctld").read_text()[-3000:])
    done = time.monotonic()
    log = (tmp_path / "usr1.out").read_text()
    assert f"stopped by SIGUSR1 after the batch in flight: {kept} of 16 records are written" in log, log
    assert f"requeued SLURM job {job}" in log
    manifest = json.loads((runs / "usr1/generate/manifest.json").read_text())
    assert kept >= 2 and manifest["resumed_with"] == kept and manifest["slurm"]["SLURM_RESTART_COUNT"] == "1"
    ids = [r["id"] for r in read_jsonl(runs / "usr1/generate/generations.jsonl")]
    assert len(ids) == 16 and len(set(ids)) == 16
    print(f"\nSIGUSR1 after {signalled - started:.1f} s; requeued and held {requeued - signalled:.1f} s later "
          f"({kept} answers kept); released after {released - requeued:.1f} s; started {restarted - released:.1f} s "
          f"after that; done {done - restarted:.1f} s later")


def test_a_request_the_cluster_rejects_stops_the_chain_with_slurms_message(cluster, tmp_path):
    before = cluster.run("squeue", "-h", "-o", "%i").stdout.split()
    _, out = submit(cluster, tmp_path, "bad1", "slurm.partition=nope", check=False)
    assert out.returncode == 2 and "SLURM refused the generate job" in out.stderr
    assert "invalid partition" in out.stderr.lower()
    _, out = submit(cluster, tmp_path, "bad2", "slurm.judge_gpus=9", check=False)
    assert out.returncode == 2 and "SLURM refused the judge job" in out.stderr
    assert "Requested node configuration is not available" in out.stderr and "were cancelled" in out.stderr
    time.sleep(1)
    active = set(cluster.run("squeue", "-h", "-o", "%i").stdout.split()) - set(before)
    assert not active  # the generate array submitted before the judge was refused is cancelled, not left queued


def test_dry_run_prints_the_chain_and_submits_nothing(tmp_path):
    out = run_cli("stage=submit", "slurm.dry_run=true", "judge=llama70b-8bit", "hardware=4xA100-40GB",
                  "slurm.partition=gpu", "slurm.account=proj", "slurm.qos=high", f"runs_dir={tmp_path}/runs",
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = [x for x in out.stdout.splitlines() if x.startswith("sbatch")]
    assert len(lines) == 3
    assert all("--partition=gpu" in x and "--account=proj" in x and "--qos=high" in x for x in lines)
    assert "--gres=gpu:3" in lines[1]  # from the 70B int8 plan on 40 GiB A100s
    assert not any("hardware=" in x for x in lines)  # the profile sizes the chain; the tasks detect their own GPUs
    assert "placement plan of judge llama70b-8bit on hardware=4xA100-40GB" in out.stdout
    assert "--dependency=afterok:{generate}" in lines[1] and "--kill-on-invalid-dep=yes" in lines[1]
    assert "judge=llama70b-8bit" in lines[1] and "--signal=B:USR1@120" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_dry_run_shows_the_sites_set_up_lines_and_each_jobs_own_partition(tmp_path):
    """slurm.setup and per-job settings as a site admin reads them: the set-up file every job sources, the report on
    a CPU partition without the GPU partition's constraint, the judge with its own account and extra arguments."""
    out = run_cli("stage=submit", "slurm.dry_run=true", "run_id=site", "judge=llama70b-8bit", "hardware=4xA100-40GB",
                  "slurm.partition=gpu", "slurm.constraint=a100", 'slurm.extra_args=["--mail-type=FAIL"]',
                  "slurm.report.partition=cpu", "slurm.report.constraint=''", "slurm.report.extra_args=[]",
                  "slurm.judge.account=bigproj", "slurm.judge.qos=long",
                  'slurm.setup=["module load cuda/12.4","source ~/miniconda3/bin/activate judge"]',
                  f"runs_dir={tmp_path}/runs", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    gen, jud, rep = [x for x in out.stdout.splitlines() if x.startswith("sbatch")]
    setup = tmp_path / "runs/site/slurm/setup.sh"
    assert f"# every job first sources {setup} (slurm.setup):\n#   module load cuda/12.4\n" \
           f"#   source ~/miniconda3/bin/activate judge\n" in out.stdout
    assert all(f"PIPELINE_SETUP={setup}" in x for x in (gen, jud, rep))
    assert "--partition=gpu" in gen and "--constraint=a100" in gen and "--mail-type=FAIL" in gen
    assert "--account=bigproj" in jud and "--qos=long" in jud and "--partition=gpu" in jud and "--gres=gpu:3" in jud
    assert "--account" not in gen and "--qos" not in gen
    assert "--partition=cpu" in rep and "--constraint" not in rep and "--mail-type" not in rep and "--gres" not in rep
    assert not (tmp_path / "runs").exists()


def test_gpu_jobs_with_a_cpu_build_of_torch_are_refused_before_queueing_and_in_the_job(tmp_path):
    """This machine's torch is the CPU build (what `make setup` installs on a login node): a chain that asks for GPUs
    is refused before anything is queued, and a job given GPUs stops in one line before reading anything."""
    env = {k: v for k, v in os.environ.items() if k != "PIPELINE_ALLOW_CPU_TORCH" and not k.startswith("SLURM")}
    out = run_cli("stage=submit", "run_id=cpu", "slurm.judge_gpus=2", f"runs_dir={tmp_path}/runs", cwd=tmp_path,
                  env=env)
    line = one_error_line(out)
    assert out.returncode == 2 and "is a CPU build, but they ask for GPUs (generate 1, judge 2 per task)" in line
    assert "TORCH=cuda make setup" in line and not (tmp_path / "runs").exists()
    out = run_cli("stage=generate", "run_id=job", f"runs_dir={tmp_path}/runs", cwd=tmp_path,
                  env={**env, "SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "0,1"})
    line = one_error_line(out)
    assert out.returncode == 2 and "this SLURM job was given GPUs (SLURM_JOB_GPUS=0,1) but its torch" in line
    assert not (tmp_path / "runs").exists()
    out = run_cli("stage=submit", "run_id=cpu", "slurm.generate_gpus=0", "judge.placement.devices=cpu",
                  "slurm.dry_run=true", f"runs_dir={tmp_path}/runs", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr  # a CPU chain asks for no GPU: nothing to refuse


def test_dry_run_gives_judge_tasks_with_more_gpus_than_a_copy_needs_one_replica_per_copy(tmp_path):
    out = run_cli("stage=submit", "slurm.dry_run=true", "judge=llama70b-8bit", "hardware=8xH100-80GB",
                  "slurm.judge_gpus=8", "slurm.judge_shards=2", f"runs_dir={tmp_path}/runs", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = [x for x in out.stdout.splitlines() if x.startswith("sbatch")]
    assert "--gres=gpu:8" in lines[1] and lines[1].endswith("judge.placement.replicas=8")  # a count, not auto
    assert not any("replicas" in x for x in (lines[0], lines[2]))
    assert "# 8 replicas per task (judge llama70b-8bit needs 1 GPU(s) of NVIDIA H100 80GB HBM3 a copy" in out.stdout
    out = run_cli("stage=submit", "slurm.dry_run=true", "judge=llama70b", "hardware=8xH100-80GB",
                  "slurm.judge_gpus=8", f"runs_dir={tmp_path}/runs", cwd=tmp_path)  # bf16: 2 GPUs a copy
    assert out.returncode == 0 and "# 4 replicas per task" in out.stdout, out.stderr
    out = run_cli("stage=submit", "slurm.dry_run=true", "judge=llama70b", "hardware=8xH100-80GB",
                  "slurm.judge_gpus=4", "judge.placement.replicas=3", f"runs_dir={tmp_path}/runs", cwd=tmp_path)
    assert "3 copies of judge llama70b need 6 GPUs (2 each" in one_error_line(out)
    assert not (tmp_path / "runs").exists()


def test_dry_run_sizes_each_task_by_its_engine(tmp_path):
    """A judge behind an API asks for no GPU (its tasks only send requests), nor does a served generator; a vLLM
    judge asks for the fewest GPUs that hold a copy and divide its attention heads (gemma3-27b on 24 GiB cards: 3
    hold it, 32 heads make it 4), runs no replicas of its own, and is refused in one line where no count divides."""
    def judge_line(*args):
        out = run_cli("stage=submit", "slurm.dry_run=true", *args, f"runs_dir={tmp_path}/runs", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        return out, [x for x in out.stdout.splitlines() if x.startswith("sbatch")]

    out, (gen, jud, _) = judge_line("judge=llama70b-8bit", "hardware=4xA100-40GB", "judge.engine=openai",
                                    "judge.api.base_url=http://gpu-node-3:8000/v1")
    assert "--gres" not in jud and "--gres=gpu:1" in gen and "judge.engine=openai" in jud
    assert "judge.engine=openai (the tasks only send requests to judge.api.base_url)" in out.stdout
    _, (gen, jud, _) = judge_line("generator.engine=openai", "generator.api.base_url=http://gpu-node-3:8000/v1",
                                  "generator.api.model=llama", "judge=llama70b-8bit", "hardware=4xA100-40GB")
    assert "--gres" not in gen and "--gres=gpu:3" in jud
    _, (_, hf, _) = judge_line("judge=gemma3-27b", "hardware=4xRTX4090-24GB")
    _, (_, vllm, _) = judge_line("judge=gemma3-27b", "hardware=4xRTX4090-24GB", "judge.engine=vllm")
    assert "--gres=gpu:3" in hf and "--gres=gpu:4" in vllm
    _, (_, vllm, _) = judge_line("judge=llama70b", "hardware=8xH100-80GB", "slurm.judge_gpus=8", "judge.engine=vllm")
    assert "--gres=gpu:8" in vllm and "replicas" not in vllm  # vLLM's own data parallelism fills the task's GPUs
    out = run_cli("stage=submit", "slurm.dry_run=true", "judge=gemma3-27b", "hardware=3xRTX3090-24GB",
                  "judge.engine=vllm", f"runs_dir={tmp_path}/runs", cwd=tmp_path)
    line = one_error_line(out)
    assert out.returncode == 2 and "divides its 32 attention heads, and none from 3 to 3 does" in line
    assert not (tmp_path / "runs").exists()


def test_hydra_multirun_through_the_submitit_launcher(cluster, tmp_path, model_dir):
    """The shipped conf/hydra/launcher/slurm.yaml: a two-value sweep becomes two SLURM jobs, Hydra waits for both."""
    out = run_cli("-m", "stage=generate", "dataset.limit=4", "run_id=sweep-a,sweep-b", f"runs_dir={tmp_path}/runs",
                  "progress=false", "threads=1", "hydra/launcher=slurm", "hydra.launcher.partition=debug",
                  "hydra.launcher.gpus_per_node=0", "hydra.launcher.mem_gb=2", "hydra.launcher.cpus_per_task=1",
                  f"hydra.sweep.dir={tmp_path}/multirun", cwd=tmp_path, env=cluster.env)
    assert out.returncode == 0, out.stderr[-3000:]
    for run in ("sweep-a", "sweep-b"):  # whole runs: a sweep's array index is not mistaken for a data shard
        manifest = json.loads((tmp_path / "runs" / run / "generate/manifest.json").read_text())
        assert manifest["records"] == 4 and manifest["shard"]["count"] == 1
        assert manifest["slurm"]["SLURM_JOB_ID"]
