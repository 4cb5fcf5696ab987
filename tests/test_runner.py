"""runner.py: the shared stage life cycle (lock, begin or resume, batches, graceful stop, finish), on real files."""

import json
import os
import signal

import pytest

from pipeline.errors import PipelineError
from pipeline.interrupts import StageStopped
from pipeline.rows import GenerationRow
from pipeline.runner import StageJob
from pipeline.runs import StageDir, create_run
from pipeline.shards import Shard

from conftest import make_cfg, read_jsonl

IDS = [f"q{i}" for i in range(10)]


def job_for(tmp_path, *overrides, shard=Shard(0, 1), fingerprint=None):
    cfg = make_cfg(tmp_path / "runs", "run_id=r", *overrides)
    run_dir = create_run(tmp_path / "runs", "r")
    return StageJob(cfg, run_dir, StageDir(run_dir / "generate", "generations.jsonl"), shard,
                    fingerprint or {"generator": {"model": "m"}}, IDS)


def rows_of(batch):
    return [GenerationRow.answer(i, f"question {i}?", ["a"], "a", index=IDS.index(i)) for i in batch]


def stop_in_batch(batch):
    os.kill(os.getpid(), signal.SIGTERM)  # as SLURM does: recorded, and acted on before the next batch
    return rows_of(batch)


def test_batches_are_written_then_published_with_the_common_manifest(tmp_path):
    job = job_for(tmp_path)
    assert not job.finished()
    with job.attempt() as attempt:
        assert attempt.todo == IDS and attempt.done == []
        attempt.write((attempt.todo[i:i + 4] for i in range(0, 10, 4)), rows_of, desc="t", unit="q")
        attempt.finish("generate", GenerationRow.SCHEMA, {"extra": 1})
    manifest = job.stage.manifest()
    assert manifest["status"] == "complete" and manifest["records"] == 10 and manifest["extra"] == 1
    assert manifest["shard"] == {"index": 0, "count": 1, "name": "00000-of-00001"} and manifest["resumed_with"] == 0
    assert manifest["config"]["run_id"] == "r" and "versions" in manifest
    assert [r["id"] for r in read_jsonl(job.stage.records_path)] == IDS
    assert job.finished()  # the same settings again: nothing to do
    with pytest.raises(PipelineError, match="other settings"):
        job_for(tmp_path, fingerprint={"generator": {"model": "other"}}).finished()


def test_a_signal_stops_between_batches_and_the_rerun_does_only_the_rest(tmp_path):
    job = job_for(tmp_path)
    with pytest.raises(StageStopped, match="4 of 10 records"):
        with job.attempt() as attempt:
            attempt.write((attempt.todo[i:i + 4] for i in range(0, 10, 4)), stop_in_batch, desc="t", unit="q")
    assert len(read_jsonl(job.stage.partial_path)) == 4 and not job.stage.is_complete()
    again = job_for(tmp_path)
    with again.attempt() as attempt:
        assert [r["id"] for r in attempt.done] == IDS[:4] and attempt.todo == IDS[4:]
        attempt.write([attempt.todo], rows_of, desc="t", unit="q")
        attempt.finish("generate", GenerationRow.SCHEMA, {})
    assert again.stage.manifest()["resumed_with"] == 4
    assert sorted(r["id"] for r in read_jsonl(again.stage.records_path)) == sorted(IDS)


def test_a_failure_before_the_first_record_leaves_nothing_in_the_way(tmp_path):
    job = job_for(tmp_path)
    with pytest.raises(RuntimeError):
        with job.attempt():
            raise RuntimeError("the model did not load")
    assert not (job.stage.path / "stage.json").exists()
    job_for(tmp_path, fingerprint={"generator": {"model": "fixed"}}).finished()  # other settings are not refused


def test_records_for_ids_the_stage_does_not_cover_are_refused(tmp_path):
    job = job_for(tmp_path, shard=Shard(1, 2))
    with pytest.raises(StageStopped):
        with job.attempt() as attempt:
            assert attempt.todo == [i for i in IDS if i in set(sorted(IDS)[1::2])]
            attempt.write([attempt.todo[:1], attempt.todo[1:]], stop_in_batch, desc="t", unit="q")
    with open(job.stage.partial_path, "a") as f:  # an edit adds a record of the other shard
        f.write(json.dumps(GenerationRow.answer("q0", "?", ["a"], "a").to_json()) + "\n")
    with pytest.raises(PipelineError, match=r"ids this stage does not cover \(q0\)"):
        with job_for(tmp_path, shard=Shard(1, 2)).attempt():
            pass
