"""files.py: whole-file atomic writes that leave no temporaries, and JSONL files whose torn last line (a writer
killed mid-line) is cut off while damage anywhere earlier is an error naming the line."""

import json

import pytest

from pipeline.errors import PipelineError
from pipeline.files import JsonlAppender, repair_jsonl_tail, write_atomic


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
