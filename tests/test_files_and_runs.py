"""Durable files, run ids, the latest run, and stage state (finished, unfinished, replaced)."""

import json
import os

import pytest

from pipeline.errors import PipelineError
from pipeline.files import JsonlAppender, repair_jsonl_tail, write_atomic
from pipeline.runs import StageDir, check_run_id, create_run, list_runs, resolve_run


def test_write_atomic_replaces_whole_file_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "summary.csv"
    write_atomic(target, "old\n")
    write_atomic(target, "new\n")
    assert target.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.csv"]


def test_torn_last_line_is_cut_off_and_earlier_records_kept(tmp_path):
    path = tmp_path / "records.jsonl.partial"
    with JsonlAppender(path) as out:
        out.append([{"schema": "generation/1", "id": "a"}, {"schema": "generation/1", "id": "b"}])
    with open(path, "a") as f:
        f.write('{"id": "c", "predic')  # a writer killed mid-line
    assert repair_jsonl_tail(path) == [{"schema": "generation/1", "id": "a"}, {"schema": "generation/1", "id": "b"}]
    assert path.read_text() == '{"schema": "generation/1", "id": "a"}\n{"schema": "generation/1", "id": "b"}\n'
    with JsonlAppender(path) as out:  # appending after the repair gives clean lines
        out.append([{"schema": "generation/1", "id": "c"}])
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["a", "b", "c"]


def test_damage_before_the_last_line_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "records.jsonl.partial"
    path.write_text('{"schema": "generation/1", "id": "a"}\nGARBAGE\n{"schema": "generation/1", "id": "c"}\n')
    with pytest.raises(PipelineError, match=r"line 2"):
        repair_jsonl_tail(path)


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "a\\b", "", ".hidden", "latest", "x" * 200, "a b"])
def test_run_ids_that_could_escape_runs_are_refused(bad):
    with pytest.raises(PipelineError, match="not allowed"):
        check_run_id(bad)


def test_unknown_run_lists_existing_runs_and_latest_points_at_newest(tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(PipelineError, match="no runs"):
        resolve_run(runs, None)
    create_run(runs, "first")
    create_run(runs, "second")
    assert list_runs(runs) == ["first", "second"]
    assert os.readlink(runs / "latest") == "second"
    assert resolve_run(runs, "latest").name == "second"
    assert resolve_run(runs, None).name == "second"
    with pytest.raises(PipelineError, match=r"unknown run_id='third'.*second, first"):
        resolve_run(runs, "third")


def finished_stage(tmp_path):
    run_dir = create_run(tmp_path / "runs", "r1")
    stage = StageDir(run_dir / "generate", "generations.jsonl")
    stage.begin({"k": 1}, overwrite=False, config_yaml="k: 1\n", run_dir=run_dir)
    with stage.appender() as out:
        out.append([{"schema": "generation/1", "id": "a"}])
    stage.finish({"stage": "generate"})
    return run_dir, stage


def test_a_finished_stage_is_never_overwritten_silently(tmp_path):
    run_dir, stage = finished_stage(tmp_path)
    before = {p.name: p.read_bytes() for p in stage.path.iterdir()}
    assert stage.begin({"k": 1}, overwrite=False, config_yaml="k: 1\n", run_dir=run_dir) is None  # nothing to do
    with pytest.raises(PipelineError, match=r"already holds a finished stage made with other settings \(k: 1 -> 2\)"
                                            r".*overwrite=true"):
        stage.begin({"k": 2}, overwrite=False, config_yaml="", run_dir=run_dir)
    assert {p.name: p.read_bytes() for p in stage.path.iterdir()} == before
    assert stage.is_complete() and stage.read_records() == [{"schema": "generation/1", "id": "a"}]


def test_killed_between_publishing_records_and_manifest_resumes_without_redoing(tmp_path):
    run_dir = create_run(tmp_path / "runs", "r1")
    stage = StageDir(run_dir / "generate", "generations.jsonl")
    stage.begin({"k": 1}, False, "", run_dir)
    with stage.appender() as out:
        out.append([{"schema": "generation/1", "id": "a"}, {"schema": "generation/1", "id": "b"}])
    os.replace(stage.partial_path, stage.records_path)  # the rename of finish(), then a crash before the manifest
    assert not stage.is_complete()
    assert [r["id"] for r in stage.begin({"k": 1}, False, "", run_dir)] == ["a", "b"]


def test_overwrite_moves_old_results_aside(tmp_path):
    run_dir, stage = finished_stage(tmp_path)
    (run_dir / "judge" / "j").mkdir(parents=True)
    stage.begin({"k": 2}, overwrite=True, config_yaml="", run_dir=run_dir, also_replace=(run_dir / "judge",))
    moved = list((run_dir / "replaced").glob("*/generate/generations.jsonl"))
    assert len(moved) == 1 and moved[0].read_text() == '{"schema": "generation/1", "id": "a"}\n'
    assert list((run_dir / "replaced").glob("*/judge/j"))
    assert not stage.is_complete() and not (run_dir / "judge").exists()


def test_unfinished_stage_resumes_only_with_the_same_settings(tmp_path):
    run_dir = create_run(tmp_path / "runs", "r1")
    stage = StageDir(run_dir / "generate", "generations.jsonl")
    stage.begin({"generator": {"max_new_tokens": 32}}, False, "", run_dir)
    with stage.appender() as out:
        out.append([{"schema": "generation/1", "id": "a"}, {"schema": "generation/1", "id": "b"}])
    assert not stage.is_complete() and not stage.records_path.exists()  # nothing looks finished
    with pytest.raises(PipelineError, match=r"generator.max_new_tokens: 32 -> 16"):
        stage.begin({"generator": {"max_new_tokens": 16}}, False, "", run_dir)
    done = stage.begin({"generator": {"max_new_tokens": 32}}, False, "", run_dir)
    assert [r["id"] for r in done] == ["a", "b"]
