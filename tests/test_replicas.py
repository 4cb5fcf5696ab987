"""replicas.py and replica_runs.py: several copies of the judge in one stage=judge. The grouping of GPUs (pure),
the decision on declared nodes (meta-device plans, no weights), the replicas' command line; then real replicas of the
embedded judge on the CPU: the same verdicts as one copy, a replica killed mid-way and the same command resuming only
its share, the merge's checks, and replicas inside an array task."""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from pipeline import judge, merge, replica_runs, replicas
from pipeline.checks import check
from pipeline.errors import PipelineError
from pipeline.hardware import Hardware, from_profile
from pipeline.placement import plan_for
from pipeline.runs import StageDir
from pipeline.shards import Shard

from conftest import copy_run, make_cfg, one_error_line, read_jsonl, run_cli


# ------------------------------------------------------------------------------------------------- pure

@pytest.mark.parametrize("plan_gpus, expected", [
    (2, [[0, 1], [2, 3], [4, 5], [6, 7]]),
    (1, [[i] for i in range(8)]),
    (3, [[0, 1, 2], [3, 4, 5]]),
    (8, [list(range(8))]),
])
def test_auto_makes_as_many_whole_groups_as_fit(plan_gpus, expected, caplog):
    with caplog.at_level(logging.INFO, logger="pipeline.replicas"):
        assert replicas.groups(plan_gpus, list(range(8)), "auto") == expected
    if plan_gpus == 3:  # two GPUs are left over, and the log says so
        assert "2 replicas x 3 GPUs: [0,1,2] [3,4,5]; 2 GPUs unused (6,7)" in caplog.text
    assert replicas.groups(plan_gpus, list(range(8)), 1) == expected[:1]


def test_more_replicas_than_fit_are_refused_naming_how_many_fit():
    assert replicas.groups(2, list(range(8)), 3) == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(PipelineError, match=r"replicas=5: each copy of the judge needs 2 GPUs and 8 GPUs are "
                                            r"visible, so at most 4 replicas fit"):
        replicas.groups(2, list(range(8)), 5)
    with pytest.raises(PipelineError, match="must be auto or a whole number"):
        replicas.groups(1, [0], "many")


def test_on_the_cpu_auto_is_one_copy_and_n_is_n_processes_sharing_the_threads():
    assert replicas.groups(0, [], "auto") == [[]]
    assert replicas.groups(0, [], 3) == [[], [], []]
    assert replicas.threads_per_replica(8, 3) == 2 and replicas.threads_per_replica(1, 4) == 1
    assert replicas.threads_per_replica(None, 1) == replicas.cpu_threads()
    assert replicas.describe([[], []], 4) == "2 replicas on the CPU, 4 threads each"


@pytest.mark.parametrize("value, parsed", [("auto", "auto"), (2, 2), ("3", 3), (0, None), (-1, None), (True, None),
                                           ("many", None), (1.5, None)])
def test_the_setting_is_auto_or_a_whole_number(value, parsed, tmp_path):
    assert replicas.parse_requested(value) == parsed
    if parsed is None:
        with pytest.raises(PipelineError, match="judge.placement.replicas=.* must be auto or a whole number"):
            check(make_cfg(tmp_path, f"judge.placement.replicas={str(value).lower()}"))


def test_replicas_of_an_array_shard_are_global_shards_holding_exactly_its_ids():
    ids = [f"q{i:03d}" for i in range(23)]
    for shard in (Shard(0, 1), Shard(1, 3)):
        parts = replicas.replica_shards(shard, 4)
        assert [p.count for p in parts] == [shard.count * 4] * 4
        chosen = [p.select(ids) for p in parts]
        assert sorted(sum(chosen, [])) == shard.select(ids)  # together, exactly the shard's ids, each once
    assert replicas.replica_shards(Shard(1, 3), 2) == [Shard(1, 6), Shard(4, 6)]


