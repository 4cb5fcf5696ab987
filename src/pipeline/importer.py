"""stage=import: answers made elsewhere (vLLM, an API, an old run) become a run, judged and reported like any other.

    python -m pipeline stage=import predictions=path/to/file.jsonl
    python -m pipeline stage=import predictions=out.csv import_fields.prediction=output import_fields.label=human \
        run_id=nq-vllm
    python -m pipeline stage=judge run_id=nq-vllm judge=llama70b-8bit
    python -m pipeline stage=import predictions=graded.csv import_fields.verdict=gpt4_verdict \
        import_fields.p_correct=gpt4_p import_fields.verdict_judge=gpt4 run_id=nq-gpt4
    python -m pipeline stage=report report.runs=[nq-gpt4]
    python -m pipeline stage=import predictions=gpt4_graded.csv import_fields.verdict=gpt4_verdict \
        import_fields.verdict_judge=gpt4 run_id=nq-smollm2   # onto the answers of a run stage=generate made

The file (JSONL, JSON, CSV or Parquet, read by `datasets.load_dataset`) needs a question, the reference answers and
the prediction; optionally an id and a human correctness label. They become runs/<run_id>/generate/
generations.jsonl records (rows.GenerationRow) without token log-probabilities, plus `human_label`.

Another judge's verdicts on the same answers (import_fields.verdict, optionally import_fields.p_correct) become a
finished judge stage runs/<run_id>/judge/<import_fields.verdict_judge>/verdicts.jsonl (rows.VerdictRow, mode
"external"), reported like our own judges. A verdict takes the human label's forms (true/false, yes/no, ...); an
empty cell is an invalid verdict (left out of the accuracy, never counted as wrong); anything else is refused, as is
a P(correct) that is not a number in [0, 1]. Every row is checked before anything is written, and each stage is
written once: the same command again does nothing, and an interrupted one resumes.

Where run_id names a run whose answers something else made (stage=generate, another file), only the verdicts join
it, by id: a row per answer, no other id, the run's prediction where the file has one (no questions or references
needed; labels not imported; overwrite=true redoes only that judge); without import_fields.verdict it is refused.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path

from omegaconf import OmegaConf

from . import report
from .binding import answer_hashes, bind
from .config import DatasetConfig, check_name
from .data import (FieldMap, QAItem, as_text, content_hash, delimited_reference, get_field, load_rows, read_item,
                   refuse_bad_rows, require_fields, warn_if_delimited)
from .errors import PipelineError, plural, preview
from .files import sha256_file
from .overrides import given_on_command_line
from .rows import GenerationRow, VerdictRow, parse_rows
from .runner import StageJob
from .runs import StageDir, check_run_id, diff_fingerprints, make_run, new_run_id
from .shards import Shard
from .verdict import CORRECT, INCORRECT, INVALID

log = logging.getLogger(__name__)

TRUE_LABELS = ("true", "1", "yes", "y", "correct", "right", "t")
FALSE_LABELS = ("false", "0", "no", "n", "incorrect", "wrong", "f")
LABEL_COLUMNS = ("human_label", "label")  # import_fields.label=auto takes the first of these that the file has
ACCEPTED = ("Accepted (any case): true/false, 1/0, yes/no, y/n, correct/incorrect, right/wrong, t/f, or an empty "
            "cell for {empty}.")
VERDICT_KEYS = ("verdict", "p_correct", "verdict_judge")  # import_fields that decide the verdicts, not the answers
NA_CELLS = ("", "nan", "none", "null", "na", "n/a", "<na>", "#n/a")  # what a CSV reader turns into an empty cell

def parse_label(value) -> bool | None:
    """A human correctness label as a bool; None when the cell is empty. ValueError for anything else."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool) or (isinstance(value, (int, float)) and value in (0, 1)):
        return bool(value)
    text = str(value).strip().lower()
    if text not in ("", *TRUE_LABELS, *FALSE_LABELS):
        raise ValueError(value)
    return None if text == "" else text in TRUE_LABELS


