"""rows.py: the records and CSV columns, defined once, and the version check of every reader."""

import json

import pytest

from pipeline.errors import PipelineError
from pipeline.rows import SAMPLE_COLUMNS, GenerationRow, SampleRow, VerdictRow, check_versions, parse_rows

ANSWER = GenerationRow.answer("q1", "Capital of France?", ["Paris"], "Paris", index=3, human_label=True)
VERDICT = VerdictRow(id="q1", judge="j", mode="logprob", prompt_name="verdict", prompt_version=2, verdict="correct",
                     invalid_reason=None, p_correct=0.93, verdict_mass=0.8, reply="correct", finish_reason=None)


def test_a_row_reads_back_exactly_what_it_wrote():
    for row in (ANSWER, VERDICT):
        record = json.loads(json.dumps(row.to_json()))
        assert record["schema"] == row.SCHEMA and type(row).from_json(record) == row


def test_a_version_1_generation_without_a_label_reads_as_unlabelled():
    record = {k: v for k, v in ANSWER.to_json().items() if k != "human_label"} | {"schema": "generation/1"}
    assert GenerationRow.from_json(record).human_label is None
    assert GenerationRow.from_json(record).prediction == "Paris"


def test_unknown_versions_and_missing_fields_are_refused_naming_the_place():
    newer = ANSWER.to_json() | {"schema": "generation/4"}
    with pytest.raises(PipelineError, match=r"gens.jsonl, line 2: .*'generation/4'.*generation/1, generation/2, generation/3"):
        parse_rows(GenerationRow, [ANSWER.to_json(), newer], "gens.jsonl")
    lacking = {k: v for k, v in VERDICT.to_json().items() if k != "verdict"}
    with pytest.raises(PipelineError, match=r"line 1: a verdict/2 record \(id 'q1'\) lacks verdict"):
        parse_rows(VerdictRow, [lacking], "v.jsonl")
    with pytest.raises(PipelineError, match=r"line 2: 'verdict/9'"):
        check_versions([VERDICT.to_json(), VERDICT.to_json() | {"schema": "verdict/9"}], "v.jsonl", "verdicts.jsonl")


def test_the_csv_columns_are_the_sample_rows_fields_and_take_the_judge_fields_prefixed():
    sample = SampleRow.of(("run-1", "nq_open", "smollm2"), ANSWER, VERDICT, {"exact_match": 1.0, "token_f1": 1.0, "contains_reference": 1.0,
                                            "rouge_l": 0.9999999})
    assert SAMPLE_COLUMNS == list(vars(sample))
    assert SAMPLE_COLUMNS[:4] == ["run_id", "dataset", "generator", "id"] and sample.generator == "smollm2"
    assert sample.judge_verdict == VERDICT.verdict and sample.judge_p_correct == VERDICT.p_correct
    assert json.loads(sample.references) == ANSWER.references and sample.human_label == 1 and sample.rouge_l == 1.0
    # every verdict field the CSV shows is a VerdictRow field, and every answer field a GenerationRow field
    judge_fields = [c.removeprefix("judge_") for c in SAMPLE_COLUMNS if c.startswith("judge_")]
    assert set(judge_fields) <= set(VerdictRow.names())
    answer_fields = SAMPLE_COLUMNS[SAMPLE_COLUMNS.index("id"):SAMPLE_COLUMNS.index("exact_match")] + ["human_label"]
    assert set(answer_fields) <= set(GenerationRow.names())