def test_each_group_is_named_in_the_variable_this_process_was_given():
    assert replicas.device_tokens("cuda", 4, {}) == ("CUDA_VISIBLE_DEVICES", ["0", "1", "2", "3"])
    assert replicas.device_tokens("cuda", 4, {"CUDA_VISIBLE_DEVICES": "3,5,6,7"})[1] == ["3", "5", "6", "7"]
    uuids = "GPU-a1,GPU-b2"
    assert replicas.device_tokens("cuda", 2, {"CUDA_VISIBLE_DEVICES": uuids})[1] == ["GPU-a1", "GPU-b2"]
    assert replicas.device_tokens("rocm", 2, {"HIP_VISIBLE_DEVICES": "4,5"}) == ("HIP_VISIBLE_DEVICES", ["4", "5"])


def test_a_replica_repeats_the_command_line_with_its_own_shard_threads_and_one_copy(tmp_path):
    parent = ["stage=judge", "run_id=latest", "judge=llama70b", "judge.placement.replicas=4", "threads=8",
              "shard.count=1", "overwrite=true", "progress=true", "+meta.purpose=x", "hydra.verbose=true",
              "judge.batch_size=4", "judge.placement.gpus=4"]
    got = replica_runs.child_overrides(parent, tmp_path / "runs/r1", str(tmp_path / "runs"), Shard(1, 4), 2)
    assert got == ["stage=judge", "judge=llama70b", "+meta.purpose=x", "judge.batch_size=4", "run_id=r1",
                   f"runs_dir={tmp_path / 'runs'}", "shard.index=1", "shard.count=4", "judge.placement.replicas=1",
                   "judge.placement.gpus=null", "threads=2", "progress=false"]
    assert replica_runs.hydra_value("/a b/it's") == "'/a b/it\\'s'"


def test_replicas_are_refused_when_their_command_line_would_give_another_config(tmp_path):
    run_dir = tmp_path / "runs/r1"
    cfg = make_cfg(tmp_path / "runs", "run_id=r1", "judge.batch_size=4", "judge.placement.replicas=2")
    with pytest.raises(PipelineError, match=r"would not run with this config.*judge.batch_size: 4 -> 32"):
        replica_runs.check_reproduces(cfg, run_dir,
                                      replica_runs.child_overrides([], run_dir, cfg.runs_dir, Shard(0, 2), 1))
    same = replica_runs.child_overrides(["judge.batch_size=4"], run_dir, cfg.runs_dir, Shard(0, 2), 1)
    replica_runs.check_reproduces(cfg, run_dir, same)


# ------------------------------------------------------------------------------------- declared nodes

def stage_job(tmp_path, sharded=None):
    shard = sharded or Shard(0, 1)
    return SimpleNamespace(sharded=shard.count > 1, shard=shard, run_dir=tmp_path / "run",
                           root=StageDir(tmp_path / "run/judge/j", "verdicts.jsonl"))


@pytest.mark.parametrize("preset, described", [
    ("llama70b", "4 replicas x 2 GPUs: [0,1] [2,3] [4,5] [6,7]"),  # bf16: 2 x 80 GiB a copy
    ("llama70b-8bit", "8 replicas x 1 GPU: [0] [1] [2] [3] [4] [5] [6] [7]"),
])
def test_a_node_of_8_h100s_is_split_into_whole_plans(preset, described, tmp_path):
    cfg = make_cfg(tmp_path, f"judge={preset}", "hardware=8xH100-80GB")
    hardware = from_profile(cfg.hardware)
    grouping = replicas.decide(cfg, stage_job(tmp_path), hardware, plan_for(cfg.judge, hardware))
    assert grouping.describe() == described
    per = len(grouping.groups[0])
    assert grouping.plan.fits and len(grouping.plan.rows) == per  # the plan of one copy, on its group's GPUs
    assert grouping.record()["cuda_visible_devices"][1] == ",".join(str(per + i) for i in range(per))
    assert grouping.record()["count"] == 8 // per
    # auto inside an array task: one copy, as without replicas; an explicit count splits the task's shard
    assert replicas.decide(cfg, stage_job(tmp_path, Shard(1, 4)), hardware, plan_for(cfg.judge, hardware)) is None
    cfg2 = make_cfg(tmp_path, f"judge={preset}", "hardware=8xH100-80GB", "judge.placement.replicas=2")
    assert replicas.decide(cfg2, stage_job(tmp_path, Shard(1, 4)), hardware, plan_for(cfg.judge, hardware)).count == 2