def open_file(cfg) -> tuple[Path, object, str]:
    """The predictions file, read: (path, rows, how to name it in messages)."""
    if not cfg.predictions:
        raise PipelineError("stage=import needs the file to import: predictions=path/to/answers.jsonl "
                            "(JSONL, JSON, CSV or Parquet with question, references and prediction columns).")
    path = Path(cfg.predictions).expanduser()
    if path.is_dir():
        raise PipelineError(f"predictions={cfg.predictions!r}: is a folder, not a file; name the file of answers in "
                            f"it (predictions={str(cfg.predictions).rstrip('/')}/<file>.jsonl).")
    if not path.is_file():
        raise PipelineError(f"predictions={cfg.predictions!r}: no such file ({path.resolve()}).")
    ds, where = load_rows(DatasetConfig(name=path.stem, path=str(path)), "predictions")
    if len(ds) == 0:
        raise PipelineError(f"{where}: the file has no rows; there is nothing to import.")
    return path, ds, where


def label_column(f, ds, where: str) -> str | None:
    if f.label != "auto":
        return f.label
    found = next((c for c in LABEL_COLUMNS if c in ds.column_names), None)
    if found:
        log.info("%s: reading human labels from its %r column (import_fields.label=null ignores it)", where, found)
    return found


def read_answers(cfg, ds, name: str, where: str) -> list[GenerationRow]:
    """Every row as an imported answer, checked like a data set's rows, plus its prediction and label."""
    f = cfg.import_fields
    fields = FieldMap("import_fields", f.question, tuple(f.answers), f.id, f.answers_sep, tuple(f.keep))
    label_field = label_column(f, ds, where)
    require_fields(ds, fields.wanted() | ({"import_fields.prediction": f.prediction} |
                                          ({"import_fields.label": label_field} if label_field else {})), where)
    rows, items, problems, bad_labels, delimited = [], [], [], [], []
    for i, row in enumerate(ds):
        item, bad = read_item(row, i, fields, name, where)
        if found := delimited_reference(row, fields):
            delimited.append((i + 1, item.id, *found))
        prediction = get_field(row, f.prediction)
        if not (isinstance(prediction, (str, int, float, bool)) or prediction is None):
            bad.append(f"row {i + 1} (id {item.id}): prediction is {type(prediction).__name__}, not text")
            prediction = None
        prediction = as_prediction(prediction)
        label = None
        if label_field is not None:
            try:
                label = parse_label(get_field(row, label_field))
            except ValueError:
                bad_labels.append(f"row {i + 1} (id {item.id}): {get_field(row, label_field)!r}")
        items.append(item)
        problems += bad
        rows.append(GenerationRow.answer(item.id, item.question, item.references, prediction, i, label, item.meta))
    if bad_labels:
        raise PipelineError(f"{where}: {plural(len(bad_labels), 'human label')} in column {label_field!r} not in a "
                            f"recognised form: {preview(bad_labels, 6)}. {ACCEPTED.format(empty='no label')}")
    refuse_bad_rows(items, problems, where, fields)
    warn_if_delimited(delimited, len(items), fields, where)
    return rows


def as_prediction(value) -> str:
    """A prediction cell exactly as written: its white space is part of the answer (" =1+1" is not "=1+1"). Only
    white space, None or NaN is an empty answer."""
    text = as_text(value, strip=False)
    return text if text.strip() else ""


# ------------------------------------------------------------------------------------------ external verdicts

def check_verdict_settings(f) -> None:
    """Before the file is read: a P(correct) column only with a verdict column, and a judge name that is a folder."""
    if f.verdict is not None:
        check_name("import_fields.verdict_judge", f.verdict_judge)
    if f.p_correct is not None and f.verdict is None:
        raise PipelineError(f"import_fields.p_correct={f.p_correct!r} needs import_fields.verdict=<column> too: a "
                            "P(correct) belongs to a judge's verdicts. Name the verdict column as well, or drop "
                            "import_fields.p_correct.")


