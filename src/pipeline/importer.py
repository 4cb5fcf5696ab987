"""stage=import: answers produced elsewhere (vLLM, an API, an old run) become a run, judged and reported like any
other.

    python -m pipeline stage=import predictions=path/to/file.jsonl
    python -m pipeline stage=import predictions=out.csv import_fields.prediction=output import_fields.label=human \
        run_id=nq-vllm
    python -m pipeline stage=judge run_id=nq-vllm judge=llama70b-8bit
    python -m pipeline stage=import predictions=graded.csv import_fields.verdict=gpt4_verdict \
        import_fields.p_correct=gpt4_p import_fields.verdict_judge=gpt4 run_id=nq-gpt4
    python -m pipeline stage=report report.runs=[nq-gpt4]

The file (JSONL, JSON, CSV or Parquet, read by `datasets.load_dataset`) needs a question, the reference answers and
the prediction; optionally an id and a human correctness label. They become runs/<run_id>/generate/
generations.jsonl records (rows.GenerationRow) without token log-probabilities, plus `human_label`.

Another judge's verdicts on the same answers (import_fields.verdict, optionally import_fields.p_correct) become a
finished judge stage runs/<run_id>/judge/<import_fields.verdict_judge>/verdicts.jsonl (rows.VerdictRow, mode
"external"), reported like our own judges. A verdict takes the human label's forms (true/false, yes/no, ...); an
empty cell is an invalid verdict (left out of the accuracy, never counted as wrong); anything else is refused, as is
a P(correct) that is not a number in [0, 1]. Every row is checked before anything is written, and each stage is
written once: the same command again does nothing, and an interrupted one resumes.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from omegaconf import OmegaConf

from . import report
from .config import DatasetConfig, check_name
from .data import FieldMap, QAItem, as_text, content_hash, get_field, load_rows, read_item, refuse_bad_rows, require_fields
from .errors import PipelineError, plural, preview
from .files import sha256_file
from .rows import GenerationRow, VerdictRow
from .runner import StageJob
from .runs import StageDir, create_run, new_run_id
from .shards import Shard
from .verdict import CORRECT, INCORRECT, INVALID

log = logging.getLogger(__name__)

TRUE_LABELS = ("true", "1", "yes", "y", "correct", "right", "t")
FALSE_LABELS = ("false", "0", "no", "n", "incorrect", "wrong", "f")
LABEL_COLUMNS = ("human_label", "label")  # import_fields.label=auto takes the first of these that the file has
ACCEPTED = ("Accepted (any case): true/false, 1/0, yes/no, y/n, correct/incorrect, right/wrong, t/f, or an empty "
            "cell for {empty}.")
VERDICT_KEYS = ("verdict", "p_correct", "verdict_judge")  # import_fields that decide the verdicts, not the answers

def parse_label(value) -> bool | None:
    """A human correctness label as a bool; None when the cell is empty. ValueError for anything else."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text == "":
        return None
    if text in TRUE_LABELS:
        return True
    if text in FALSE_LABELS:
        return False
    raise ValueError(value)


