"""Shards, merges, and stopping: array-task behaviour checked without SLURM (real model, real processes)."""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from pipeline import generate, judge, merge, report
from pipeline.errors import PipelineError
from pipeline.shards import Shard, from_slurm, this_shard

from conftest import make_cfg, read_jsonl, run_cli


def test_a_shard_is_a_balanced_deterministic_slice_by_id():
    ids = [f"q{i:03d}" for i in range(10)]
    slices = [Shard(i, 4).select(ids) for i in range(4)]
    assert sorted(sum(slices, [])) == sorted(ids)  # every id in exactly one shard
    assert [len(s) for s in slices] == [3, 3, 2, 2]
    shuffled = ids[:]
    random.Random(0).shuffle(shuffled)
    assert [Shard(i, 4).select(shuffled) for i in range(4)] == slices  # whatever the order of the data
    assert Shard(0, 1).select(shuffled) == sorted(ids)


def test_shard_comes_from_the_slurm_array_unless_given():
    env = {"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "4",
           "SLURM_ARRAY_TASK_STEP": "2"}  # --array=4-8:2 -> tasks 4, 6, 8
    assert from_slurm(env) == Shard(1, 3)
    assert from_slurm({}) is None
    assert from_slurm({**env, "SUBMITIT_EXECUTOR": "slurm"}) is None  # a Hydra sweep's array is not a data shard
    unset = make_cfg("/tmp/x").shard
    assert this_shard(unset, env) == Shard(1, 3)
    assert this_shard(unset, {}) == Shard(0, 1)
    given = make_cfg("/tmp/x", "shard.index=0", "shard.count=2").shard
    assert this_shard(given, env) == Shard(0, 2)


@pytest.mark.parametrize("index, count", [(3, 3), (-1, 2), (0, 0)])
def test_shard_index_out_of_range(index, count):
    with pytest.raises(PipelineError, match="must be in 0..count-1"):
        this_shard(make_cfg("/tmp/x", f"shard.index={index}", f"shard.count={count}").shard, {})


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory, model_dir):
    """9 questions: generate in 3 shards, judge in 2 shards, as array tasks would (each in its own folder)."""
    runs = tmp_path_factory.mktemp("runs")
    for i in range(3):
        generate.run(make_cfg(runs, "run_id=sh", "dataset.limit=9", f"shard.index={i}", "shard.count=3"))
    for i in range(2):
        judge.run(make_cfg(runs, "run_id=sh", f"shard.index={i}", "shard.count=2"))
    return runs / "sh"


@pytest.mark.slow
def test_shards_write_only_their_own_folders_and_report_merges_them(sharded_run):
    gen = sharded_run / "generate"
    assert sorted(p.name for p in (gen / "shards").iterdir()) == ["00000-of-00003", "00001-of-00003", "00002-of-00003"]
    assert not (gen / "generations.jsonl").exists()  # no task wrote the shared file
    per_shard = [read_jsonl(gen / "shards" / n / "generations.jsonl") for n in sorted(os.listdir(gen / "shards"))]
    assert [len(x) for x in per_shard] == [3, 3, 3]
    report.run(make_cfg(sharded_run.parent, "run_id=sh"))
    merged = read_jsonl(gen / "generations.jsonl")
    assert sorted(r["id"] for r in merged) == sorted(r["id"] for x in per_shard for r in x)
    assert [r["index"] for r in merged] == list(range(9))
    manifest = json.loads((gen / "manifest.json").read_text())
    assert manifest["merged_from"]["shard_count"] == 3 and manifest["records"] == 9
    samples = pd.read_csv(sharded_run / "judge/smollm2-135m/samples.csv")
    assert len(samples) == 9 and samples["id"].is_unique
    assert json.loads((sharded_run / "judge/smollm2-135m/manifest.json").read_text())["merged_from"]["shard_count"] == 2
    # merging again is a no-op, and a finished shard asked again does nothing
    assert merge.merge_run(sharded_run) == []
    generate.run(make_cfg(sharded_run.parent, "run_id=sh", "dataset.limit=9", "shard.index=1", "shard.count=3"))


def broken_copy(run, tmp_path, name):
    dest = tmp_path / name
    shutil.copytree(run, dest, symlinks=True)
    for p in [dest / "generate/generations.jsonl", dest / "generate/manifest.json"]:
        p.unlink(missing_ok=True)
    return dest / "generate"