def parse_p_correct(value) -> float | None:
    """A P(correct) cell as a float in [0, 1]; None when it is empty or NaN. ValueError (TypeError for a yes/no, a
    list, ...) for anything else."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):  # a yes/no is a verdict, not a number
        raise TypeError(value)
    value = float(value)  # ValueError for text that is no number
    if not math.isnan(value) and not 0.0 <= value <= 1.0:
        raise ValueError(value)
    return None if math.isnan(value) else value


def read_verdicts(f, ds, ids: list[str], where: str) -> list[VerdictRow] | None:
    """Each row's verdict (and P(correct)) as a VerdictRow of judge import_fields.verdict_judge, `ids` the rows' ids;
    None without import_fields.verdict. Cells in no accepted form are refused, all of them named at once."""
    if f.verdict is None:
        return None
    require_fields(ds, {"import_fields.verdict": f.verdict} |
                   ({"import_fields.p_correct": f.p_correct} if f.p_correct is not None else {}), where)
    rows, bad_verdicts, bad_p = [], [], []
    for i, (row, rid) in enumerate(zip(ds, ids)):
        cell = get_field(row, f.verdict)
        try:
            label = parse_label(cell)
        except ValueError:
            bad_verdicts.append(f"row {i + 1} (id {rid}): {cell!r}")
            label = False
        verdict = INVALID if label is None else CORRECT if label else INCORRECT
        reason = f"no verdict in column {f.verdict!r}" if label is None else None
        p_correct = None
        if f.p_correct is not None:
            p_cell = get_field(row, f.p_correct)
            try:
                p_correct = parse_p_correct(p_cell)
            except (ValueError, TypeError):
                bad_p.append(f"row {i + 1} (id {rid}): {p_cell!r}")
        rows.append(VerdictRow(id=rid, judge=f.verdict_judge, mode="external", prompt_name=f"import:{f.verdict}",
                               prompt_version=1, verdict=verdict, invalid_reason=reason, p_correct=p_correct,
                               verdict_mass=None, reply=as_text(cell), finish_reason=None))
    if bad_verdicts:
        raise PipelineError(f"{where}: {plural(len(bad_verdicts), 'verdict')} in column {f.verdict!r} "
                            f"(import_fields.verdict) not in a recognised form: {preview(bad_verdicts, 6)}. "
                            f"{ACCEPTED.format(empty='an invalid verdict')} Fix those cells, or point "
                            "import_fields.verdict at the right column.")
    if bad_p:
        raise PipelineError(f"{where}: {plural(len(bad_p), 'P(correct) value')} in column {f.p_correct!r} "
                            f"(import_fields.p_correct) not a number in [0, 1]: {preview(bad_p, 6)}. Write each as a "
                            "number from 0 to 1 (e.g. 0.7), leave the cell empty for none, or set "
                            "import_fields.p_correct=null.")
    return rows


def counts(verdicts: list[VerdictRow]) -> dict[str, int]:
    return {k: sum(v.verdict == k for v in verdicts) for k in (CORRECT, INCORRECT, INVALID)}


# ----------------------------------------------------------------------------- verdicts onto an existing run

def made_by(gen: StageDir) -> str:
    m = gen.manifest()
    return f"imported from {m['imported_from'].get('path')}" if isinstance(m.get("imported_from"), dict) else \
        f"made by stage=generate with generator {m.get('generator', {}).get('name')!r}"


def other_answers(cfg, source: dict) -> StageDir | None:
    """run_id's finished generate stage where something other than this import made it (stage=generate, another
    file or other columns); None where there is none, or this import made it. Without import_fields.verdict: refused."""
    gen = StageDir(Path(cfg.runs_dir) / check_run_id(cfg.run_id) / "generate", "generations.jsonl") \
        if cfg.run_id else None
    if gen is None or not gen.is_complete() or not diff_fingerprints(gen.manifest().get("fingerprint", {}),
                                                                     answers_fingerprint(cfg, source)):
        return None
    if cfg.import_fields.verdict is None and not cfg.overwrite:  # overwrite=true replaces the answers, as before
        raise PipelineError(f"run {cfg.run_id} already holds answers {made_by(gen)} ({gen.path}/). To add an external "
                            "judge's verdicts on them, name its column with import_fields.verdict=<column> (matched by "
                            "id); to import this file's answers, choose another run_id (or overwrite=true replaces "
                            "the run's answers and judges, moving them to replaced/).")
    return gen if cfg.import_fields.verdict is not None else None


def has_field(ds, dotted: str | None) -> bool:
    if dotted is None:
        return False
    try:
        get_field(ds[0], dotted)
    except KeyError:
        return False
    return True


def same_prediction(cell, stored: str) -> bool:
    """A cell holds the run's prediction: the same text, or what a CSV reader made of it (a number, an empty cell)."""
    if as_text(cell) == as_text(stored) or (as_text(cell) == "" and stored.strip().lower() in NA_CELLS):
        return True
    try:
        return isinstance(cell, (int, float)) and not isinstance(cell, bool) and float(stored) == cell
    except ValueError:
        return False