def test_a_config_the_command_line_does_not_give_is_one_copy_under_auto_and_refused_for_n(tmp_path):
    """judge.run called from Python with values no command line carries: the replicas could not repeat them."""
    cfg = make_cfg(tmp_path, "judge=llama70b-8bit", "hardware=8xH100-80GB")
    hardware = from_profile(cfg.hardware)
    plan = plan_for(cfg.judge, hardware)
    assert replicas.decide(cfg, stage_job(tmp_path), hardware, plan).count == 8
    assert replica_runs.choose(cfg, stage_job(tmp_path), hardware, plan) is None
    cfg = make_cfg(tmp_path, "judge=llama70b-8bit", "hardware=8xH100-80GB", "judge.placement.replicas=2")
    with pytest.raises(PipelineError, match=r"would not run with this config: their command line gives other "
                                            r"values .*judge.batch_size: 16 -> 32"):
        replica_runs.choose(cfg, stage_job(tmp_path), hardware, plan)


def test_replicas_split_only_the_gpus_judge_placement_gpus_allows(tmp_path):
    cfg = make_cfg(tmp_path, "judge=llama70b-8bit", "hardware=8xH100-80GB", "judge.placement.gpus=4")
    hardware = from_profile(cfg.hardware)
    grouping = replicas.decide(cfg, stage_job(tmp_path), hardware, plan_for(cfg.judge, hardware))
    assert grouping.describe() == "4 replicas x 1 GPU: [0] [1] [2] [3]"


def test_a_judge_that_needs_three_of_four_gpus_stays_one_copy_on_all_of_them(tmp_path):
    cfg = make_cfg(tmp_path, "judge=llama70b-8bit", "hardware=4xA100-40GB")
    hardware = from_profile(cfg.hardware)
    assert replicas.decide(cfg, stage_job(tmp_path), hardware, plan_for(cfg.judge, hardware)) is None
    cfg = make_cfg(tmp_path, "judge=llama70b-8bit", "hardware=4xA100-40GB", "judge.placement.replicas=2")
    with pytest.raises(PipelineError, match="needs 3 GPUs and 4 GPUs are visible, so at most 1 replica fits"):
        replicas.decide(cfg, stage_job(tmp_path), hardware, plan_for(cfg.judge, hardware))


def test_shards_of_another_count_already_there_are_refused_or_left_to_one_copy(tmp_path):
    cpu = Hardware("cpu", [], 64 << 30, "declared", "none")
    job = stage_job(tmp_path)
    (job.root.path / "shards/00000-of-00003").mkdir(parents=True)
    cfg = make_cfg(tmp_path, "judge.placement.replicas=2")
    plan = plan_for(cfg.judge, cpu)
    with pytest.raises(PipelineError, match=r"already holds shards of 3 .* would write shards of 2.*"
                                            r"judge.placement.replicas=3"):
        replicas.decide(cfg, job, cpu, plan)
    assert replicas.decide(make_cfg(tmp_path, "judge.placement.replicas=3"), job, cpu, plan).count == 3
    assert replicas.decide(make_cfg(tmp_path), job, cpu, plan) is None  # auto on the CPU: one copy
    small = Hardware("cpu", [], 3 << 30, "declared", "none")  # a copy plans ~2.4 GiB: two do not fit in 3 GiB
    with pytest.raises(PipelineError, match="2 copies of the judge on the CPU need .* GiB of RAM"):
        replicas.decide(cfg, stage_job(tmp_path / "other"), small, plan_for(cfg.judge, small))


