"""Data sets through datasets.load_dataset: the embedded set, local files, field mapping, and bad input."""

import json
import re

import pandas as pd
import pytest

from pipeline import checks
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


def test_a_question_that_is_no_text_is_named_as_such(tmp_path):
    # it was reported as an "empty question", which sends one looking for a blank cell
    rows = [{"id": "a", "question": {"text": "Q1?", "lang": "en"}, "answers": ["x"]}]
    path = write_rows(tmp_path, "jsonl", rows)
    with pytest.raises(PipelineError, match=r"row 1 \(id a\): question is dict, not text \(map a text field with "
                                            r"dataset.fields.question=<field>, e.g. question.text\)"):
        load_items(dataset_cfg(tmp_path, f"dataset.path={path}", "dataset.fields.id=id"))
    items, _ = load_items(dataset_cfg(tmp_path, f"dataset.path={path}", "dataset.fields.id=id",
                                      "dataset.fields.question=question.text"))
    assert items[0].question == "Q1?"


def test_missing_local_file_and_unknown_format(tmp_path):
    with pytest.raises(PipelineError, match="no such file"):
        load_items(dataset_cfg(tmp_path, f"dataset.path={tmp_path}/nope.jsonl"))
    odd = tmp_path / "data.xlsx"
    odd.write_text("x")
    with pytest.raises(PipelineError, match="unsupported file type"):
        load_items(dataset_cfg(tmp_path, f"dataset.path={odd}"))


@pytest.mark.parametrize("name, text", [
    ("bom.jsonl", '{"id": "a", "question": "Q1?", "answers": ["x"]}\n{"id": "b", "question": "Q2?", "answers": ["y"]}\n'),
    ("bom.json", '[{"id": "a", "question": "Q1?", "answers": ["x"]}, {"id": "b", "question": "Q2?", "answers": ["y"]}]'),
    ("bom.csv", "id,question,answers\na,Q1?,x\nb,Q2?,y\n")], ids=["jsonl", "json", "csv"])
def test_a_utf8_bom_is_read_in_every_text_format(tmp_path, name, text):
    # Excel and Notepad write one; a CSV with it was read while JSON Lines with it was refused as not JSON
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    items, _ = load_items(dataset_cfg(tmp_path, f"dataset.path={path}", "dataset.fields.id=id"))
    assert [(it.id, it.question, it.references) for it in items] == [("a", "Q1?", ("x",)), ("b", "Q2?", ("y",))]


DELIMITED = [{"id": "q1", "question": "Who wrote Hamlet?", "gold": "William Shakespeare|Shakespeare"},
             {"id": "q2", "question": "Largest planet?", "gold": "Jupiter"},
             {"id": "q3", "question": "Capital of Japan?", "gold": " Tokyo |  | Tokio |"},
             {"id": "q4", "question": "Year of the moon landing?", "gold": "1969"}]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_answers_sep_splits_one_delimited_string_into_references(tmp_path, fmt):
    path = write_rows(tmp_path, fmt, DELIMITED)
    args = (f"dataset.path={path}", "dataset.fields.id=id", "dataset.fields.answers=[gold]")
    items, info = load_items(dataset_cfg(tmp_path, *args, "dataset.fields.answers_sep=|"))
    assert [it.references for it in items] == [("William Shakespeare", "Shakespeare"), ("Jupiter",),
                                               ("Tokyo", "Tokio"), ("1969",)]  # stripped, empty pieces dropped
    whole, whole_info = load_items(dataset_cfg(tmp_path, *args))
    assert whole[0].references == ("William Shakespeare|Shakespeare",)  # no separator: one reference, as before
    assert info["content_sha256"] != whole_info["content_sha256"]  # so a run's fingerprint tells them apart
    semi, semi_info = load_items(dataset_cfg(tmp_path, *args, "dataset.fields.answers_sep=';'"))
    assert semi[0].references == whole[0].references and semi_info["content_sha256"] == whole_info["content_sha256"]


def test_answers_sep_splits_strings_inside_lists_too(tmp_path):
    rows = [{"id": "a", "question": "Q?", "answers": ["Bob ; Robert", "Rob"]}]
    path = write_rows(tmp_path, "jsonl", rows)
    items, _ = load_items(dataset_cfg(tmp_path, f"dataset.path={path}", "dataset.fields.id=id",
                                      "dataset.fields.answers_sep=';'"))
    assert items[0].references == ("Bob", "Robert", "Rob")


@pytest.mark.parametrize("key", ["dataset.fields.answers_sep", "import_fields.answers_sep"])
def test_an_empty_separator_is_refused_before_any_work(tmp_path, key):
    with pytest.raises(PipelineError, match=rf"{key}='' is no separator: .*or null") as e:
        checks.check(make_cfg(tmp_path / "runs", f"{key}=''"))
    assert "\n" not in str(e.value)
    checks.check(make_cfg(tmp_path / "runs", f"{key}=|"))


def test_many_delimited_single_references_warn_naming_the_field_a_row_and_the_setting(tmp_path, caplog):
    path = write_rows(tmp_path, "csv", DELIMITED)
    args = (f"dataset.path={path}", "dataset.fields.id=id", "dataset.fields.answers=[gold]")
    with caplog.at_level("WARNING", logger="pipeline"):
        load_items(dataset_cfg(tmp_path, *args))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert re.search(r"2 of 4 rows .*field 'gold'.*row 1 \(id q1\): 'William Shakespeare\|Shakespeare'.*"
                     r"dataset\.fields\.answers_sep=", warnings[0]), warnings[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="pipeline"):  # said once it is set, and never for one odd row
        load_items(dataset_cfg(tmp_path, *args, "dataset.fields.answers_sep=|"))
        load_items(dataset_cfg(tmp_path, *args, "dataset.limit=2"))
        one = write_rows(tmp_path, "jsonl", DELIMITED[:1] + [{**r, "gold": "x"} for r in DELIMITED[1:]])
        load_items(dataset_cfg(tmp_path, f"dataset.path={one}", "dataset.fields.id=id", "dataset.fields.answers=[gold]"))
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_a_semicolon_list_warns_too(tmp_path, caplog):
    rows = [{"id": f"q{i}", "question": f"Q{i}?", "answers": ["Bob ; Robert"] if i < 3 else ["x"]} for i in range(20)]
    path = write_rows(tmp_path, "jsonl", rows)
    with caplog.at_level("WARNING", logger="pipeline"):
        load_items(dataset_cfg(tmp_path, f"dataset.path={path}", "dataset.fields.id=id"))
    assert "3 of 20 rows" in caplog.text and "'answers'" in caplog.text and "answers_sep=';'" in caplog.text


def test_a_local_file_of_another_type_is_not_taken_for_a_hub_name(tmp_path, monkeypatch):
    (tmp_path / "qa.tsv").write_text("id\tquestion\tanswers\n1\tQ?\ta\n")
    monkeypatch.chdir(tmp_path)  # a bare relative name, as typed: once sent to the Hub as a data set name
    with pytest.raises(PipelineError, match=r"dataset.path='qa.tsv': unsupported file type '.tsv'; use one of "
                                            r"\.json, .*save a TSV or a spreadsheet as CSV"):
        load_items(dataset_cfg(tmp_path, "dataset.path=qa.tsv"))


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
