"""Every verdict is bound to the exact answer it judged: regenerated or edited answers are never paired with verdicts
given to other answers (binding.py), through the command line as a user would meet it."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from pipeline.binding import answers_digest, changed_ids
from pipeline.files import write_sums
from pipeline.rows import GenerationRow, VerdictRow, answer_sha256, parse_rows

from conftest import SMALL, copy_run, one_error_line, read_jsonl, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.integration]

JUDGE = "judge/smollm2-135m"


def answers(run):
    return parse_rows(GenerationRow, read_jsonl(run / "generate/generations.jsonl"), "g")


def test_every_verdict_records_the_answer_it_judged(judged_run):
    by_id = {a.id: a for a in answers(judged_run)}
    verdicts = parse_rows(VerdictRow, read_jsonl(judged_run / JUDGE / "verdicts.jsonl"), "v")
    assert len(verdicts) == 16
    for v in verdicts:
        a = by_id[v.id]
        assert v.answer_sha256 == answer_sha256(a.question, a.references, a.prediction)
    manifest = json.loads((judged_run / JUDGE / "manifest.json").read_text())
    assert manifest["answers_sha256"] == answers_digest(by_id.values())


def regenerate(run, tmp_path):
    """The issue's repro: generate/ moved aside by hand, the same questions answered again, differently."""
    shutil.move(run / "generate", tmp_path / "old-generate")
    out = run_cli("stage=generate", f"run_id={run.name}", "dataset.limit=16", "generator.max_new_tokens=3", *SMALL,
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    changed, _ = changed_ids({a.id: a.answer_sha256 for a in answers(run)},
                             parse_rows(VerdictRow, read_jsonl(run / JUDGE / "verdicts.jsonl"), "v"))
    assert len(changed) >= 8  # most answers are other answers now
    return changed


def test_verdicts_of_regenerated_answers_are_refused_by_report_judge_and_jury(judged_run, tmp_path):
    run = copy_run(judged_run, tmp_path)
    shutil.copytree(run / JUDGE, run / "judge/twin")  # a second member for the jury
    changed = regenerate(run, tmp_path)
    for args in (["stage=report", "run_id=copy"], ["stage=judge", "run_id=copy", *SMALL],
                 ["stage=jury", "run_id=copy", "jury.judges=[smollm2-135m,twin]", "jury.name=panel"]):
        line = one_error_line(run_cli(*args, cwd=tmp_path))
        assert f"{len(changed)} verdicts of judge smollm2-135m were given to other answers" in line, (args, line)
        assert changed[0] in line and "overwrite=true" in line
    assert not (run / "judge/panel").exists()
    out = run_cli("stage=judge", "run_id=copy", "overwrite=true", *SMALL, cwd=tmp_path)  # judged anew
    assert out.returncode == 0, out.stderr[-2000:]
    assert changed_ids({a.id: a.answer_sha256 for a in answers(run)},
                       parse_rows(VerdictRow, read_jsonl(run / JUDGE / "verdicts.jsonl"), "v")) == ([], 0)


def test_an_interrupted_judge_does_not_resume_onto_regenerated_answers(judged_run, tmp_path):
    run = copy_run(judged_run, tmp_path)
    stage = run / JUDGE
    changed = regenerate(run, tmp_path)
    lines = [line for line in (stage / "verdicts.jsonl").read_bytes().splitlines(keepends=True)
             if json.loads(line)["id"] in changed[:3]]  # stopped after 3 verdicts, of answers since regenerated
    (stage / "verdicts.jsonl.partial").write_bytes(b"".join(lines))
    write_sums(stage / "verdicts.jsonl.sums", [line.rstrip(b"\n") for line in lines])
    for name in ("verdicts.jsonl", "manifest.json"):
        (stage / name).unlink()
    line = one_error_line(run_cli("stage=judge", "run_id=copy", *SMALL, cwd=tmp_path))
    assert "3 verdicts of judge smollm2-135m were given to other answers" in line
    assert "verdicts.jsonl.partial" in line


def test_verdicts_from_before_the_hash_are_reported_with_a_warning(judged_run, tmp_path):
    run = copy_run(judged_run, tmp_path)
    path = run / JUDGE / "verdicts.jsonl"
    old = [{**{k: v for k, v in r.items() if k != "answer_sha256"}, "schema": "verdict/1"} for r in read_jsonl(path)]
    path.write_text("".join(json.dumps(r) + "\n" for r in old))
    manifest = json.loads((run / JUDGE / "manifest.json").read_text())
    from pipeline.files import sha256_file

    manifest["records_file"]["sha256"] = sha256_file(path)
    (run / JUDGE / "manifest.json").write_text(json.dumps(manifest))
    out = run_cli("stage=report", "run_id=copy", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "16 verdicts predate answer hashes" in out.stderr
    assert os.path.getsize(run / JUDGE / "samples.csv") > 0
