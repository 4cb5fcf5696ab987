"""labels.py (stage=label): the drawn sheet (columns, the draw itself, larger n extending it, hostile cells, never
overwritten), the filled sheet read back (accepted forms, refusals naming file and line, idempotence, contradictions,
two processes at once), load_labels (uniform or not, and why) and labelfile.py (labels bound to the answers they
labelled, labels.jsonl sealed by its manifest, an earlier version's file read). Runs are made by hand (write_run): no
model."""

import csv
import hashlib
import json
import shlex
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from pipeline import labels
from pipeline.errors import PipelineError
from pipeline.locks import StageLock
from pipeline.rows import GenerationRow

from conftest import make_cfg, one_error_line, read_jsonl, run_cli, verdict_row, write_run

BOM = b"\xef\xbb\xbf"
FORMS = ["Yes", "0", "correct", "TRUE", "n", "wrong", "1", "F", "right", "No"]  # accepted, in mixed case
MEANS = [True, False, True, True, False, False, True, False, True, False]


def make_answers(n: int, imported: dict[int, bool] | None = None) -> list[GenerationRow]:
    """n answers q000.. (two per index), written in reverse order so that the file's order is not the frame's."""
    rows = [GenerationRow.answer(f"q{i:03d}", f"Question {i}?", [f"ref {i}", f"alt {i}"], f"pred {i}", index=i // 2,
                                 human_label=(imported or {}).get(i)) for i in range(n)]
    return rows[::-1]


def frame_ids(n: int) -> list[str]:
    return [f"q{i:03d}" for i in range(n)]


def expected_draw(ids: list[str], n: int, seed: int) -> list[str]:
    return [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))[:n]]


def new_run(tmp_path, n=250, run_id="r", judged=False, answers=None):
    answers = answers or make_answers(n)
    judges = {"j": [verdict_row(a.id, "j", "correct", 0.9) for a in answers]} if judged else None
    return tmp_path / "runs", write_run(tmp_path / "runs", run_id, answers, judges), answers


def cfg(runs, *overrides, run_id="r"):
    return make_cfg(runs, "stage=label", f"run_id={run_id}", "report.plots=false", *overrides)


def sheet(runs, *overrides, run_id="r"):
    return labels.run(cfg(runs, *overrides, run_id=run_id))


def rows_of(path) -> list[list[str]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.reader(f))


def fill(path, values, dest=None):
    """Set human_label by position (a list) or by id (a dict); write the sheet back (to dest) with a BOM."""
    rows = rows_of(path)
    for k, row in enumerate(rows[1:]):
        key = k if isinstance(values, list) else row[0].removeprefix("'")
        if (isinstance(values, list) and k < len(values)) or (isinstance(values, dict) and key in values):
            row[4] = values[key]
    dest = dest or path
    with open(dest, "w", encoding="utf-8-sig", newline="") as f:
        csv.writer(f).writerows(rows)
    return dest


def read_back(runs, path, *overrides, run_id="r"):
    return labels.run(cfg(runs, f"label.sheet={path}", *overrides, run_id=run_id))


def loaded(run_dir, answers):
    return labels.load_labels(run_dir, answers)


# ------------------------------------------------------------------------------------------------ the sheet

def test_the_sheet_holds_the_draw_and_nothing_of_the_judge(tmp_path, capsys):
    runs, run_dir, _ = new_run(tmp_path, judged=True)
    path = sheet(runs, "label.n=40", "label.seed=0")
    assert path == run_dir / "labels/sheet-n40-seed0.csv"
    assert path.read_bytes().startswith(BOM)
    rows = rows_of(path)
    assert rows[0] == ["id", "question", "references", "prediction", "human_label"] and len(rows) == 41
    want = expected_draw(frame_ids(250), 40, 0)
    assert [r[0] for r in rows[1:]] == want
    i = int(want[0][1:])
    assert rows[1] == [want[0], f"Question {i}?", f"ref {i} | alt {i}", f"pred {i}", ""]
    assert "correct" not in path.read_text(encoding="utf-8-sig") and "0.9" not in path.read_text(encoding="utf-8-sig")
    draws = json.loads((run_dir / "labels/draws.json").read_text())
    assert [{k: v for k, v in d.items() if k != "written"} for d in draws] == [{
        "seed": 0, "n": 40, "frame_size": 250, "ids": want, "sheet": "sheet-n40-seed0.csv",
        "frame_sha256": hashlib.sha256("\n".join(frame_ids(250)).encode()).hexdigest()}]
    out = capsys.readouterr().out
    assert f"wrote {path}: 40 rows (40 of the run's 250 answers drawn at random, seed 0)" in out
    assert out.strip().splitlines()[-1] == \
        f"python -m pipeline stage=label label.sheet={path} run_id=r runs_dir={runs}"