def refuse_unmatched(f, ds, ids: list[str], answers: list[GenerationRow], where: str, run: str) -> None:
    """Each answer of the run once, no other id and, where the file has the prediction column, the run's answer in
    each row; anything else is refused in one line naming the rows."""
    stored, rows = {a.id: a.prediction for a in answers}, {}
    for i, rid in enumerate(ids, 1):
        rows.setdefault(rid, []).append(i)
    twice = [f"id {k!r} at rows {v}" for k, v in rows.items() if len(v) > 1]
    unknown = [f"row {v[0]} (id {k!r})" for k, v in rows.items() if k not in stored]
    missing = [k for k in stored if k not in rows]
    other = [] if unknown or not has_field(ds, f.prediction) else [
        f"row {i} (id {rid!r})" for i, (row, rid) in enumerate(zip(ds, ids), 1)
        if not same_prediction(get_field(row, f.prediction), stored[rid])]
    n = len(stored)
    problems = [f"{text} ({preview(found, 6)}){why}" for found, text, why in (
        (twice, f"{plural(len(twice), 'id')} appearing more than once", ": a judge gives one verdict per answer"),
        (unknown, f"{plural(len(unknown), 'id')} not among run {run}'s {n} answers", ""),
        (missing, f"{len(missing)} of run {run}'s {n} answers with no row", (": a judge must cover every answer, so "
                  "the file must have a row per answer (an empty verdict cell for one not graded)")),
        (other, (f"{plural(len(other), 'row')} whose prediction (column {f.prediction!r}) is not the run's answer "
                 "for that id"), ": verdicts made for other answers")) if found]
    if problems:
        raise PipelineError(f"{where}: {'; '.join(problems)}. Nothing was imported: the verdicts must be on run "
                            f"{run}'s own answers (its samples.csv lists them with their ids); check run_id and "
                            "import_fields.id.")


def import_onto(cfg, gen: StageDir, ds, where: str, source: dict) -> Path:
    """The file's verdicts on the answers of an existing run, matched by id, become a judge stage of that run, in
    its answers' order; its answers are left as they are. Returns the judge stage."""
    f, run_dir = cfg.import_fields, gen.path.parent
    if not has_field(ds, f.id):
        raise PipelineError(f"{where}: ids are needed to match verdicts to a run's answers (run {run_dir.name}'s, "
                            f"{made_by(gen)}), and it has no id column{f' {f.id!r}' if f.id else ''}. Its columns: "
                            f"{', '.join(ds.column_names)}; map the ids with import_fields.id=<column>.")
    ids = [as_text(get_field(row, f.id)) for row in ds]
    by_id = {v.id: v for v in read_verdicts(f, ds, ids, where)}
    answers = parse_rows(GenerationRow, gen.read_records(), gen.records_path)
    refuse_unmatched(f, ds, ids, answers, where, run_dir.name)
    verdicts = bind([by_id[a.id] for a in answers], answer_hashes(answers))  # each bound to the answer it judged
    judged = verdicts_job(cfg, run_dir, source, verdicts)
    if judged.finished():
        write_report(cfg, judged, if_missing=True)
        return judged.stage.path
    label = f.label if f.label != "auto" else next((c for c in LABEL_COLUMNS if c in ds.column_names), None)
    if has_field(ds, label) and any(as_text(get_field(row, label)) for row in ds):
        log.info("%s: its human labels (column %r) are not imported, only its verdicts; attach them with "
                 "stage=label run_id=%s label.sheet=<CSV of id,human_label>", where, label, run_dir.name)
    extra = {"onto_run": True, "answers_sha256": gen.manifest().get("records_file", {}).get("sha256")}
    if write_verdicts(cfg, judged, verdicts, source, extra):
        say_imported(cfg, run_dir, source["path"], answers, verdicts, onto=made_by(gen))
    return judged.stage.path