# ------------------------------------------------------------------------------ real replicas on the CPU

COMMAND = ["stage=judge", "run_id=copy", "judge.placement.replicas=2", "judge.batch_size=1", "progress=false"]


def wait_for(condition, proc, what, timeout=300):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert proc.poll() is None, f"the parent ended before {what}: {proc.returncode}"
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


@pytest.fixture(scope="module")
def replica_run(judged_run, tmp_path_factory):
    """The shared run's answers judged by 2 replicas on a copy: replica 1 killed (SIGKILL) once it has written a
    verdict, then the same command run again. What each step left, for the tests below."""
    base = tmp_path_factory.mktemp("replicas")
    run = copy_run(judged_run, base)
    shutil.rmtree(run / "judge/smollm2-135m")  # the fixture's own one-copy verdicts stay in judged_run
    stage = run / "judge/smollm2-135m"
    command = [*COMMAND, f"runs_dir={run.parent}"]
    err_path = base / "first.err"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", *command], cwd=base, stdout=subprocess.PIPE,
                                stderr=err, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        pid = int(wait_for(lambda: (re.search(r"replica 1 of 2 \(shard 00001-of-00002\): pid (\d+)",
                                              err_path.read_text()) or [None, None])[1], proc, "replica 1 started"))
        partial = stage / "shards/00001-of-00002/verdicts.jsonl.partial"
        wait_for(lambda: partial.is_file() and partial.read_bytes().count(b"\n") >= 1, proc, "replica 1 wrote")
        os.kill(pid, signal.SIGKILL)  # mid-way: one or a few of its 8 verdicts written
        out, _ = proc.communicate(timeout=300)
    first = subprocess.CompletedProcess(proc.args, proc.returncode, out, err_path.read_text())
    kept = partial.read_bytes().count(b"\n")
    shard0 = stage / "shards/00000-of-00002"
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in shard0.iterdir() if p.is_file()}
    second = run_cli(*command, cwd=base)
    return SimpleNamespace(run=run, stage=stage, first=first, second=second, kept=kept, shard0=shard0,
                           before=before, judged_run=judged_run)


@pytest.mark.slow
@pytest.mark.integration
def test_a_killed_replica_fails_the_stage_in_one_line_and_keeps_the_finished_share(replica_run):
    r = replica_run
    line = one_error_line(r.first)
    assert "replica 1 of 2 (shard 00001-of-00002): killed by SIGKILL" in line
    assert "00001-of-00002/replica.log" in line
    assert "verdicts are kept (00000-of-00002)" in line and "resumes only the unfinished share (replica 1)" in line
    assert "replica 0 of 2 (shard 00000-of-00002) finished: 8 verdicts" in r.first.stderr
    assert 1 <= r.kept < 8


