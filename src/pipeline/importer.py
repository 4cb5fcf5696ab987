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
from collections import Counter
from pathlib import Path

from omegaconf import OmegaConf

from .config import DatasetConfig
from .data import QAItem, as_references, content_hash, get_field, load_rows, require_fields
from .errors import PipelineError, plural, preview
from .manifest import environment_manifest
from .files import sha256_file
from .runs import StageDir, create_run, new_run_id

log = logging.getLogger(__name__)

SCHEMA = "generation/1"
TRUE_LABELS = ("true", "1", "yes", "y", "correct", "right", "t")
FALSE_LABELS = ("false", "0", "no", "n", "incorrect", "wrong", "f")


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


LABEL_COLUMNS = ("human_label", "label")  # import_fields.label=auto takes the first of these that the file has


def as_text(value) -> str:
    """A cell as answer text: numbers are answers too ("4", "1985"); None and NaN are empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def run(cfg) -> Path:
    if not cfg.predictions:
        raise PipelineError("stage=import needs the file to import: predictions=path/to/answers.jsonl "
                            "(JSONL, JSON, CSV or Parquet with question, references and prediction columns).")
    f = cfg.import_fields
    path = Path(cfg.predictions).expanduser()
    if not path.is_file():
        raise PipelineError(f"predictions={cfg.predictions!r}: no such file ({path.resolve()}).")
    name = path.stem
    ds, where = load_rows(DatasetConfig(name=name, path=str(path)))
    if len(ds) == 0:
        raise PipelineError(f"{where}: the file has no rows; there is nothing to import.")
    wanted = {"import_fields.question": f.question, "import_fields.prediction": f.prediction}
    wanted |= {f"import_fields.answers[{i}]": a for i, a in enumerate(f.answers)}
    if f.id is not None:
        wanted["import_fields.id"] = f.id
    label_field = f.label
    if label_field == "auto":
        label_field = next((c for c in LABEL_COLUMNS if c in ds.column_names), None)
        if label_field:
            log.info("%s: reading human labels from its %r column (import_fields.label=null ignores it)", where,
                     label_field)
    if label_field is not None:
        wanted["import_fields.label"] = label_field
    require_fields(ds, wanted, where)

    records, problems, bad_labels = [], [], []
    for i, row in enumerate(ds):
        row_no = i + 1
        rid = as_text(get_field(row, f.id)) if f.id else f"{name}-{i:06d}"
        question = get_field(row, f.question)
        question = as_text(question) if isinstance(question, (str, int, float)) or question is None else question
        refs: list[str] = []
        for dotted in f.answers:
            refs += as_references(get_field(row, dotted), dotted, row_no, where)
        refs = list(dict.fromkeys(r.strip() for r in refs if r and r.strip()))
        prediction = get_field(row, f.prediction)
        if not rid:
            problems.append(f"row {row_no}: empty id")
        if not isinstance(question, str) or not question.strip():
            problems.append(f"row {row_no} (id {rid}): empty question")
        if not refs:
            problems.append(f"row {row_no} (id {rid}): no reference answers")
        if isinstance(prediction, (str, int, float, bool)) or prediction is None:
            prediction = as_text(prediction)
        else:
            problems.append(f"row {row_no} (id {rid}): prediction is {type(prediction).__name__}, not text")
        label = None
        if label_field is not None:
            try:
                label = parse_label(get_field(row, label_field))
            except ValueError:
                bad_labels.append(f"row {row_no} (id {rid}): {get_field(row, label_field)!r}")
        records.append({"schema": SCHEMA, "id": rid, "index": i, "question": str(question or "").strip(),
                        "references": refs, "prompt": None,
                        "prediction": prediction if isinstance(prediction, str) else "",
                        "finish_reason": None, "num_generated_tokens": None, "token_ids": None, "tokens": None,
                        "token_logprobs": None, "sequence_nll": None, "mean_nll": None, "human_label": label})
    if bad_labels:
        raise PipelineError(
            f"{where}: {plural(len(bad_labels), 'human label')} in column {label_field!r} not in a recognised form: "
            f"{preview(bad_labels, 6)}. Accepted (any case): true/false, 1/0, yes/no, y/n, correct/incorrect, "
            "right/wrong, t/f, or an empty cell for no label."
        )
    if problems:
        raise PipelineError(f"{where}: {plural(len(problems), 'row')} cannot be used: {preview(problems, 8)}.")
    dups = [k for k, n in Counter(r["id"] for r in records).items() if n > 1]
    if dups:
        raise PipelineError(f"{where}: ids appear more than once ({preview(dups, 5)}); set import_fields.id=null to "
                            "number the rows instead.")

    items = [QAItem(r["id"], r["question"], tuple(r["references"])) for r in records]
    source = {"path": str(path.resolve()), "sha256": sha256_file(path)}
    data_info = {"name": name, "source": where, "rows_in_source": len(ds), "rows_used": len(records),
                 "content_sha256": content_hash(items)}
    run_id = cfg.run_id or new_run_id("import", name)
    run_dir = create_run(Path(cfg.runs_dir), run_id)
    stage = StageDir(run_dir / "generate", "generations.jsonl")
    fingerprint = {"import": {**source, "fields": OmegaConf.to_container(f)}}
    with stage.lock():
        done = stage.begin(fingerprint, cfg.overwrite, OmegaConf.to_yaml(cfg, resolve=True), run_dir,
                           also_replace=(run_dir / "judge",))
        if done is None:
            log.info("run %s: %s is already imported; nothing to do", run_id, path)
            return stage.path
        done_ids = {d["id"] for d in done}
        with stage.appender() as out:
            out.append(r for r in records if r["id"] not in done_ids)
        labelled = sum(r["human_label"] is not None for r in records)
        stage.finish({"stage": "generate", "run_id": run_id, "schema": SCHEMA, "records": len(records),
                      "imported_from": source, "human_labels": labelled, "expected_total": len(records),
                      "dataset": data_info, "generator": {"name": f"import:{name}"}, "finished_import": time.time(),
                      "config": OmegaConf.to_container(cfg, resolve=True), **environment_manifest()})
    print(f"imported {len(records)} answers ({labelled} with human labels) from {path} as run {run_id}; judge them "
          f"with: python -m pipeline stage=judge run_id={run_id}")
    return stage.path
