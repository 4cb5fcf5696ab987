"""stage=import: answers produced elsewhere (vLLM, an API, an old run) become a run, judged and reported like any
other.

    python -m pipeline stage=import predictions=path/to/file.jsonl
    python -m pipeline stage=import predictions=out.csv import_fields.prediction=output import_fields.label=human \
        run_id=nq-vllm
    python -m pipeline stage=judge run_id=nq-vllm judge=llama70b-8bit

The file (JSONL, JSON, CSV or Parquet, read by `datasets.load_dataset`) needs a question, the reference answers and
the prediction; optionally an id and a human correctness label. They become runs/<run_id>/generate/
generations.jsonl records (schema "generation/1") without token log-probabilities, plus `human_label`.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from omegaconf import OmegaConf

from .config import DatasetConfig
from .data import FieldMap, QAItem, as_text, content_hash, get_field, load_rows, read_item, refuse_bad_rows, require_fields
from .errors import PipelineError, plural, preview
from .files import sha256_file
from .rows import GenerationRow
from .runner import StageJob
from .runs import StageDir, create_run, new_run_id
from .shards import Shard

log = logging.getLogger(__name__)

TRUE_LABELS = ("true", "1", "yes", "y", "correct", "right", "t")
FALSE_LABELS = ("false", "0", "no", "n", "incorrect", "wrong", "f")
LABEL_COLUMNS = ("human_label", "label")  # import_fields.label=auto takes the first of these that the file has


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
            f"{preview(bad_labels, 6)}. Accepted (any case): true/false, 1/0, yes/no, y/n, correct/incorrect, "
            "right/wrong, t/f, or an empty cell for no label."
        )
    refuse_bad_rows(items, problems, where, fields)
    return rows


def run(cfg) -> Path:
    path, ds, where = open_file(cfg)
    answers = read_answers(cfg, ds, path.stem, where)
    source = {"path": str(path.resolve()), "sha256": sha256_file(path)}
    items = [QAItem(a.id, a.question, tuple(a.references)) for a in answers]
    data_info = {"name": path.stem, "source": where, "rows_in_source": len(ds), "rows_used": len(answers),
                 "content_sha256": content_hash(items)}
    run_dir = create_run(Path(cfg.runs_dir), cfg.run_id or new_run_id("import", path.stem))
    fingerprint = {"import": {**source, "fields": OmegaConf.to_container(cfg.import_fields)}}
    job = StageJob(cfg, run_dir, StageDir(run_dir / "generate", "generations.jsonl"), Shard(0, 1), fingerprint,
                   [a.id for a in answers], also_replace=(run_dir / "judge",))
    if job.finished():
        log.info("run %s: %s is already imported; nothing to do", run_dir.name, path)
        return job.stage.path
    with job.attempt() as attempt:
        if attempt is None:
            return job.stage.path
        left = set(attempt.todo)
        attempt.write([[a for a in answers if a.id in left]], lambda batch: batch, desc="import", unit="answer")
        labelled = sum(a.human_label is not None for a in answers)
        attempt.finish("generate", GenerationRow.SCHEMA, {
            "imported_from": source, "human_labels": labelled, "expected_total": len(answers), "dataset": data_info,
            "generator": {"name": f"import:{path.stem}"}, "finished_import": time.time()})
    print(f"imported {len(answers)} answers ({labelled} with human labels) from {path} as run {run_dir.name}; judge "
          f"them with: python -m pipeline stage=judge run_id={run_dir.name}")
    return job.stage.path