def test_the_same_seed_draws_the_same_answers_and_another_seed_others(tmp_path):
    runs, _, _ = new_run(tmp_path, run_id="a")
    new_run(tmp_path, run_id="b")
    ids_a = [r[0] for r in rows_of(sheet(runs, "label.n=30", run_id="a"))[1:]]
    ids_b = [r[0] for r in rows_of(sheet(runs, "label.n=30", run_id="b"))[1:]]
    ids_c = [r[0] for r in rows_of(sheet(runs, "label.n=30", "label.seed=1", run_id="a"))[1:]]
    assert ids_a == ids_b == expected_draw(frame_ids(250), 30, 0)
    assert ids_c == expected_draw(frame_ids(250), 30, 1) and len(set(ids_c) - set(ids_a)) >= 20


def test_a_larger_n_with_the_same_seed_extends_the_sheet(tmp_path):
    runs, run_dir, _ = new_run(tmp_path, n=320)
    small = [r[0] for r in rows_of(sheet(runs, "label.n=200"))[1:]]
    large = [r[0] for r in rows_of(sheet(runs, "label.n=300"))[1:]]
    assert len(small) == 200 and len(large) == 300 and large[:200] == small and len(set(large)) == 300
    draws = json.loads((run_dir / "labels/draws.json").read_text())
    assert [(d["n"], d["sheet"]) for d in draws] == [(200, "sheet-n200-seed0.csv"), (300, "sheet-n300-seed0.csv")]


def test_n_larger_than_the_run_draws_every_answer(tmp_path, capsys):
    runs, run_dir, _ = new_run(tmp_path, n=50)
    path = sheet(runs, "label.n=80")
    ids = [r[0] for r in rows_of(path)[1:]]
    assert path.name == "sheet-n50-seed0.csv" and ids == expected_draw(frame_ids(50), 50, 0)
    assert sorted(ids) == frame_ids(50)
    assert "label.n=80 is more than the run's 50 answers: the sheet holds all of them" in capsys.readouterr().out


def test_formula_cells_are_quoted_and_awkward_text_round_trips(tmp_path):
    hostile = [GenerationRow.answer("-q1", '=HYPERLINK("http://evil.example","x")', ["+1", "@SUM(A1)"], "-5", 0),
               GenerationRow.answer("q2", 'Who said "hi, there"?\nAnd then, "bye"', ["a, b", 'c "d"'], "'quoted", 1),
               GenerationRow.answer("q3", "@home", ["\ttab"], "=1+1", 2)]
    answers = hostile + [GenerationRow.answer(f"p{i}", f"Plain {i}?", ["x"], "y", 3 + i) for i in range(47)]
    runs, run_dir, _ = new_run(tmp_path, answers=answers)
    path = sheet(runs, "label.n=50")
    by_id = {r[0]: r for r in rows_of(path)[1:]}
    assert by_id["'-q1"] == ["'-q1", "'=HYPERLINK(\"http://evil.example\",\"x\")", "'+1 | @SUM(A1)", "'-5", ""]
    assert by_id["q2"] == ["q2", 'Who said "hi, there"?\nAnd then, "bye"', 'a, b | c "d"', "''quoted", ""]
    assert by_id["q3"] == ["q3", "'@home", "'\ttab", "'=1+1", ""]
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    assert len(frame) == 50 and frame.loc[frame.id == "q2", "question"].item() == hostile[1].question
    read_back(runs, fill(path, {"-q1": "yes", "q2": "no", "q3": "1"}))
    assert loaded(run_dir, answers).by_id == {"-q1": True, "q2": False, "q3": True}


def test_an_existing_sheet_is_never_overwritten(tmp_path, capsys):
    runs, run_dir, _ = new_run(tmp_path)
    path = fill(sheet(runs, "label.n=20"), ["yes", "no"])
    work = path.read_bytes()
    capsys.readouterr()
    assert sheet(runs, "label.n=20") == path and sheet(runs, "label.n=20", "overwrite=true") == path
    assert path.read_bytes() == work
    assert capsys.readouterr().out.count(f"kept {path}: the sheet exists already") == 2
    assert len(json.loads((run_dir / "labels/draws.json").read_text())) == 1


