"""Data sets through datasets.load_dataset: the embedded set, local files, field mapping, and bad input."""

import json

import pandas as pd
import pytest

from pipeline.data import load_items
from pipeline.errors import PipelineError

from conftest import SMALL, make_cfg, one_error_line, read_jsonl, run_cli


def dataset_cfg(tmp_path, *overrides):
    return make_cfg(tmp_path / "runs", *overrides).dataset


def test_embedded_set_has_over_200_unique_questions_with_aliases(tmp_path):
    items, info = load_items(dataset_cfg(tmp_path))
    assert len(items) == info["rows_used"] >= 200
    assert len({it.id for it in items}) == len(items)
    assert all(it.question.endswith("?") and it.references for it in items)
    assert sum(len(it.references) > 1 for it in items) > len(items) / 3  # many have aliases
    assert len(info["content_sha256"]) == 64


def write_rows(tmp_path, fmt, rows):
    path = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_local_files_through_field_mapping(tmp_path, fmt):
    rows = [{"qid": f"q{i}", "q": f"Question {i}?", "gold": f"answer {i}"} for i in range(5)]
    path = write_rows(tmp_path, fmt, rows)
    items, _ = load_items(dataset_cfg(tmp_path, "dataset.name=mine", f"dataset.path={path}", "dataset.fields.id=qid",
                                      "dataset.fields.question=q", "dataset.fields.answers=[gold]"))
    assert [(it.id, it.question, it.references) for it in items] == [
        (f"q{i}", f"Question {i}?", (f"answer {i}",)) for i in range(5)]


def test_nested_answer_fields_are_collected_and_deduplicated(tmp_path):
    # TriviaQA's shape: answer.value plus answer.aliases
    rows = [{"question_id": "tq1", "question": "Who?", "answer": {"value": "Bob", "aliases": ["Bob", "Robert"]}}]
    path = write_rows(tmp_path, "jsonl", rows)
    items, _ = load_items(dataset_cfg(tmp_path, "dataset=trivia_qa", f"dataset.path={path}"))
    assert items[0].id == "tq1" and items[0].references == ("Bob", "Robert")


def test_ids_default_to_row_numbers_and_limit_takes_the_first_rows(tmp_path):
    path = write_rows(tmp_path, "jsonl", [{"question": f"Q{i}?", "answers": ["a"]} for i in range(10)])
    items, info = load_items(dataset_cfg(tmp_path, "dataset.name=x", f"dataset.path={path}", "dataset.fields.id=null",
                                         "dataset.limit=3"))
    assert [it.id for it in items] == ["x-000000", "x-000001", "x-000002"]
    assert info["rows_in_source"] == 10 and info["rows_used"] == 3


def test_missing_field_names_the_field_and_the_columns_there(tmp_path):
    path = write_rows(tmp_path, "jsonl", [{"id": "1", "prompt": "Q?", "answers": ["a"]}])
    with pytest.raises(PipelineError) as e:
        load_items(dataset_cfg(tmp_path, f"dataset.path={path}"))
    msg = str(e.value)
    assert str(path) in msg and "'question'" in msg and "dataset.fields.question" in msg
    assert "id, prompt, answers" in msg


def test_empty_data_set_is_refused(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("id,question,answers\n")
    with pytest.raises(PipelineError, match="empty"):
        load_items(dataset_cfg(tmp_path, f"dataset.path={path}"))


def test_duplicate_ids_are_named_with_their_rows(tmp_path):
    rows = [{"id": "a", "question": "Q1?", "answers": ["x"]}, {"id": "b", "question": "Q2?", "answers": ["y"]},
            {"id": "a", "question": "Q3?", "answers": ["z"]}]
    path = write_rows(tmp_path, "jsonl", rows)
    with pytest.raises(PipelineError, match=r"'a' at rows \[1, 3\].*dataset.fields.id=null"):
        load_items(dataset_cfg(tmp_path, f"dataset.path={path}"))


def test_rows_without_question_or_answers_are_named(tmp_path):
    rows = [{"id": "a", "question": "Q1?", "answers": ["x"]}, {"id": "b", "question": " ", "answers": ["y"]},
            {"id": "c", "question": "Q3?", "answers": []}]
    path = write_rows(tmp_path, "jsonl", rows)
    with pytest.raises(PipelineError, match=r"row 2 \(id b\): empty question.*row 3 \(id c\): no reference answers"):
        load_items(dataset_cfg(tmp_path, f"dataset.path={path}"))


def test_missing_local_file_and_unknown_format(tmp_path):
    with pytest.raises(PipelineError, match="no such file"):
        load_items(dataset_cfg(tmp_path, f"dataset.path={tmp_path}/nope.jsonl"))
    odd = tmp_path / "data.xlsx"
    odd.write_text("x")
    with pytest.raises(PipelineError, match="unsupported file type"):
        load_items(dataset_cfg(tmp_path, f"dataset.path={odd}"))


@pytest.mark.parametrize("preset", ["nq_open", "trivia_qa", "sciq", "web_questions"])
def test_hub_presets_fail_clearly_without_the_hub(tmp_path, preset):
    with pytest.raises(PipelineError) as e:
        load_items(dataset_cfg(tmp_path, f"dataset={preset}"))
    msg = str(e.value)
    assert "Hugging Face Hub data set" in msg and "dataset.path=" in msg


# ----------------------------------------------------------------------------------- through the command line

BAD_FILES = {
    "not-utf8.jsonl": (b'{"id": "1", "question": "Q\xff?", "answers": ["a"]}\n', "line 1: byte 0xff at column 27 is not UTF-8"),
    "empty.jsonl": (b"", "the file is empty (0 bytes)"),
    "header-only.csv": (b"id,question,answers\n", "holds no rows"),
    "empty-list.json": (b"[]", "holds no rows"),
    "broken.jsonl": (b'{"id": "1", "question": "Q?", "answers": ["a"]}\n{"id": "2", "question": }\n',
                     "broken.jsonl, line 2, column 25: not valid JSON"),
    "no-id.jsonl": (b'{"question": "Q?", "answers": ["a"]}\n', "or set dataset.fields.id=null to number the rows"),
}


@pytest.mark.slow  # starts stage=generate and stage=import in 12 subprocesses (~40 s)
@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_bad_data_file_is_one_line_naming_the_file_and_line(tmp_path, name):
    data, says = BAD_FILES[name]
    (tmp_path / name).write_bytes(data)
    out = run_cli("stage=generate", f"dataset.path={tmp_path / name}", "dataset.fields.id=id",
                  f"runs_dir={tmp_path}/runs", cwd=tmp_path)
    assert says in one_error_line(out)
    assert not (tmp_path / "runs").exists()
    out = run_cli("stage=import", f"predictions={tmp_path / name}", f"runs_dir={tmp_path}/runs", cwd=tmp_path)
    one_error_line(out)


@pytest.mark.slow
@pytest.mark.integration
def test_a_bare_folder_name_is_a_local_data_folder_not_a_hub_name(tmp_path, model_dir):
    (tmp_path / "mydata").mkdir()
    (tmp_path / "mydata/part.jsonl").write_text('{"id": "q1", "question": "What is 2+2?", "answers": ["4"]}\n')
    out = run_cli("stage=generate", "dataset.path=mydata", "dataset.name=mine", "dataset.fields.id=id",
                  f"runs_dir={tmp_path}/runs", "run_id=folder", *SMALL, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert [r["id"] for r in read_jsonl(tmp_path / "runs/folder/generate/generations.jsonl")] == ["q1"]
