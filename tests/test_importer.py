"""importer.py (stage=import): answers made elsewhere become a run. Human labels are read in every accepted form,
files that lack a field or hold an unknown label are refused naming what is there, numbers are read as answers;
and an imported run is judged and reported against its human labels."""

import json
import math
import random
import re

import pandas as pd
import pytest

from pipeline import importer, report
from pipeline.config import ReportConfig
from pipeline.errors import PipelineError
from pipeline.files import write_sums
from pipeline.rows import GenerationRow
from pipeline.stats import auroc

from conftest import make_cfg, one_error_line, read_jsonl, run_cli, verdict_row, write_run


def test_predictions_without_a_prediction_column_name_what_is_there(tmp_path):
    path = tmp_path / "p.csv"
    pd.DataFrame({"id": ["a"], "question": ["Q?"], "references": ["x"], "output": ["y"]}).to_csv(path, index=False)
    with pytest.raises(PipelineError, match=r"no field 'prediction'.*id, question, references, output.*"
                                            r"import_fields.prediction"):
        importer.run(make_cfg(tmp_path, f"predictions={path}"))
    with pytest.raises(PipelineError, match="stage=import needs the file"):
        importer.run(make_cfg(tmp_path))


def test_a_predictions_folder_or_file_of_another_type_is_named_as_such(tmp_path, monkeypatch):
    (tmp_path / "answers").mkdir()
    (tmp_path / "answers.tsv").write_text("id\tquestion\treferences\tprediction\n1\tQ?\ta\ta\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError, match=r"predictions='answers': is a folder, not a file; .*predictions=answers/"):
        importer.run(make_cfg(tmp_path / "runs", "predictions=answers"))
    with pytest.raises(PipelineError, match=r"^predictions='answers.tsv': unsupported file type '.tsv'; use one of"):
        importer.run(make_cfg(tmp_path / "runs", "predictions=answers.tsv"))  # was sent to the Hub as a data set
    assert not (tmp_path / "runs").exists()


def test_human_labels_in_an_unknown_form_list_the_accepted_ones(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"question": "Q?", "references": ["a"], "prediction": "a", "id": "1", "h": "yes"},
            {"question": "Q?", "references": ["a"], "prediction": "b", "id": "2", "h": "maybe"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(PipelineError, match=r"row 2 \(id 2\): 'maybe'.*Accepted.*correct/incorrect"):
        importer.run(make_cfg(tmp_path, f"predictions={path}", "import_fields.label=h"))


@pytest.mark.parametrize("value, label", [(True, True), ("Yes", True), ("0", False), (1, True), ("Incorrect", False),
                                          ("", None), (None, None), (float("nan"), None), ("wrong", False)])
def test_human_label_forms(value, label):
    assert importer.parse_label(value) == label


@pytest.mark.slow
@pytest.mark.integration
def test_import_reads_numbers_as_answers_and_finds_the_label_column(tmp_path):
    f = tmp_path / "answers.csv"
    f.write_text("id,question,references,prediction,human_label\n1,What is 2+2?,4,4,yes\n"
                 "2,Year of the moon landing?,1969,1969,1\n3,Capital of France?,Paris,,no\n")
    out = run_cli("stage=import", f"predictions={f}", "run_id=nums", f"runs_dir={tmp_path}/runs", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    records = read_jsonl(tmp_path / "runs/nums/generate/generations.jsonl")
    assert [(r["prediction"], r["human_label"]) for r in records] == [("4", True), ("1969", True), ("", False)]


@pytest.mark.slow
def test_import_judge_report_with_human_labels(clear_cut_run):
    samples = pd.read_csv(clear_cut_run / "judge/smollm2-135m/samples.csv")
    assert list(samples["human_label"]) == [1, 0, 1, 0, 1, 0]
    assert list(samples["exact_match"]) == [1, 0, 1, 0, 1, 0] and samples["judge_p_correct"].notna().all()
    s = pd.read_csv(clear_cut_run / "judge/smollm2-135m/summary.csv").iloc[0]
    assert s["acc_human"] == 0.5 and s["n_human"] == 6
    assert s["human_fp_exact_match"] == 0 and s["human_fn_exact_match"] == 0
    judged = samples["judge_verdict"] == "correct"
    assert s["human_fp_judge"] == int((judged & (samples["human_label"] == 0)).sum())
    assert s["human_fn_judge"] == int((~judged & (samples["human_label"] == 1)).sum())
    # 6 labels are fewer than report.min_labels: no kappa or AUROC against them, and the summary says why
    assert math.isnan(s["kappa_exact_match_human"]) and math.isnan(s["auroc_p_correct_human"])
    assert s["labels_note"] == "too few labels (6): fewer than report.min_labels=30"
    s = report.summarize(samples, "clear", "smollm2-135m", ReportConfig(min_labels=2)).iloc[0]  # with a lower bar
    assert s["agree_exact_match_human"] == 1.0 and s["kappa_exact_match_human"] == pytest.approx(1.0)
    assert s["auroc_p_correct_human"] == pytest.approx(auroc(samples["judge_p_correct"], samples["human_label"] == 1))
    assert math.isnan(s["auroc_sequence_nll_judge"])  # imported answers carry no NLL: said, not invented
    for png in ("accuracy.png", "reliability.png"):
        assert (clear_cut_run / "judge/smollm2-135m" / png).stat().st_size > 1000
    manifest = json.loads((clear_cut_run / "generate/manifest.json").read_text())
    assert manifest["human_labels"] == 6 and len(manifest["imported_from"]["sha256"]) == 64


EXACT = [("a", " =1+1"), ("b", "  Paris, France "), ("c", "   "), ("d", "tab\tand\nnewline\n")]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_imported_predictions_keep_their_exact_text(tmp_path, fmt):
    # " =1+1" was stored as "=1+1": another answer, and one a spreadsheet would run as a formula
    rows = [{"id": i, "question": "Q?", "references": "x", "prediction": p} for i, p in EXACT]
    path = tmp_path / f"p.{fmt}"
    if fmt == "csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    importer.run(make_cfg(tmp_path / "runs", f"predictions={path}", "run_id=exact"))
    records = read_jsonl(tmp_path / "runs/exact/generate/generations.jsonl")
    assert [r["prediction"] for r in records] == [" =1+1", "  Paris, France ", "", "tab\tand\nnewline\n"]


def test_a_predictions_file_with_a_utf8_bom_is_imported(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"id": "a", "question": "Q?", "references": ["x"], "prediction": "x"},
            {"id": "b", "question": "Q2?", "references": ["y"], "prediction": "z"}]
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rows).encode())
    importer.run(make_cfg(tmp_path / "runs", f"predictions={path}", "run_id=bom"))
    assert [(r["id"], r["prediction"]) for r in read_jsonl(tmp_path / "runs/bom/generate/generations.jsonl")] == \
        [("a", "x"), ("b", "z")]