def test_a_sheet_is_prefilled_with_labels_already_attached(tmp_path):
    runs, run_dir, _ = new_run(tmp_path, n=100)
    read_back(runs, fill(sheet(runs, "label.n=10"), ["yes"] * 5 + ["no"] * 5))
    rows = rows_of(sheet(runs, "label.n=20"))
    assert [r[4] for r in rows[1:]] == ["true"] * 5 + ["false"] * 5 + [""] * 10


# ------------------------------------------------------------------------------------------------ reading it back

def test_the_round_trip_on_the_command_line(tmp_path):
    runs, run_dir, answers = new_run(tmp_path, judged=True)
    out = run_cli("stage=label", "run_id=r", f"runs_dir={runs}", "label.n=40", "label.seed=0", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    back = shlex.split(out.stdout.strip().splitlines()[-1])
    assert back[:3] == ["python", "-m", "pipeline"]
    path = run_dir / "labels/sheet-n40-seed0.csv"
    fill(path, FORMS * 3)  # the first 30 rows, in order; the last 10 left empty
    assert not (run_dir / "judge/j/samples.csv").exists()
    out = run_cli(*back[3:], "report.plots=false", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert ("sheet-n40-seed0.csv: attached 30 new labels, replaced 0, 0 already attached, 10 rows without a label yet; "
            "10 of the 40 drawn answers (seed 0) are still unlabelled") in out.stdout
    assert f"report: python -m pipeline stage=report run_id=r runs_dir={runs}" in out.stdout
    assert (run_dir / "judge/j/samples.csv").is_file()  # the report was rewritten
    drawn = expected_draw(frame_ids(250), 40, 0)
    want = dict(zip(drawn[:30], MEANS * 3, strict=True))
    got = loaded(run_dir, answers)
    assert got.by_id == want and got.drawn_uniformly is True and got.warnings == []
    assert got.source == "30 labels from stage=label (seed 0, first 30 of the draw)"
    records = read_jsonl(run_dir / "labels/labels.jsonl")
    assert [r["id"] for r in records] == sorted(want)  # frame order
    first = next(r for r in records if r["id"] == drawn[0])
    assert first == {"schema": "label/2", "id": drawn[0], "human_label": True, "sheet": "sheet-n40-seed0.csv",
                     "sheet_sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "line": 2,
                     "answer_sha256": next(a for a in answers if a.id == drawn[0]).answer_sha256}


def test_a_whole_sheet_labelled_is_a_uniform_sample(tmp_path):
    runs, run_dir, answers = new_run(tmp_path)
    read_back(runs, fill(sheet(runs, "label.n=40", "label.seed=3"), FORMS * 4))
    got = loaded(run_dir, answers)
    assert len(got.by_id) == 40 and got.drawn_uniformly is True and got.warnings == []
    assert got.source == "40 labels from stage=label (seed 3, first 40 of the draw)"
    assert [d["seed"] for d in got.draws] == [3]


def test_rows_labelled_out_of_order_are_not_a_uniform_sample(tmp_path):
    runs, run_dir, answers = new_run(tmp_path)
    read_back(runs, fill(sheet(runs, "label.n=40"), ["yes", "no", "", "yes", "no", "yes", "no", "yes", "no", "1"]))
    got = loaded(run_dir, answers)
    assert len(got.by_id) == 9 and got.drawn_uniformly is False
    assert got.warnings == ["31 of the 40 drawn answers (seed 0) have no label; the estimate assumes the skipped ones "
                            "were skipped at random"]
    assert got.source == "9 labels from stage=label (not the first answers of one draw; seed 0)"


def damage_unknown(rows):
    rows[5][0] = "nope"
    return ["1 id not in this run (line 7: 'nope')"]


def damage_twice(rows):
    rows[4][0] = rows[2][0]
    return [f"1 id appearing twice ('{rows[2][0]}' on lines 4 and 6)"]


def damage_label(rows):
    rows[3][4] = "maybe"
    return ["1 label in an unreadable form (line 5: 'maybe'); accepted: true/1/yes/y/correct/right/t for correct, "
            "false/0/no/n/incorrect/wrong/f for incorrect (any case), or an empty cell for not labelled yet"]


@pytest.mark.parametrize("damage", [damage_unknown, damage_twice, damage_label])
def test_a_bad_sheet_is_one_line_naming_file_and_line_and_nothing_is_written(tmp_path, damage):
    runs, run_dir, _ = new_run(tmp_path)
    path = sheet(runs, "label.n=20")
    rows = rows_of(path)
    for row in rows[1:]:
        row[4] = "yes"
    says = damage(rows[1:])
    with open(path, "w", encoding="utf-8-sig", newline="") as f:
        csv.writer(f).writerows(rows)
    draws = (run_dir / "labels/draws.json").read_bytes()
    line = one_error_line(run_cli("stage=label", "run_id=r", f"runs_dir={runs}", f"label.sheet={path}",
                                  cwd=tmp_path))
    assert line.startswith(f"error: {path}: ") and all(s in line for s in says), line
    assert "Nothing was attached" in line
    assert not (run_dir / "labels/labels.jsonl").exists()
    assert (run_dir / "labels/draws.json").read_bytes() == draws


def test_a_sheet_without_the_columns_names_the_ones_it_has(tmp_path):
    runs, run_dir, _ = new_run(tmp_path, n=50)
    bad = tmp_path / "mine.csv"
    bad.write_text("id,label\nq001,yes\n")
    with pytest.raises(PipelineError, match=r"mine\.csv: no human_label column; its columns are id, label\. "):
        read_back(runs, bad)
    assert not (run_dir / "labels").exists()


def test_a_run_without_a_finished_generate_stage_is_refused(tmp_path):
    from pipeline.runs import create_run

    create_run(tmp_path / "runs", "r")
    line = one_error_line(run_cli("stage=label", "run_id=r", f"runs_dir={tmp_path / 'runs'}", cwd=tmp_path))
    assert "run r: its generate stage is not finished" in line
    assert line.endswith("run python -m pipeline stage=generate run_id=r first.")
    assert not (tmp_path / "runs/r/labels").exists()


def test_reading_the_same_sheet_again_changes_nothing(tmp_path, capsys):
    runs, run_dir, _ = new_run(tmp_path)
    path = fill(sheet(runs, "label.n=20"), FORMS)
    read_back(runs, path)
    stored = run_dir / "labels/labels.jsonl"
    before, stamp = stored.read_bytes(), stored.stat().st_mtime_ns
    capsys.readouterr()
    read_back(runs, path)
    assert stored.read_bytes() == before and stored.stat().st_mtime_ns == stamp
    assert ("nothing changed (reading a sheet again is harmless), 10 already attached, 10 rows without a label yet; "
            "10 of the 20 drawn answers (seed 0) are still unlabelled") in capsys.readouterr().out


def test_a_contradiction_is_refused_unless_overwrite_and_the_old_file_is_kept(tmp_path):
    runs, run_dir, answers = new_run(tmp_path)
    path = fill(sheet(runs, "label.n=20"), ["yes"] * 20)
    read_back(runs, path)
    stored = run_dir / "labels/labels.jsonl"
    before = stored.read_bytes()
    other = fill(path, ["no"], dest=tmp_path / "other.csv")
    first = rows_of(path)[1][0]
    with pytest.raises(PipelineError) as e:
        read_back(runs, other)
    assert f"1 label contradict labels already attached to run r in {stored} (line 2: '{first}' says false, attached " \
        "true from sheet-n20-seed0.csv)" in str(e.value) and "pass overwrite=true" in str(e.value)
    assert stored.read_bytes() == before and not (run_dir / "replaced").exists()
    read_back(runs, other, "overwrite=true")
    got = loaded(run_dir, answers)
    assert got.by_id[first] is False and sum(got.by_id.values()) == 19
    kept = list((run_dir / "replaced").glob("*/labels/labels.jsonl"))
    assert len(kept) == 1 and kept[0].read_bytes() == before
    assert next(r for r in read_jsonl(stored) if r["id"] == first)["sheet"] == "other.csv"
    assert got.drawn_uniformly is True and got.warnings == []  # the same 20 drawn answers are labelled


def test_a_contradiction_with_an_imported_label_is_refused_even_with_overwrite(tmp_path):
    answers = make_answers(100, imported={i: True for i in range(100)})
    runs, run_dir, _ = new_run(tmp_path, answers=answers)
    path = sheet(runs, "label.n=10")
    assert [r[4] for r in rows_of(path)[1:]] == ["true"] * 10  # prefilled with the imported labels
    fill(path, ["no"] + ["yes"] * 9)
    first = rows_of(path)[1][0]
    for extra in ([], ["overwrite=true"]):
        with pytest.raises(PipelineError) as e:
            read_back(runs, path, *extra)
        assert f"(line 2: '{first}' says false, imported true); those cannot be replaced here, not even with " \
            "overwrite=true" in str(e.value) and str(run_dir / "generate/generations.jsonl") in str(e.value)
    assert not (run_dir / "labels/labels.jsonl").exists()


def test_imported_labels_are_not_taken_as_a_uniform_sample(tmp_path):
    imported = {i: i % 3 == 0 for i in range(0, 104, 2)}
    answers = make_answers(200, imported)
    _, run_dir, _ = new_run(tmp_path, answers=answers)
    got = loaded(run_dir, answers)
    assert got.by_id == {f"q{i:03d}": v for i, v in imported.items()} and len(got.by_id) == 52
    assert got.drawn_uniformly is False and got.draws == []
    assert got.warnings == ["52 labels were imported with the answers, not drawn by stage=label, so a uniform random "
                            "sample of the run cannot be assumed for them"]
    assert got.source == "52 labels imported with the answers"
    marked = labels.with_labels([replace(a, human_label=None) for a in answers], got)
    assert {a.id: a.human_label for a in marked if a.human_label is not None} == got.by_id


def test_imported_labels_spoil_even_a_drawn_prefix(tmp_path):
    first = expected_draw(frame_ids(200), 10, 0)
    imported = {i: True for i in range(200) if f"q{i:03d}" not in first}
    answers = make_answers(200, imported)
    runs, run_dir, _ = new_run(tmp_path, answers=answers)
    read_back(runs, fill(sheet(runs, "label.n=10"), ["no"] * 10))
    got = loaded(run_dir, answers)
    assert len(got.by_id) == 200 and [got.by_id[i] for i in first] == [False] * 10
    assert got.drawn_uniformly is False
    assert got.warnings == ["190 labels were imported with the answers, not drawn by stage=label, so a uniform random "
                            "sample of the run cannot be assumed for them"]
    assert got.source == "190 labels imported with the answers and 10 labels from stage=label (seed 0, first 10 of " \
        "the draw)"


def test_no_labels_at_all_is_no_warning(tmp_path):
    _, run_dir, answers = new_run(tmp_path, n=60)
    got = loaded(run_dir, answers)
    assert (got.by_id, got.drawn_uniformly, got.warnings, got.draws, got.source) == \
        ({}, False, [], [], "no human labels")


def test_labels_jsonl_edited_by_hand_is_refused_naming_it(tmp_path):
    answers = make_answers(100, imported={0: True})
    q000 = next(a for a in answers if a.id == "q000")
    runs, run_dir, _ = new_run(tmp_path, answers=answers)
    read_back(runs, fill(sheet(runs, "label.n=10"), ["1"] * 10))
    stored = run_dir / "labels/labels.jsonl"
    (run_dir / "labels/manifest.json").unlink()  # a file of an earlier version, checked line by line
    good = stored.read_text()
    record = json.loads(good.splitlines()[0])
    for text, says in [
            (good + "{not json\n", f"{stored}, line 11: not a valid JSON record"),
            (good + json.dumps({**record, "id": "zz"}) + "\n", f"{stored}, line 11: id 'zz' is not an answer"),
            (good + json.dumps(record) + "\n", f"{stored}, line 11: id '{record['id']}' is already labelled on line 1"),
            (json.dumps({**record, "human_label": "yes"}) + "\n", f"{stored}, line 1: human_label is 'yes', not true"),
            (json.dumps({k: v for k, v in record.items() if k != "answer_sha256"}) + "\n",
             f"{stored}, line 1: a label/2 record without the answer's answer_sha256"),
            (json.dumps({**record, "id": "q000", "human_label": False, "answer_sha256": q000.answer_sha256}) + "\n",
             f"{stored}: 1 label contradict the human labels imported with the answers")]:
        stored.write_text(text)
        with pytest.raises(PipelineError) as e:
            loaded(run_dir, answers)
        assert str(e.value).startswith(says), str(e.value)


def test_a_changed_frame_makes_old_draws_not_count(tmp_path):
    runs, run_dir, answers = new_run(tmp_path)
    read_back(runs, fill(sheet(runs, "label.n=40"), ["yes"] * 10))
    assert loaded(run_dir, answers).drawn_uniformly is True
    more = make_answers(251)
    write_run(runs, "r", more)  # the generate stage redone with one more answer
    got = loaded(run_dir, more)
    assert got.drawn_uniformly is False and len(got.by_id) == 10
    assert got.warnings == ["the draw of sheet-n40-seed0.csv (seed 0) was made from 250 answers that no longer match "
                            "the run's 251 answers (they changed since), so its labels do not count as a uniform "
                            "sample; draw a new sheet"]


@pytest.mark.parametrize("bom", [b"\xef\xbb\xbf", b""])
def test_a_sheet_saved_by_a_spreadsheet_reads(tmp_path, bom):
    runs, run_dir, answers = new_run(tmp_path, n=50)
    path = tmp_path / "saved.csv"
    path.write_bytes(bom + b"ID,notes,Human_Label\r\nq001,fine,Yes\r\nq002,,\r\n'q003,\"a, b\",incorrect\r\n,,\r\n")
    read_back(runs, path)
    assert loaded(run_dir, answers).by_id == {"q001": True, "q003": False}


# ------------------------------------------------------------------------------------------------ two processes

def test_two_processes_reading_sheets_at_once_both_land(tmp_path):
    runs, run_dir, answers = new_run(tmp_path, judged=True)
    one = fill(sheet(runs, "label.n=30", "label.seed=0"), ["1"] * 30)
    two = fill(sheet(runs, "label.n=30", "label.seed=1"), ["1"] * 30)
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline", "stage=label", "run_id=r", f"runs_dir={runs}",
                               f"label.sheet={p}", "report.plots=false"], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for p in (one, two)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    both = set(expected_draw(frame_ids(250), 30, 0)) | set(expected_draw(frame_ids(250), 30, 1))
    assert [r["id"] for r in read_jsonl(run_dir / "labels/labels.jsonl")] == sorted(both)
    got = loaded(run_dir, answers)
    assert got.drawn_uniformly is False and got.warnings == [
        "the labels come from draws of 2 seeds (0, 1): together they are not one uniform sample; label the sheets of "
        "one seed, in order"]


def test_a_read_back_waits_for_another_that_holds_the_lock(tmp_path):
    runs, run_dir, _ = new_run(tmp_path, n=60)
    path = fill(sheet(runs, "label.n=10"), ["no"] * 10)
    with StageLock(run_dir / ".locks/labels.lock", "labels"):
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "stage=label", "run_id=r", f"runs_dir={runs}",
                                 f"label.sheet={path}"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        said, deadline = "", time.monotonic() + 120
        while "waiting for it" not in said and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            said += line
        assert "another process is attaching labels; waiting for it" in said, said
        assert not (run_dir / "labels/labels.jsonl").exists()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert len(read_jsonl(run_dir / "labels/labels.jsonl")) == 10


# ------------------------------------------------------------------------------------------ labels bound to answers

def other_answers(n: int, changed: set[int] | None = None) -> list[GenerationRow]:
    """make_answers(n) with another prediction for each index in `changed` (all of them when None)."""
    return [replace(a, prediction=f"other {a.prediction}") if changed is None or int(a.id[1:]) in changed else a
            for a in make_answers(n)]


def test_a_sheet_from_another_run_with_the_same_ids_is_refused_naming_them(tmp_path):
    runs, _, _ = new_run(tmp_path, n=100, run_id="a")
    _, run_b, _ = new_run(tmp_path, run_id="b", answers=other_answers(100))  # the same questions, other answers
    path = fill(sheet(runs, "label.n=12", run_id="a"), ["yes"] * 12)
    ids = [r[0] for r in rows_of(path)[1:]]
    line = one_error_line(run_cli("stage=label", "run_id=b", f"runs_dir={runs}", f"label.sheet={path}",
                                  cwd=tmp_path))
    assert line.startswith(f"error: {path}: 12 labelled rows show answers that are not run b's answers of those ids "
                           f"({ids[0]!r} (line 2: prediction), {ids[1]!r} (line 3: prediction), "), line
    assert f"{ids[7]!r} (line 9: prediction) and 4 more)" in line and ids[8] not in line
    assert "drawn from another run" in line and "Nothing was attached" in line
    assert f"python -m pipeline stage=label label.n=12 label.seed=0 run_id=b runs_dir={runs}" in line
    assert not (run_b / "labels").exists()


def test_a_sheet_whose_prediction_was_edited_is_refused_naming_that_id(tmp_path):
    runs, run_dir, answers = new_run(tmp_path, n=60)
    path = fill(sheet(runs, "label.n=10"), ["yes"] * 8)
    rows = rows_of(path)
    rows[4][3] = "a better answer"  # labelled row, line 5
    rows[10][1] = "another question"  # an unlabelled row: nothing to check
    with open(path, "w", encoding="utf-8-sig", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(PipelineError) as e:
        read_back(runs, path)
    message = str(e.value)
    assert message.startswith(f"{path}: 1 labelled row shows an answer that is not run r's answer of that id "
                              f"({rows[4][0]!r} (line 5: prediction)); ") and "\n" not in message
    assert "edited" in message and f"move {path} away first" in message  # a new draw of n=10, seed 0 has its name
    assert not (run_dir / "labels/labels.jsonl").exists()
    rows[4][3] = rows[4][3].replace("a better answer", next(a.prediction for a in answers if a.id == rows[4][0]))
    with open(path, "w", encoding="utf-8-sig", newline="") as f:
        csv.writer(f).writerows(rows)
    read_back(runs, path)
    assert len(loaded(run_dir, answers).by_id) == 8


def test_every_unreadable_thing_on_a_sheet_is_counted_in_good_english(tmp_path):
    runs, run_dir, _ = new_run(tmp_path, n=60)
    rows = rows_of(sheet(runs, "label.n=10"))
    rows[1][4], rows[2][4] = "maybe", "perhaps"
    rows[3][0], rows[4][0] = "nope", "nada"
    rows[6][0] = rows[7][0] = rows[5][0]
    path = tmp_path / "bad.csv"
    with open(path, "w", encoding="utf-8-sig", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(PipelineError) as e:
        read_back(runs, path)
    assert f"{path}: 2 ids not in this run (line 4: 'nope', line 5: 'nada'); 2 ids appearing twice (" in str(e.value)
    assert "; 2 labels in an unreadable form (line 2: 'maybe', line 3: 'perhaps'); accepted: " in str(e.value)


def test_stored_labels_record_the_answer_they_labelled_and_a_manifest(tmp_path):
    runs, run_dir, answers = new_run(tmp_path, n=60)
    read_back(runs, fill(sheet(runs, "label.n=10"), ["yes"] * 10))
    stored = run_dir / "labels/labels.jsonl"
    of = {a.id: a for a in answers}
    records = read_jsonl(stored)
    assert len(records) == 10 and all(r["schema"] == "label/2" for r in records)
    assert all(r["answer_sha256"] == of[r["id"]].answer_sha256 for r in records)
    manifest = json.loads((run_dir / "labels/manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["records_file"] == {
        "name": "labels.jsonl", "records": 10, "sha256": hashlib.sha256(stored.read_bytes()).hexdigest()}


def test_labels_jsonl_edited_by_hand_is_refused_by_its_checksum(tmp_path):
    runs, run_dir, answers = new_run(tmp_path, n=60)
    read_back(runs, fill(sheet(runs, "label.n=10"), ["yes"] * 10))
    stored = run_dir / "labels/labels.jsonl"
    stored.write_text(stored.read_text().replace('"human_label": true', '"human_label": false', 1))
    for attempt in (lambda: loaded(run_dir, answers), lambda: sheet(runs, "label.n=20"),
                    lambda: read_back(runs, run_dir / "labels/sheet-n10-seed0.csv")):
        with pytest.raises(PipelineError) as e:
            attempt()
        message = str(e.value)
        assert message.startswith(f"{stored} is not the file stage=label wrote: its sha256 differs from the one in "
                                  f"{run_dir / 'labels/manifest.json'} (10 labels)") and "\n" not in message
        assert "Restore it" in message and "read the sheets back again" in message


def legacy_labels(run_dir, sheet_path, count_: int) -> list[dict]:
    """labels.jsonl as the previous version wrote it (label/1, no manifest), for the first rows of a filled sheet."""
    rows, digest = rows_of(sheet_path)[1:], hashlib.sha256(sheet_path.read_bytes()).hexdigest()
    return [{"schema": "label/1", "id": r[0], "human_label": labels.parse_label(r[4]), "sheet": sheet_path.name,
             "sheet_sha256": digest, "line": k} for k, r in enumerate(rows[:count_], 2)]


def test_labels_of_the_previous_version_are_read_with_a_warning_and_sealed_by_reading_their_sheet(tmp_path, capsys):
    runs, run_dir, answers = new_run(tmp_path)
    first = fill(sheet(runs, "label.n=10"), ["yes", "no"] * 5)
    second = fill(sheet(runs, "label.n=5", "label.seed=1"), ["no"] * 5)
    old = legacy_labels(run_dir, first, 10)
    old += [r for r in legacy_labels(run_dir, second, 5) if r["id"] not in {o["id"] for o in old}]
    stored = run_dir / "labels/labels.jsonl"
    stored.write_text("".join(json.dumps(r) + "\n" for r in old))
    got = loaded(run_dir, answers)
    assert got.by_id == {r["id"]: r["human_label"] for r in old}  # read, not refused
    assert got.warnings[0] == (f"{stored} was written by an earlier version: it has no manifest and its {len(old)} "
                               "labels do not record which answer they labelled, so none can be checked; read each "
                               "of its sheets back again (stage=label label.sheet=<sheet>) to seal it and bind them "
                               "(sheets: sheet-n10-seed0.csv, sheet-n5-seed1.csv)")
    capsys.readouterr()
    read_back(runs, first)  # seals the file, and binds the labels of that sheet to the answers it shows
    assert (run_dir / "labels/manifest.json").is_file()
    assert "sheet-n10-seed0.csv: bound 10 earlier labels to the answers it shows, 10 already attached" in \
        capsys.readouterr().out
    got = loaded(run_dir, answers)
    assert got.by_id == {r["id"]: r["human_label"] for r in old}
    assert len(old) - 10 == 5  # (the two draws share no id)
    assert got.warnings[0] == ("5 labels (label/1, from an earlier version) do not record "
                               "which answer they labelled, so they cannot be checked against the run's answers; read "
                               "sheet-n5-seed1.csv back again to bind them")
    read_back(runs, second)
    assert all(r["schema"] == "label/2" for r in read_jsonl(stored))
    assert not any("label/1" in w or "earlier version" in w for w in loaded(run_dir, answers).warnings)


def test_labels_of_answers_changed_since_are_left_out_with_a_warning(tmp_path):
    from pipeline import report

    runs, run_dir, answers = new_run(tmp_path, judged=True)
    path = fill(sheet(runs, "label.n=40"), ["yes"] * 40)
    read_back(runs, path)
    drawn = [r[0] for r in rows_of(path)[1:]]
    changed = {int(i[1:]) for i in drawn[:3]}
    now = other_answers(250, changed)  # the answers regenerated (overwrite=true): three of the labelled ones differ
    write_run(runs, "r", now, {"j": [verdict_row(a.id, "j", "correct", 0.9) for a in now]})
    got = loaded(run_dir, now)
    assert len(got.by_id) == 37 and not set(drawn[:3]) & set(got.by_id)
    gone = sorted(drawn[:3])
    warning = (f"3 labels were given to answers that have changed since (ids {', '.join(map(repr, gone))}): the run's "
               "answers were regenerated or edited after labelling, so those labels are left out; label the new "
               "answers with a new sheet (stage=label label.n=...)")
    assert warning in got.warnings and got.drawn_uniformly is False
    assert all(a.human_label is None for a in labels.with_labels(now, got) if a.id in gone)
    report.write(run_dir, "j", report.settings(cfg(runs)))
    assert warning in pd.read_csv(run_dir / "judge/j/summary.csv").labels_warnings.item()
    fresh = sheet(runs, "label.n=41")  # the changed answers are not prefilled with the old labels, the others are
    assert [r[4] for r in rows_of(fresh)[1:]] == [""] * 3 + ["true"] * 37 + [""]
    with pytest.raises(PipelineError, match="3 labelled rows show answers that are not run r's answers"):
        read_back(runs, path)  # the old sheet shows the old answers
    read_back(runs, fill(fresh, {i: "no" for i in gone}))  # the new answers labelled: the old labels are replaced
    got = loaded(run_dir, now)
    assert [got.by_id[i] for i in gone] == [False] * 3 and not any("changed since" in w for w in got.warnings)
    kept = list((run_dir / "replaced").glob("*/labels/labels.jsonl"))
    assert len(kept) == 1 and {r["id"] for r in read_jsonl(kept[0])} == set(drawn)
