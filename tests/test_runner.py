"""runner.py: the shared stage life cycle (lock, begin or resume, batches, graceful stop, finish), on real files."""

import json
import logging
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
    with job_for(tmp_path, shard=Shard(1, 2)).attempt() as attempt:  # no checksum: cut off as a batch in flight
        assert [r["id"] for r in attempt.done] == [attempt.job.assigned[0]]
    stage_json = job.stage.path / "stage.json"  # a stage begun by a version that kept no checksums: refused
    stage_json.write_text(json.dumps({k: v for k, v in json.loads(stage_json.read_text()).items() if k != "checksums"}))
    job.stage.sums_path.unlink()
    with open(job.stage.partial_path, "a") as f:
        f.write(json.dumps(GenerationRow.answer("q0", "?", ["a"], "a").to_json()) + "\n")
    with pytest.raises(PipelineError, match=r"ids this stage does not cover \(q0\)"):
        with job_for(tmp_path, shard=Shard(1, 2)).attempt():
            pass


def write_all(job):
    with job.attempt() as attempt:
        attempt.write((attempt.todo[i:i + 4] for i in range(0, 10, 4)), rows_of, desc="t", unit="q")
        attempt.finish("generate", GenerationRow.SCHEMA, {})


def test_a_failure_after_the_records_are_published_keeps_them_and_the_rerun_only_publishes(tmp_path, monkeypatch):
    import pipeline.runs

    real = pipeline.runs.write_json

    def full_disk_at_the_manifest(path, obj):
        if path.name == "manifest.json":
            raise PipelineError(f"{path}: the disk is full")
        real(path, obj)

    monkeypatch.setattr(pipeline.runs, "write_json", full_disk_at_the_manifest)
    job = job_for(tmp_path)
    with pytest.raises(PipelineError, match="the disk is full"):
        write_all(job)
    assert (job.stage.path / "stage.json").is_file() and job.stage.records_path.is_file()
    monkeypatch.setattr(pipeline.runs, "write_json", real)
    again = job_for(tmp_path)
    with again.attempt() as attempt:
        assert attempt.todo == [] and sorted(r["id"] for r in attempt.done) == sorted(IDS)  # nothing to redo
        attempt.finish("generate", GenerationRow.SCHEMA, {})
    assert again.stage.is_complete() and again.stage.manifest()["resumed_with"] == 10
    assert not again.stage.sums_path.exists()


def test_an_error_after_the_stage_finished_never_touches_its_files(tmp_path):
    job = job_for(tmp_path)
    with pytest.raises(RuntimeError, match="report"):
        with job.attempt() as attempt:
            attempt.write([attempt.todo], rows_of, desc="t", unit="q")
            attempt.finish("generate", GenerationRow.SCHEMA, {})
            raise RuntimeError("the report failed")
    assert job.stage.is_complete() and len(job.stage.read_records()) == 10
    assert {"stage.json", "config.yaml", "manifest.json"} <= {p.name for p in job.stage.path.iterdir()}


def test_a_first_stage_that_fails_before_its_first_record_leaves_no_run_and_keeps_latest(tmp_path):
    from pipeline.runs import find_run, make_run

    runs = tmp_path / "runs"
    create_run(runs, "earlier")
    run_dir, new = make_run(runs, "r")
    assert new
    job = StageJob(make_cfg(runs, "run_id=r"), run_dir, StageDir(run_dir / "generate", "generations.jsonl"),
                   Shard(0, 1), {"generator": {"model": "m"}}, IDS, new_run=True, points_latest=True)
    with pytest.raises(RuntimeError):
        with job.attempt():
            raise RuntimeError("the model did not load")
    assert not run_dir.exists() and os.readlink(runs / "latest") == "earlier"
    assert find_run(runs, None).name == "earlier"
    run_dir, new = make_run(runs, "r")  # the corrected command: a new run, which becomes the latest at its first record
    job = StageJob(make_cfg(runs, "run_id=r"), run_dir, StageDir(run_dir / "generate", "generations.jsonl"),
                   Shard(0, 1), {"generator": {"model": "fixed"}}, IDS, new_run=new, points_latest=True)
    write_all(job)
    assert os.readlink(runs / "latest") == "r"


def test_a_judge_that_fails_to_load_leaves_nothing_in_the_run(tmp_path):
    runs = tmp_path / "runs"
    run_dir = create_run(runs, "r")
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    stage = StageDir(run_dir / "judge" / "big", "verdicts.jsonl")
    job = StageJob(make_cfg(runs, "run_id=r"), run_dir, stage, Shard(0, 1), {"judge": {"model": "m"}}, IDS)
    with pytest.raises(RuntimeError):
        with job.attempt():
            (stage.path / "plan.json").write_text("{}")
            logging.getLogger("pipeline.judge").info("loading")
            raise RuntimeError("the judge did not load")
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before


def stopped_after_two_batches(tmp_path):
    job = job_for(tmp_path)
    batches = iter([IDS[:4], IDS[4:8], IDS[8:]])

    def stop_in_second(batch):
        if batch == IDS[4:8]:
            os.kill(os.getpid(), signal.SIGTERM)
        return rows_of(batch)

    with pytest.raises(StageStopped):
        with job.attempt() as attempt:
            attempt.write(batches, stop_in_second, desc="t", unit="q")
    return job


def test_an_unfinished_stage_edited_by_hand_is_refused_naming_the_ids(tmp_path):
    job = stopped_after_two_batches(tmp_path)
    lines = job.stage.partial_path.read_text().splitlines(keepends=True)
    lines[5] = lines[5].replace('"prediction": "a"', '"prediction": "edited"')
    job.stage.partial_path.write_text("".join(lines))
    with pytest.raises(PipelineError, match=r"1 records differ from what the stage wrote \(ids 'q5'\).*edited by hand"):
        with job_for(tmp_path).attempt():
            pass
    assert job.stage.partial_path.read_text().count("edited") == 1  # refused, not repaired


def test_a_finished_file_restored_as_unfinished_is_refused(tmp_path):
    job = job_for(tmp_path)
    write_all(job)
    os.replace(job.stage.records_path, job.stage.partial_path)  # restored by hand, the manifest deleted
    job.stage.manifest_path.unlink()
    with pytest.raises(PipelineError, match=r"checksums of its records .* are missing"):
        with job_for(tmp_path).attempt():
            pass


def test_records_cut_by_hand_and_a_batch_without_checksums(tmp_path):
    job = stopped_after_two_batches(tmp_path)
    raw = job.stage.partial_path.read_bytes()
    job.stage.partial_path.write_bytes(raw[:raw.rindex(b"\n", 0, len(raw) - 1) + 1])  # the last record removed
    with pytest.raises(PipelineError, match=r"1 records written by the stage are no longer there \(ids 'q7'\)"):
        with job_for(tmp_path).attempt():
            pass
    job.stage.partial_path.write_bytes(raw)
    sums = job.stage.sums_path.read_bytes()
    job.stage.sums_path.write_bytes(sums[:sums.rindex(b"\n", 0, len(sums) - 1) + 1])  # died before its checksum
    with job_for(tmp_path).attempt() as attempt:
        assert [r["id"] for r in attempt.done] == IDS[:7] and attempt.todo == IDS[7:]