def test_import_answers_sep_splits_references_and_is_part_of_the_settings(tmp_path, caplog):
    # the label sheet's own form: references joined by " | "
    path = tmp_path / "sheet.csv"
    path.write_text("id,question,references,prediction\nq1,Who wrote Hamlet?,William Shakespeare | Shakespeare,"
                    "Shakespeare\nq2,Largest planet?,Jupiter | Jove,Saturn\nq3,Capital of Japan?,Tokyo,Tokyo\n")
    runs = tmp_path / "runs"
    with caplog.at_level("WARNING", logger="pipeline"):
        importer.run(make_cfg(runs, f"predictions={path}", "run_id=whole"))
    assert re.search(r"2 of 3 rows .*field 'references'.*row 1 \(id q1\): 'William Shakespeare \| Shakespeare'.*"
                     r"import_fields\.answers_sep='\|'", caplog.text), caplog.text
    importer.run(make_cfg(runs, f"predictions={path}", "run_id=split", "import_fields.answers_sep=|"))
    records = read_jsonl(runs / "split/generate/generations.jsonl")
    assert [r["references"] for r in records] == [["William Shakespeare", "Shakespeare"], ["Jupiter", "Jove"],
                                                  ["Tokyo"]]
    importer.run(make_cfg(runs, f"predictions={path}", "run_id=whole"))  # the same settings again: nothing to do
    with pytest.raises(PipelineError, match=r"run whole already holds answers imported from .*overwrite=true"):
        importer.run(make_cfg(runs, f"predictions={path}", "run_id=whole", "import_fields.answers_sep=|"))


# --------------------------------------------------------------------------------- external verdicts (no model)