# ------------------------------------------------------------------------------------------------ the stages

def answers_fingerprint(cfg, source: dict) -> dict:
    """The generate stage's settings; they leave the verdict columns out, so that verdicts can be added later."""
    fields = {k: v for k, v in OmegaConf.to_container(cfg.import_fields).items() if k not in VERDICT_KEYS}
    for key in ("answers_sep", "keep"):  # unset: as in runs imported before the setting existed
        if not fields.get(key):
            fields.pop(key, None)
    return {"import": {**source, "fields": fields}}


def verdicts_job(cfg, run_dir: Path, source: dict, verdicts: list[VerdictRow]) -> StageJob:
    f = cfg.import_fields
    fingerprint = {"import": {"sha256": source["sha256"], "verdict": f.verdict, "p_correct": f.p_correct}}
    return StageJob(cfg, run_dir, StageDir(run_dir / "judge" / f.verdict_judge, "verdicts.jsonl"), Shard(0, 1),
                    fingerprint, [v.id for v in verdicts])


def write_answers(job: StageJob, answers: list[GenerationRow], source: dict, data_info: dict) -> bool:
    """Write the generate stage; False when another process finished it meanwhile."""
    with job.attempt() as attempt:
        if attempt is None:
            return False
        left = set(attempt.todo)
        attempt.write([[a for a in answers if a.id in left]], lambda batch: batch, desc="import", unit="answer")
        attempt.finish("generate", GenerationRow.SCHEMA, {
            "imported_from": source, "human_labels": sum(a.human_label is not None for a in answers),
            "expected_total": len(answers), "dataset": data_info, "generator": {"name": f"import:{data_info['name']}"},
            "finished_import": time.time()})
    return True


def write_verdicts(cfg, job: StageJob, verdicts: list[VerdictRow], source: dict, extra: dict | None = None) -> bool:
    """Write the verdicts' judge stage (+ `extra` in its manifest), then its report; False if done meanwhile."""
    f = cfg.import_fields
    with job.attempt() as attempt:
        if attempt is None:
            return False
        left = set(attempt.todo)
        attempt.write([[v for v in verdicts if v.id in left]], lambda batch: batch, desc="import verdicts",
                      unit="verdict")
        attempt.finish("judge", VerdictRow.SCHEMA, {
            "judge": {"name": job.stage.path.name, "mode": "external", "verdict_column": f.verdict,
                      "p_correct_column": f.p_correct, "threshold": None},
            "prompt": {"name": f"import:{f.verdict}", "version": 1},
            "imported_from": source, "verdicts": counts(verdicts),
            "p_correct_given": sum(v.p_correct is not None for v in verdicts), "expected_total": len(verdicts),
            **(extra or {}), "finished_import": time.time()})
    write_report(cfg, job)  # after the attempt: a report that fails never touches the finished stage
    return True


def write_report(cfg, job: StageJob | None, if_missing: bool = False) -> None:
    """The imported judge's results, as stage=judge writes them, and the digest; `if_missing`: only where they are
    missing or stale (a finished stage killed while reporting), taking the stage's lock."""
    if job is None or (if_missing and report.results_present(job.stage.path)):
        return
    with job.stage.lock() if if_missing else contextlib.nullcontext():
        report.write_and_print(job.run_dir, job.stage.path.name, report.settings(cfg))