@pytest.mark.slow
@pytest.mark.integration
def test_the_same_command_resumes_only_the_killed_replica_and_merges_one_copys_verdicts(replica_run):
    r = replica_run
    assert r.second.returncode == 0, r.second.stderr[-3000:]
    assert "replica 0 of 2 (shard 00000-of-00002): already finished (8 verdicts), kept" in r.second.stderr
    assert "[replica 0]" not in r.second.stderr  # no process was started for it
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in r.shard0.iterdir() if p.is_file()}
    assert after == r.before  # replica 0's shard untouched, byte for byte and by mtime
    shard1 = json.loads((r.stage / "shards/00001-of-00002/manifest.json").read_text())
    assert shard1["resumed_with"] == r.kept and shard1["replica"]["index"] == 1 and shard1["config"]["threads"] >= 1
    manifest = json.loads((r.stage / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["records"] == 16
    assert manifest["merged_from"] == {"shard_count": 2, "shards": ["00000-of-00002", "00001-of-00002"]}
    assert manifest["replicas"]["count"] == 2 and manifest["replicas"]["groups"] == []
    assert manifest["replicas"]["threads"] == replicas.threads_per_replica(None, 2)
    assert json.loads((r.stage / "plan.json").read_text())["replicas"]["count"] == 2
    assert (r.stage / "samples.csv").is_file() and (r.stage / "summary.csv").is_file()
    mine = {v["id"]: v for v in read_jsonl(r.stage / "verdicts.jsonl")}
    one = {v["id"]: v for v in read_jsonl(r.judged_run / "judge/smollm2-135m/verdicts.jsonl")}
    assert sorted(mine) == sorted(one)
    for rid, v in one.items():  # the same verdicts; P(correct) up to its last rounded digit (other batches)
        assert mine[rid]["verdict"] == v["verdict"] and mine[rid]["reply"] == v["reply"], rid
        assert mine[rid]["p_correct"] == pytest.approx(v["p_correct"], abs=1e-5), rid
    again = run_cli(*COMMAND, f"runs_dir={r.run.parent}", cwd=r.run.parent.parent)  # finished: nothing to do
    assert again.returncode == 0 and "[replica" not in again.stderr, again.stderr[-2000:]


@pytest.mark.slow
def test_shards_of_replicas_with_other_settings_are_refused_as_array_shards_are(replica_run, tmp_path):
    def broken(name):
        dest = tmp_path / name / "copy"
        shutil.copytree(replica_run.run, dest)
        for f in ("verdicts.jsonl", "manifest.json"):
            (dest / "judge/smollm2-135m" / f).unlink()
        return dest

    run = broken("made")  # a replica whose finished shard says other settings: the merge refuses
    m = run / "judge/smollm2-135m/shards/00001-of-00002/manifest.json"
    manifest = json.loads(m.read_text())
    manifest["fingerprint"]["judge"]["threshold"] = 0.7
    m.write_text(json.dumps(manifest))
    with pytest.raises(PipelineError, match=r"shard 00001-of-00002 was made with other settings than shard "
                                            r"00000-of-00002 \(judge.threshold: 0.5 -> 0.7\); refusing to merge"):
        merge.merge_run(run)

    run = broken("started")  # a replica's shard started with other settings: the same command stops at once
    s = run / "judge/smollm2-135m/shards/00001-of-00002/stage.json"
    started = json.loads(s.read_text())
    started["fingerprint"]["judge"]["threshold"] = 0.7
    s.write_text(json.dumps(started))
    with pytest.raises(PipelineError, match=r"shard 00001-of-00002 was started with other settings"):
        judge.run(make_cfg(run.parent, "run_id=copy", "judge.placement.replicas=2"))


@pytest.mark.slow
@pytest.mark.integration
def test_replicas_inside_an_array_task_write_global_shards_of_its_share(judged_run, tmp_path):
    run = copy_run(judged_run, tmp_path)
    shutil.rmtree(run / "judge/smollm2-135m")
    out = run_cli("stage=judge", "run_id=copy", f"runs_dir={run.parent}", "shard.index=1", "shard.count=2",
                  "judge.placement.replicas=2", "progress=false", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    stage = run / "judge/smollm2-135m"
    assert sorted(p.name for p in (stage / "shards").iterdir()) == ["00001-of-00004", "00003-of-00004"]
    ids = [g["id"] for g in read_jsonl(run / "generate/generations.jsonl")]
    got = []
    for name in ("00001-of-00004", "00003-of-00004"):
        manifest = json.loads((stage / "shards" / name / "manifest.json").read_text())
        assert manifest["status"] == "complete" and manifest["replica"]["of_shard"] == "00001-of-00002"
        got += [v["id"] for v in read_jsonl(stage / "shards" / name / "verdicts.jsonl")]
    assert sorted(got) == Shard(1, 2).select(ids)  # exactly the task's share, each id once
    assert not (stage / "manifest.json").exists()  # the other task's shards are missing: stage=report merges
    assert "stage=report merges" in out.stderr