def open_file(cfg) -> tuple[Path, object, str]:
    """The predictions file, read: (path, rows, how to name it in messages)."""
    if not cfg.predictions:
        raise PipelineError("stage=import needs the file to import: predictions=path/to/answers.jsonl "
                            "(JSONL, JSON, CSV or Parquet with question, references and prediction columns).")
    path = Path(cfg.predictions).expanduser()
    if not path.is_file():
        raise PipelineError(f"predictions={cfg.predictions!r}: no such file ({path.resolve()}).")
    ds, where = load_rows(DatasetConfig(name=path.stem, path=str(path)))
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
    fields = FieldMap("import_fields", f.question, tuple(f.answers), f.id)
    label_field = label_column(f, ds, where)
    require_fields(ds, fields.wanted() | ({"import_fields.prediction": f.prediction} |
                                          ({"import_fields.label": label_field} if label_field else {})), where)
    rows, items, problems, bad_labels = [], [], [], []
    for i, row in enumerate(ds):
        item, bad = read_item(row, i, fields, name, where)
        prediction = get_field(row, f.prediction)
        if isinstance(prediction, (str, int, float, bool)) or prediction is None:
            prediction = as_text(prediction)
        else:
            bad.append(f"row {i + 1} (id {item.id}): prediction is {type(prediction).__name__}, not text")
            prediction = ""
        label = None
        if label_field is not None:
            try:
                label = parse_label(get_field(row, label_field))
            except ValueError:
                bad_labels.append(f"row {i + 1} (id {item.id}): {get_field(row, label_field)!r}")
        items.append(item)
        problems += bad
        rows.append(GenerationRow.answer(item.id, item.question, item.references, prediction, i, label))
    if bad_labels:
        raise PipelineError(
            f"{where}: {plural(len(bad_labels), 'human label')} in column {label_field!r} not in a recognised form: "
            f"{preview(bad_labels, 6)}. {ACCEPTED.format(empty='no label')}"
        )
    refuse_bad_rows(items, problems, where, fields)
    return rows


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
    if value is None:
        return None
    if isinstance(value, bool):  # a yes/no is a verdict, not a probability
        raise TypeError(value)
    if isinstance(value, str):
        if value.strip() == "":
            return None
        value = float(value.strip())  # ValueError for text that is no number
    if not isinstance(value, (int, float)):
        raise TypeError(value)
    if math.isnan(value):
        return None
    if not 0.0 <= value <= 1.0:
        raise ValueError(value)
    return float(value)


def verdict_of(value, column: str) -> tuple[str, str | None]:
    """(verdict, invalid_reason) of a verdict cell; ValueError for a value in no accepted form."""
    label = parse_label(value)
    if label is None:
        return INVALID, f"no verdict in column {column!r}"
    return (CORRECT if label else INCORRECT), None


def read_verdicts(f, ds, answers: list[GenerationRow], where: str) -> list[VerdictRow] | None:
    """Every row's verdict (and P(correct)) as a VerdictRow of judge import_fields.verdict_judge, in the answers'
    order; None without import_fields.verdict. Cells in no accepted form are refused, all of them named at once."""
    if f.verdict is None:
        return None
    require_fields(ds, {"import_fields.verdict": f.verdict} |
                   ({"import_fields.p_correct": f.p_correct} if f.p_correct is not None else {}), where)
    rows, bad_verdicts, bad_p = [], [], []
    for i, (row, answer) in enumerate(zip(ds, answers)):
        cell = get_field(row, f.verdict)
        try:
            verdict, reason = verdict_of(cell, f.verdict)
        except ValueError:
            bad_verdicts.append(f"row {i + 1} (id {answer.id}): {cell!r}")
            verdict, reason = INVALID, None
        p_correct = None
        if f.p_correct is not None:
            p_cell = get_field(row, f.p_correct)
            try:
                p_correct = parse_p_correct(p_cell)
            except (ValueError, TypeError):
                bad_p.append(f"row {i + 1} (id {answer.id}): {p_cell!r}")
        rows.append(VerdictRow(id=answer.id, judge=f.verdict_judge, mode="external", prompt_name=f"import:{f.verdict}",
                               prompt_version=1, verdict=verdict, invalid_reason=reason, p_correct=p_correct,
                               verdict_mass=None, reply=as_text(cell), finish_reason=None))
    if bad_verdicts:
        raise PipelineError(
            f"{where}: {plural(len(bad_verdicts), 'verdict')} in column {f.verdict!r} (import_fields.verdict) not in "
            f"a recognised form: {preview(bad_verdicts, 6)}. {ACCEPTED.format(empty='an invalid verdict')} Fix "
            "those cells, or point import_fields.verdict at the right column."
        )
    if bad_p:
        raise PipelineError(
            f"{where}: {plural(len(bad_p), 'P(correct) value')} in column {f.p_correct!r} (import_fields.p_correct) "
            f"not a number in [0, 1]: {preview(bad_p, 6)}. Write each as a number from 0 to 1 (e.g. 0.7), leave the "
            "cell empty for none, or set import_fields.p_correct=null."
        )
    return rows


def counts(verdicts: list[VerdictRow]) -> dict[str, int]:
    return {k: sum(v.verdict == k for v in verdicts) for k in (CORRECT, INCORRECT, INVALID)}