FORMS = ["yes", "0", "Correct", "", "FALSE"]  # one cycle of the verdict column's cells
FORM_VERDICTS = ["correct", "incorrect", "correct", "invalid", "incorrect"]
P_CELLS = ["0.9", "0.2", "", "0.5", "0.05"]  # P(correct) cells, in the same cycle


def graded_csv(folder, n=20, verdict_at=None, p_at=None):
    """A CSV of n answers with another judge's verdicts (column gpt4_verdict, the forms in FORMS) and P(correct)
    (column gpt4_p); verdict_at / p_at: (row number, 1-based, and the cell to put there instead)."""
    lines = ["id,question,references,prediction,human_label,gpt4_verdict,gpt4_p"]
    for i in range(n):
        verdict, p = FORMS[i % 5], P_CELLS[i % 5]
        if verdict_at and verdict_at[0] == i + 1:
            verdict = verdict_at[1]
        if p_at and p_at[0] == i + 1:
            p = p_at[1]
        label = ("yes" if i % 2 == 0 else "no") if i < 6 else ""
        lines.append(f"q{i},Question {i}?,ans{i},{'ans' if i % 2 == 0 else 'wrong'}{i},{label},{verdict},{p}")
    path = folder / "graded.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def expected_verdicts(n=20):
    return [FORM_VERDICTS[i % 5] for i in range(n)]


def expected_p(n=20):
    return [float(P_CELLS[i % 5]) if P_CELLS[i % 5] else None for i in range(n)]


VERDICT_ARGS = ("import_fields.verdict=gpt4_verdict", "import_fields.p_correct=gpt4_p",
                "import_fields.verdict_judge=gpt4")


def import_graded(tmp_path, *extra, run_id="ext"):
    path = graded_csv(tmp_path)
    importer.run(make_cfg(tmp_path / "runs", f"predictions={path}", f"run_id={run_id}", *VERDICT_ARGS, *extra))
    return tmp_path / "runs" / run_id