def say_imported(cfg, run_dir: Path, path, answers: list[GenerationRow], verdicts: list[VerdictRow] | None,
                 onto: str | None = None) -> None:
    """What was imported, and what to run next; `onto`: who made the answers of the run the verdicts joined."""
    f, run, labelled = cfg.import_fields, run_dir.name, sum(a.human_label is not None for a in answers)
    if verdicts is None:
        print(f"imported {len(answers)} answers ({labelled} with human labels) from {path} as run {run}; judge them "
              f"with: python -m pipeline stage=judge run_id={run}")
        return
    n, with_p, p_from = counts(verdicts), sum(v.p_correct is not None for v in verdicts), \
        f" from column {f.p_correct!r}" if f.p_correct else ""
    said = (f"{len(verdicts)} verdicts of judge {f.verdict_judge!r} from column {f.verdict!r}: {n[CORRECT]} correct, "
            f"{n[INCORRECT]} incorrect, {n[INVALID]} invalid (empty cells, left out of the accuracy), {with_p} with a "
            f"P(correct){p_from}; in {run_dir / 'judge' / f.verdict_judge}/\nnext: ")
    print(f"imported onto run {run}'s {len(answers)} answers ({onto}), from {path}: {said}compare it with the run's "
          f"other judges: python -m pipeline stage=report report.runs=[{run}]" if onto else
          f"imported from {path} as run {run}: {len(answers)} answers ({labelled} with human labels); {said}add our "
          f"own judge with python -m pipeline stage=judge run_id={run}; the leaderboard with python -m pipeline "
          f"stage=report report.runs=[{run}]")


def run(cfg) -> Path:
    """stage=import: the answers become the run's generate stage (returned) and, with import_fields.verdict, the
    verdicts a finished judge stage; onto a run made otherwise, only that (returned). All rows are checked first."""
    check_verdict_settings(cfg.import_fields)
    path, ds, where = open_file(cfg)
    source = {"path": str(path.resolve()), "sha256": sha256_file(path)}
    other = other_answers(cfg, source)
    if other is not None:
        return import_onto(cfg, other, ds, where, source)
    answers = read_answers(cfg, ds, path.stem, where)
    verdicts = read_verdicts(cfg.import_fields, ds, [a.id for a in answers], where)
    if verdicts is not None:
        verdicts = bind(verdicts, answer_hashes(answers))
    items = [QAItem(a.id, a.question, tuple(a.references)) for a in answers]
    # the data set's name: the file's, unless the command says (dataset=nq_open, dataset.name=...): runs over the same
    # questions are grouped by their fingerprint anyway, and named by every name they were given
    name = str(cfg.dataset.name) if given_on_command_line("dataset", "dataset.name") else path.stem
    data_info = {"name": name, "source": where, "rows_in_source": len(ds), "rows_used": len(answers),
                 "content_sha256": content_hash(items)}
    run_dir, new_run = make_run(Path(cfg.runs_dir), cfg.run_id or new_run_id("import", path.stem))
    job = StageJob(cfg, run_dir, StageDir(run_dir / "generate", "generations.jsonl"), Shard(0, 1),
                   answers_fingerprint(cfg, source), [a.id for a in answers], also_replace=(run_dir / "judge", run_dir / "metrics.csv"),
                   new_run=new_run, points_latest=True)
    judged = verdicts_job(cfg, run_dir, source, verdicts) if verdicts is not None else None
    answers_done = job.finished()  # each refuses a finished stage made with other settings, before any writing
    verdicts_done = judged is None or judged.finished()
    if answers_done and verdicts_done:
        log.info("run %s: %s is already imported; nothing to do", run_dir.name, path)
        write_report(cfg, judged, if_missing=True)
        return job.stage.path
    wrote = not answers_done and write_answers(job, answers, source, data_info)
    if judged is not None and not verdicts_done:
        wrote = write_verdicts(cfg, judged, verdicts, source) or wrote
    if wrote:
        say_imported(cfg, run_dir, path, answers, verdicts)
    return job.stage.path