# ------------------------------------------------------------------------------------------------ the stages

def answers_job(cfg, run_dir: Path, source: dict, answers: list[GenerationRow]) -> StageJob:
    """The generate stage; its fingerprint leaves the verdict columns out, so that verdicts can be added later."""
    fields = {k: v for k, v in OmegaConf.to_container(cfg.import_fields).items() if k not in VERDICT_KEYS}
    return StageJob(cfg, run_dir, StageDir(run_dir / "generate", "generations.jsonl"), Shard(0, 1),
                    {"import": {**source, "fields": fields}}, [a.id for a in answers],
                    also_replace=(run_dir / "judge",))


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


def write_verdicts(cfg, job: StageJob, verdicts: list[VerdictRow], source: dict) -> bool:
    """Write the judge stage of the imported verdicts, then its report; False when another process finished it."""
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
            "finished_import": time.time()})
        write_report(cfg, job)
    return True


def write_report(cfg, job: StageJob) -> None:
    """The imported judge's results, as stage=judge writes them, and the digest."""
    report.write_and_print(job.run_dir, job.stage.path.name, report.settings(cfg))


def say_imported(cfg, run_dir: Path, path: Path, answers: list[GenerationRow], verdicts: list[VerdictRow] | None):
    labelled = sum(a.human_label is not None for a in answers)
    if verdicts is None:
        print(f"imported {len(answers)} answers ({labelled} with human labels) from {path} as run {run_dir.name}; "
              f"judge them with: python -m pipeline stage=judge run_id={run_dir.name}")
        return
    f, n = cfg.import_fields, counts(verdicts)
    with_p = sum(v.p_correct is not None for v in verdicts)
    p_from = f" from column {f.p_correct!r}" if f.p_correct else ""
    print(f"imported from {path} as run {run_dir.name}: {len(answers)} answers ({labelled} with human labels); "
          f"{len(verdicts)} verdicts of judge {f.verdict_judge!r} from column {f.verdict!r}: {n[CORRECT]} correct, "
          f"{n[INCORRECT]} incorrect, {n[INVALID]} invalid (empty cells, left out of the accuracy), {with_p} with a "
          f"P(correct){p_from}; in {run_dir / 'judge' / f.verdict_judge}/\n"
          f"next: add our own judge with python -m pipeline stage=judge run_id={run_dir.name}; the leaderboard with "
          f"python -m pipeline stage=report report.runs=[{run_dir.name}]")


def run(cfg) -> Path:
    """stage=import: the answers become the run's generate stage and, with import_fields.verdict, the verdicts a
    finished judge stage. Every row is read and checked before anything is written. Returns the generate stage."""
    check_verdict_settings(cfg.import_fields)
    path, ds, where = open_file(cfg)
    answers = read_answers(cfg, ds, path.stem, where)
    verdicts = read_verdicts(cfg.import_fields, ds, answers, where)
    source = {"path": str(path.resolve()), "sha256": sha256_file(path)}
    items = [QAItem(a.id, a.question, tuple(a.references)) for a in answers]
    data_info = {"name": path.stem, "source": where, "rows_in_source": len(ds), "rows_used": len(answers),
                 "content_sha256": content_hash(items)}
    run_dir = create_run(Path(cfg.runs_dir), cfg.run_id or new_run_id("import", path.stem))
    job = answers_job(cfg, run_dir, source, answers)
    judged = verdicts_job(cfg, run_dir, source, verdicts) if verdicts is not None else None
    answers_done = job.finished()  # each refuses a finished stage made with other settings, before any writing
    verdicts_done = judged is None or judged.finished()
    if answers_done and verdicts_done:
        log.info("run %s: %s is already imported; nothing to do", run_dir.name, path)
        if judged is not None and not report.results_present(judged.stage.path):  # e.g. killed while writing the report
            with judged.stage.lock():
                write_report(cfg, judged)
        return job.stage.path
    wrote = not answers_done and write_answers(job, answers, source, data_info)
    if judged is not None and not verdicts_done:
        wrote = write_verdicts(cfg, judged, verdicts, source) or wrote
    if wrote:
        say_imported(cfg, run_dir, path, answers, verdicts)
    return job.stage.path