def snapshot(folder):
    """Every file under `folder`: its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_imported_verdicts_become_a_finished_judge_stage(tmp_path, capsys):
    run_dir = import_graded(tmp_path)
    stage = run_dir / "judge/gpt4"
    records = read_jsonl(stage / "verdicts.jsonl")
    answers = read_jsonl(run_dir / "generate/generations.jsonl")
    assert [r["id"] for r in records] == [a["id"] for a in answers] == [f"q{i}" for i in range(20)]
    assert [r["verdict"] for r in records] == expected_verdicts()
    assert [r["p_correct"] for r in records] == expected_p()
    assert [r["reply"] for r in records] == [FORMS[i % 5] for i in range(20)]  # the cell itself, for audit
    assert {(r["judge"], r["mode"], r["prompt_name"], r["prompt_version"], r["verdict_mass"], r["finish_reason"])
            for r in records} == {("gpt4", "external", "import:gpt4_verdict", 1, None, None)}
    assert [r["invalid_reason"] for r in records if r["verdict"] == "invalid"] == \
        ["no verdict in column 'gpt4_verdict'"] * 4
    assert all(r["invalid_reason"] is None for r in records if r["verdict"] != "invalid")
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["stage"] == "judge" and manifest["records"] == 20
    assert manifest["judge"] == {"name": "gpt4", "mode": "external", "verdict_column": "gpt4_verdict",
                                 "p_correct_column": "gpt4_p", "threshold": None}
    assert manifest["verdicts"] == {"correct": 8, "incorrect": 8, "invalid": 4}
    assert manifest["imported_from"]["sha256"] == json.loads(
        (run_dir / "generate/manifest.json").read_text())["imported_from"]["sha256"]
    assert manifest["fingerprint"] == {"import": {"sha256": manifest["imported_from"]["sha256"],
                                                  "verdict": "gpt4_verdict", "p_correct": "gpt4_p"}}

    samples = pd.read_csv(stage / "samples.csv")
    assert list(samples["judge_verdict"]) == expected_verdicts() and set(samples["judge"]) == {"gpt4"}
    assert [None if math.isnan(p) else p for p in samples["judge_p_correct"]] == expected_p()
    s = pd.read_csv(stage / "summary.csv").iloc[0]
    assert (s["n"], s["judge_correct"], s["judge_incorrect"], s["judge_invalid"]) == (20, 8, 8, 4)
    assert s["acc_judge"] == 0.5 and s["n_judge"] == 16  # the invalid ones are left out, not counted wrong
    assert s["n_human"] == 6 and (stage / "accuracy.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "20 answers (6 with human labels)" in out and "8 correct, 8 incorrect, 4 invalid" in out
    assert "stage=judge run_id=ext" in out and "stage=report report.runs=[ext]" in out


def test_the_same_import_again_changes_nothing_and_an_interrupted_one_resumes(tmp_path):
    run_dir = import_graded(tmp_path)
    before = snapshot(run_dir)
    import_graded(tmp_path)
    assert snapshot(run_dir) == before  # both stages complete: not a byte, not a modification time

    stage = run_dir / "judge/gpt4"  # stopped after 5 verdicts: the records not yet published, no manifest
    lines = (stage / "verdicts.jsonl").read_text().splitlines(keepends=True)
    (stage / "verdicts.jsonl.partial").write_text("".join(lines[:5]))
    write_sums(stage / "verdicts.jsonl.sums", [line.rstrip("\n").encode() for line in lines[:5]])  # as written
    for name in ("verdicts.jsonl", "manifest.json", "samples.csv", "summary.csv"):
        (stage / name).unlink()
    import_graded(tmp_path)
    assert (stage / "verdicts.jsonl").read_text() == "".join(lines)
    assert json.loads((stage / "manifest.json").read_text())["resumed_with"] == 5
    assert (stage / "samples.csv").read_bytes() == before["judge/gpt4/samples.csv"][0]
    assert snapshot(run_dir / "generate") == {k.removeprefix("generate/"): v for k, v in before.items()
                                              if k.startswith("generate/")}


def test_verdicts_can_join_answers_imported_before_them(tmp_path):
    path = graded_csv(tmp_path)
    importer.run(make_cfg(tmp_path / "runs", f"predictions={path}", "run_id=ext"))
    run_dir = tmp_path / "runs/ext"
    assert not (run_dir / "judge").exists()  # no verdict column named: answers only, as before
    answers = snapshot(run_dir / "generate")
    import_graded(tmp_path)
    assert snapshot(run_dir / "generate") == answers
    assert [r["verdict"] for r in read_jsonl(run_dir / "judge/gpt4/verdicts.jsonl")] == expected_verdicts()


def test_jsonl_with_boolean_verdicts(tmp_path):
    rows = [{"id": "a", "question": "Q?", "references": ["x"], "prediction": "x", "v": True, "p": 1},
            {"id": "b", "question": "Q?", "references": ["x"], "prediction": "y", "v": False, "p": 0.25},
            {"id": "c", "question": "Q?", "references": ["x"], "prediction": "z", "v": None, "p": None}]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    importer.run(make_cfg(tmp_path / "runs", f"predictions={path}", "run_id=j", "import_fields.verdict=v",
                          "import_fields.p_correct=p"))
    records = read_jsonl(tmp_path / "runs/j/judge/external/verdicts.jsonl")
    assert [(r["verdict"], r["p_correct"], r["reply"]) for r in records] == \
        [("correct", 1.0, "True"), ("incorrect", 0.25, "False"), ("invalid", None, "")]
    assert records[2]["invalid_reason"] == "no verdict in column 'v'"


@pytest.mark.parametrize("value, p", [(0, 0.0), (1, 1.0), (0.7, 0.7), ("0.7", 0.7), (" 0.25 ", 0.25), ("", None),
                                      (None, None), (float("nan"), None)])
def test_p_correct_forms(value, p):
    assert importer.parse_p_correct(value) == p


@pytest.mark.parametrize("value", [1.5, -0.1, "high", True, float("inf"), [0.5]])
def test_p_correct_outside_0_1_is_refused(value):
    with pytest.raises((ValueError, TypeError)):
        importer.parse_p_correct(value)


@pytest.mark.parametrize("where, extra, says", [
    ({"verdict_at": (7, "maybe")}, VERDICT_ARGS,
     (r"1 verdict in column 'gpt4_verdict' \(import_fields.verdict\) not in a recognised form: row 7 \(id q6\): "
      r"'maybe'\. Accepted \(any case\): true/false.*an empty cell for an invalid verdict")),
    ({"p_at": (4, "1.5")}, VERDICT_ARGS,
     (r"1 P\(correct\) value in column 'gpt4_p' \(import_fields.p_correct\) not a number in \[0, 1\]: "
      r"row 4 \(id q3\): 1\.5\. Write each as a number from 0 to 1")),
    ({"p_at": (12, "high")}, VERDICT_ARGS, r"in column 'gpt4_p' .*: row 12 \(id q11\): 'high'\."),
    ({}, ("import_fields.p_correct=gpt4_p",), r"import_fields.p_correct='gpt4_p' needs import_fields.verdict="),
    ({}, ("import_fields.verdict=gpt5",), (r"has no field 'gpt5' \(set by import_fields.verdict\)\. Its columns "
                                           r"are: id, question.*gpt4_verdict")),
])
def test_bad_verdicts_are_one_line_and_leave_nothing_behind(tmp_path, where, extra, says):
    path = graded_csv(tmp_path, **where)
    out = run_cli("stage=import", f"predictions={path}", "run_id=ext", f"runs_dir={tmp_path}/runs", *extra,
                  cwd=tmp_path)
    line = one_error_line(out)
    assert re.search(says, line), line
    assert str(path) in line or "p_correct=" in line  # names the file (the settings error names the setting)
    assert not (tmp_path / "runs").exists()  # no run folder, no runs/latest, no stage.json


@pytest.mark.slow  # two stages in subprocesses, with the report's figures
@pytest.mark.integration
def test_import_verdicts_then_the_leaderboard_from_the_command_line(tmp_path):
    path = graded_csv(tmp_path)
    runs = tmp_path / "runs"
    out = run_cli("stage=import", f"predictions={path}", *VERDICT_ARGS, "run_id=ext", f"runs_dir={runs}",
                  "progress=false", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "ext / gpt4: n=20, verdicts 8 correct, 8 incorrect, 4 invalid" in out.stdout  # the report's digest
    assert "stage=report report.runs=[ext]" in out.stdout
    assert [r["verdict"] for r in read_jsonl(runs / "ext/judge/gpt4/verdicts.jsonl")] == expected_verdicts()
    out = run_cli("stage=report", "report.runs=[ext]", f"runs_dir={runs}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    board = pd.read_csv(runs / "leaderboard.csv")
    assert len(board) == 1
    row = board.iloc[0]
    assert (row["run_id"], row["judge"], row["judge_mode"], row["n"], row["judge_invalid"]) == \
        ("ext", "gpt4", "external", 20, 4)
    assert row["acc_judge"] == 0.5 and row["generator"] == "import:graded"


# ------------------------------------------------------------- verdicts onto a run our own stage made (no model)

GEN_N = 12


def generated_run(runs):
    """A run that looks made by stage=generate (its generate stage was not written by an import), judged by `ours`."""
    answers = [GenerationRow.answer(f"g{i}", f"Question {i}?", [f"ans{i}"], f"ans{i}" if i % 3 else f"wrong {i}", i)
               for i in range(GEN_N)]
    ours = [verdict_row(a.id, "ours", "correct" if i % 3 else "incorrect", 0.8 if i % 3 else 0.3)
            for i, a in enumerate(answers)]
    return write_run(runs, "gen", answers, {"ours": ours}), answers


def verdicts_csv(folder, answers, name="gpt4.csv", forms=FORMS, drop=(), extra=(), change=None, columns=None):
    """Another judge's verdicts on `answers`, keyed by id, in a shuffled order: id, prediction, gpt4_verdict (the
    cycle `forms`), gpt4_p, human_label. drop: ids left out; extra: more rows; change: {id: {column: cell}};
    columns: the columns kept."""
    rows = [{"id": a.id, "prediction": a.prediction, "gpt4_verdict": forms[i % 5], "gpt4_p": P_CELLS[i % 5],
             "human_label": "yes"} for i, a in enumerate(answers) if a.id not in drop]
    rows = [{**r, **(change or {}).get(r["id"], {})} for r in rows] + [dict(r) for r in extra]
    random.Random(7).shuffle(rows)
    path = folder / name
    pd.DataFrame(rows)[columns or list(rows[0])].to_csv(path, index=False)
    return path


def import_onto(runs, path, *extra):
    return importer.run(make_cfg(runs, f"predictions={path}", "run_id=gen", *VERDICT_ARGS, *extra))


def test_external_verdicts_join_a_generated_run_beside_our_judge(tmp_path, caplog):
    runs = tmp_path / "runs"
    run_dir, answers = generated_run(runs)
    before = snapshot(run_dir)
    path = verdicts_csv(tmp_path, answers)
    lines = path.read_text().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] != [a.id for a in answers]  # really shuffled
    with caplog.at_level("INFO", logger="pipeline"):
        assert import_onto(runs, path) == run_dir / "judge/gpt4"
    assert "human labels (column 'human_label') are not imported" in caplog.text

    after = snapshot(run_dir)
    assert any(k.startswith("generate/") for k in before) and any(k.startswith("judge/ours/") for k in before)
    assert {k: after.get(k) for k in before} == before  # the answers and our judge: not a byte, not a modification time
    new = set(after) - set(before)  # the judge's folder, and the run's statistics that no judge enters
    assert all(k.startswith(("judge/gpt4/", ".locks/judge--gpt4")) or k == "metrics.csv" for k in new)
    stage = run_dir / "judge/gpt4"
    records = read_jsonl(stage / "verdicts.jsonl")
    assert [r["id"] for r in records] == [a.id for a in answers]  # the run's order, not the file's
    assert [r["verdict"] for r in records] == expected_verdicts(GEN_N)
    assert [r["p_correct"] for r in records] == expected_p(GEN_N)
    assert {(r["judge"], r["mode"], r["prompt_name"], r["prompt_version"], r["verdict_mass"], r["finish_reason"])
            for r in records} == {("gpt4", "external", "import:gpt4_verdict", 1, None, None)}
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["stage"] == "judge" and manifest["records"] == GEN_N
    assert manifest["judge"] == {"name": "gpt4", "mode": "external", "verdict_column": "gpt4_verdict",
                                 "p_correct_column": "gpt4_p", "threshold": None}
    assert manifest["verdicts"] == {"correct": 5, "incorrect": 5, "invalid": 2} and manifest["onto_run"] is True
    assert manifest["fingerprint"] == {"import": {"sha256": manifest["imported_from"]["sha256"],
                                                  "verdict": "gpt4_verdict", "p_correct": "gpt4_p"}}
    assert manifest["answers_sha256"] == json.loads(
        (run_dir / "generate/manifest.json").read_text())["records_file"]["sha256"]

    samples = pd.read_csv(stage / "samples.csv", keep_default_na=False)
    assert list(samples["id"]) == [a.id for a in answers]
    assert list(samples["prediction"]) == [a.prediction for a in answers]  # the run's answers ...
    assert list(samples["judge_verdict"]) == expected_verdicts(GEN_N)  # ... with the external verdicts
    assert set(samples["human_label"]) == {""}  # the file's labels were not imported

    report.run(make_cfg(runs, "report.runs=[gen]", "report.plots=false"))
    board = pd.read_csv(runs / "leaderboard.csv")
    assert sorted(zip(board["run_id"], board["judge"], board["judge_mode"], board["n"])) == \
        [("gen", "gpt4", "external", GEN_N), ("gen", "ours", "logprob", GEN_N)]
    gpt4 = board[board["judge"] == "gpt4"].iloc[0]
    assert gpt4["acc_judge"] == 0.5 and gpt4["judge_invalid"] == 2
    assert board[board["judge"] == "ours"].iloc[0]["acc_judge"] == pytest.approx(8 / 12, abs=1e-4)


def test_verdicts_join_answers_imported_from_another_file(tmp_path):
    runs = tmp_path / "runs"
    answers_file = graded_csv(tmp_path)  # its answers only: no verdict column named
    importer.run(make_cfg(runs, f"predictions={answers_file}", "run_id=gen"))
    answers = snapshot(runs / "gen/generate")
    rows = [f"q{i},{FORMS[i % 5]}" for i in reversed(range(20))]  # only the id and the verdict
    (tmp_path / "v.csv").write_text("id,verdict\n" + "\n".join(rows) + "\n")
    importer.run(make_cfg(runs, f"predictions={tmp_path / 'v.csv'}", "run_id=gen", "import_fields.verdict=verdict"))
    assert snapshot(runs / "gen/generate") == answers
    records = read_jsonl(runs / "gen/judge/external/verdicts.jsonl")
    assert [r["id"] for r in records] == [f"q{i}" for i in range(20)]
    assert [r["verdict"] for r in records] == expected_verdicts()
    assert json.loads((runs / "gen/judge/external/manifest.json").read_text())["onto_run"] is True


@pytest.mark.parametrize("csv, extra, says", [
    ({"extra": [{"id": "zz", "prediction": "x", "gpt4_verdict": "yes"}]}, (),
     r"1 id not among run gen's 12 answers \(row \d+ \(id 'zz'\)\)"),
    ({"extra": [{"id": "g4", "prediction": "ans4", "gpt4_verdict": "no"}]}, (),
     r"1 id appearing more than once \(id 'g4' at rows \[\d+, \d+\]\): a judge gives one verdict per answer"),
    ({"drop": ("g3", "g7")}, (),
     (r"2 of run gen's 12 answers with no row \(g3, g7\): a judge must cover every answer, so the file must have "
      r"a row per answer")),
    ({"change": {"g5": {"prediction": "something else"}}}, (),
     (r"1 row whose prediction \(column 'prediction'\) is not the run's answer for that id \(row \d+ \(id 'g5'\)\): "
      r"verdicts made for other answers")),
    ({"columns": ["prediction", "gpt4_verdict", "gpt4_p"]}, (),
     (r"ids are needed to match verdicts to a run's answers \(run gen's, made by stage=generate .*\), and it has "
      r"no id column 'id'\. Its columns: prediction, gpt4_verdict, gpt4_p")),
    ({}, ("import_fields.id=null",), r"ids are needed to match verdicts to a run's answers .* has no id column\."),
    ({}, ("import_fields.verdict=null", "import_fields.p_correct=null"),
     (r"run gen already holds answers made by stage=generate with generator 'hand-made' .*"
      r"import_fields.verdict=<column>")),
], ids=["unknown id", "duplicate id", "missing answers", "other prediction", "no id column", "id=null", "no verdict"])
def test_verdicts_that_do_not_match_the_run_are_one_line_and_write_nothing(tmp_path, csv, extra, says):
    runs = tmp_path / "runs"
    run_dir, answers = generated_run(runs)
    before = snapshot(runs)
    path = verdicts_csv(tmp_path, answers, **csv)
    out = run_cli("stage=import", f"predictions={path}", "run_id=gen", f"runs_dir={runs}", *VERDICT_ARGS, *extra,
                  cwd=tmp_path)
    line = one_error_line(out)
    assert re.search(says, line), line
    assert str(path) in line or "run gen already" in line
    assert snapshot(runs) == before and not (run_dir / "judge/gpt4").exists()


def test_rerun_is_a_no_op_and_only_overwrite_replaces_that_judge(tmp_path):
    runs = tmp_path / "runs"
    run_dir, answers = generated_run(runs)
    import_onto(runs, verdicts_csv(tmp_path, answers))
    first = snapshot(run_dir)
    import_onto(runs, verdicts_csv(tmp_path, answers))  # the same file again
    assert snapshot(run_dir) == first

    other = verdicts_csv(tmp_path, answers, name="gpt4-v2.csv", forms=["no"] * 5)
    with pytest.raises(PipelineError, match=r"judge/gpt4/ already holds a finished stage made with other settings "
                                            r"\(import.sha256: "):
        import_onto(runs, other)
    assert snapshot(run_dir) == first
    import_onto(runs, other, "overwrite=true")
    after = snapshot(run_dir)
    assert [r["verdict"] for r in read_jsonl(run_dir / "judge/gpt4/verdicts.jsonl")] == \
        ["incorrect"] * GEN_N
    kept = {k: v for k, v in first.items() if k.startswith(("generate/", "judge/ours/"))}
    assert {k: v for k, v in after.items() if k in kept} == kept  # answers and our judge untouched
    moved = sorted(k for k in after if k.startswith("replaced/"))
    assert moved and all(re.match(r"replaced/[\d-]+/judge/gpt4/", k) for k in moved)  # only that judge moved aside
    assert (run_dir / "replaced").joinpath(moved[0].split("/", 2)[1], "judge/gpt4/verdicts.jsonl").read_bytes() == \
        first["judge/gpt4/verdicts.jsonl"][0]


@pytest.mark.parametrize("cell, stored, same", [
    ("Paris", "Paris", True), (" Paris ", "Paris", True), (7, "007", True), (1969.0, "1969", True),
    (float("nan"), "", True), (float("nan"), "None", True), ("Berlin", "Paris", False), (7, "seven", False),
    (True, "1", False), (float("nan"), "Paris", False)])
def test_a_prediction_cell_read_back_as_the_runs_answer(cell, stored, same):
    assert importer.same_prediction(cell, stored) is same
