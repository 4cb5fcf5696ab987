"""runs.py: run ids that cannot escape runs/, the latest run, stage folders (finished, unfinished, replaced, resumed
with the same settings only), and records verified against their manifest whenever they are read."""

import hashlib
import json
import os
from pathlib import Path

import pytest

from pipeline import judge, report
from pipeline.errors import PipelineError
from pipeline.runs import StageDir, check_run_id, create_run, list_runs, find_run

from conftest import copy_run, make_cfg


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "a\\b", "", ".hidden", "latest", "x" * 200, "a b"])
def test_run_ids_that_could_escape_runs_are_refused(bad):
    with pytest.raises(PipelineError, match="not allowed"):
        check_run_id(bad)


def test_unknown_run_lists_existing_runs_and_latest_points_at_newest(tmp_path, caplog):
    runs = tmp_path / "runs"
    with pytest.raises(PipelineError, match="no runs"):
        find_run(runs, None)
    create_run(runs, "first")
    create_run(runs, "second")
    assert list_runs(runs) == ["first", "second"]
    assert os.readlink(runs / "latest") == "second"
    assert find_run(runs, "latest").name == "second"
    caplog.clear()
    with caplog.at_level("INFO", logger="pipeline"):
        assert find_run(runs, None).name == "second"
    assert "no run_id given: run second (" in caplog.text and "pass run_id=<id> for another" in caplog.text
    with pytest.raises(PipelineError, match=r"unknown run_id='third'.*second, first"):
        find_run(runs, "third")


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


# ----------------------------------------------------------------------------------- records verified on read

def rewrite_checksum(stage: Path, records_name: str) -> None:
    """Make a manifest agree with its (edited) records file, as a careless hand-edit of both would."""
    manifest = json.loads((stage / "manifest.json").read_text())
    data = (stage / records_name).read_bytes()
    manifest["records_file"].update(sha256=hashlib.sha256(data).hexdigest(),
                                    records=sum(1 for line in data.splitlines() if line.strip()))
    (stage / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "duplicated", "edited"])
def test_generations_changed_after_the_stage_finished_are_refused(judged_run, tmp_path, damage):
    run = copy_run(judged_run, tmp_path)
    f = run / "generate/generations.jsonl"
    lines = f.read_text().splitlines(keepends=True)
    if damage == "truncated":
        f.write_text("".join(lines[:10]))
    elif damage == "duplicated":
        f.write_text("".join(lines + lines[:2]))
    else:
        record = json.loads(lines[3])
        record["prediction"] = "a better answer, typed in by hand"
        f.write_text("".join(lines[:3] + [json.dumps(record) + "\n"] + lines[4:]))
    cfg = make_cfg(run.parent, "run_id=copy", "judge.name=second-opinion")
    with pytest.raises(PipelineError, match="is not the file its stage wrote"):
        judge.run(cfg)
    with pytest.raises(PipelineError, match="is not the file its stage wrote"):
        report.write(run, "smollm2-135m")
    assert not (run / "judge/second-opinion").exists()


@pytest.mark.slow
def test_duplicate_ids_and_unknown_schemas_are_refused_even_with_a_matching_checksum(judged_run, tmp_path):
    run = copy_run(judged_run, tmp_path)
    f = run / "judge/smollm2-135m/verdicts.jsonl"
    lines = f.read_text().splitlines(keepends=True)
    f.write_text("".join(lines + lines[:1]))
    rewrite_checksum(f.parent, "verdicts.jsonl")
    with pytest.raises(PipelineError, match=r"1 id appear more than once"):
        report.write(run, "smollm2-135m")

    f.write_text("".join(lines[:-1] + [lines[-1].replace('"verdict/2"', '"verdict/9"')]))
    rewrite_checksum(f.parent, "verdicts.jsonl")
    with pytest.raises(PipelineError, match=r"schema this version cannot read \(line 16: 'verdict/9'\)"):
        report.write(run, "smollm2-135m")


@pytest.mark.slow
def test_manifests_record_the_count_and_checksum_of_their_records(judged_run):
    for stage in (judged_run / "generate", judged_run / "judge/smollm2-135m"):
        manifest = json.loads((stage / "manifest.json").read_text())
        name = manifest["records_file"]["name"]
        assert manifest["records_file"]["records"] == 16
        assert manifest["records_file"]["sha256"] == hashlib.sha256((stage / name).read_bytes()).hexdigest()