@pytest.mark.slow
def test_merge_names_missing_mixed_and_mismatched_shards(sharded_run, tmp_path):
    gen = broken_copy(sharded_run, tmp_path, "missing")
    shutil.rmtree(gen / "shards/00001-of-00003")
    with pytest.raises(PipelineError, match=r"missing 1 shard: 00001-of-00003 \(of 3\)"):
        merge.merge_run(gen.parent)

    gen = broken_copy(sharded_run, tmp_path, "mixed")
    (gen / "shards/00000-of-00002").mkdir()
    with pytest.raises(PipelineError, match=r"mixes shard counts \[2, 3\]"):
        merge.merge_run(gen.parent)

    gen = broken_copy(sharded_run, tmp_path, "settings")
    m = gen / "shards/00002-of-00003/manifest.json"
    manifest = json.loads(m.read_text())
    manifest["fingerprint"]["generator"]["max_new_tokens"] = 99
    m.write_text(json.dumps(manifest))
    with pytest.raises(PipelineError, match=r"shard 00002-of-00003 was made with other settings.*max_new_tokens"):
        merge.merge_run(gen.parent)

    gen = broken_copy(sharded_run, tmp_path, "ids")
    f = gen / "shards/00000-of-00003/generations.jsonl"
    lines = f.read_text().splitlines(keepends=True)
    f.write_text("".join(lines[1:]))  # one id lost after the shard finished: its checksum no longer matches
    with pytest.raises(PipelineError, match=r"00000-of-00003/generations.jsonl is not the file its stage wrote"):
        merge.merge_run(gen.parent)
    m = gen / "shards/00000-of-00003/manifest.json"  # a shard whose own manifest agrees, yet lacks an assigned id
    manifest = json.loads(m.read_text())
    manifest["records_file"].update(records=len(lines) - 1, sha256=hashlib.sha256(f.read_bytes()).hexdigest())
    m.write_text(json.dumps(manifest))
    with pytest.raises(PipelineError, match=r"shard 00000-of-00003: missing ids"):
        merge.merge_run(gen.parent)

    gen = broken_copy(sharded_run, tmp_path, "unfinished")
    (gen / "shards/00001-of-00003/manifest.json").unlink()
    with pytest.raises(PipelineError, match=r"unfinished: 00001-of-00003"):
        merge.merge_run(gen.parent)


def test_overwrite_is_refused_inside_an_array_task(tmp_path):
    with pytest.raises(PipelineError, match="overwrite=true cannot be used by one shard"):
        generate.run(make_cfg(tmp_path, "shard.index=0", "shard.count=2", "overwrite=true"))


# ------------------------------------------------------------------------------------------ stopping

def start_generate(tmp_path, *extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "pipeline", "stage=generate", "run_id=k", f"runs_dir={tmp_path}/runs",
            "progress=false", "dataset.limit=24", "generator.batch_size=2", *extra]
    return subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_lines(path, n, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise TimeoutError(path)


@pytest.mark.slow
@pytest.mark.integration
def test_kill_9_at_a_random_moment_then_rerun_gives_every_id_once(tmp_path, model_dir):
    partial = tmp_path / "runs/k/generate/generations.jsonl.partial"
    proc = start_generate(tmp_path)
    wait_for_lines(partial, 4, proc)
    time.sleep(random.uniform(0, 1.0))  # somewhere in a later batch, or between two
    proc.kill()
    proc.wait()
    before = partial.read_bytes()
    kept = before[: before.rfind(b"\n") + 1].splitlines(keepends=True)  # whole lines at the moment of the kill

    out = run_cli("stage=generate", "run_id=k", f"runs_dir={tmp_path}/runs", "progress=false", "dataset.limit=24",
                  "generator.batch_size=2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    final = (tmp_path / "runs/k/generate/generations.jsonl").read_bytes().splitlines(keepends=True)
    assert final[: len(kept)] == kept  # finished work kept byte for byte, not redone
    ids = [json.loads(x)["id"] for x in final]
    assert len(ids) == 24 and len(set(ids)) == 24
    manifest = json.loads((tmp_path / "runs/k/generate/manifest.json").read_text())
    assert manifest["resumed_with"] == len(kept)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_sigterm_and_sigusr1_finish_the_batch_in_flight_and_stop_cleanly(tmp_path, model_dir, sig):
    partial = tmp_path / "runs/k/generate/generations.jsonl.partial"
    proc = start_generate(tmp_path)
    wait_for_lines(partial, 2, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert f"stopped by {signal.Signals(sig).name}" in err and "resumes" in err
    text = partial.read_text()
    assert text.endswith("\n") and len(text.splitlines()) % 2 == 0  # whole batches only, nothing torn
    assert not (tmp_path / "runs/k/generate/manifest.json").exists()
    out = run_cli("stage=generate", "run_id=k", f"runs_dir={tmp_path}/runs", "progress=false", "dataset.limit=24",
                  "generator.batch_size=2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert len(read_jsonl(tmp_path / "runs/k/generate/generations.jsonl")) == 24
