"""QA data sets: any source `datasets.load_dataset` reads, mapped onto (id, question, references).

`dataset.path` is one of
  - "package:<file>"   data shipped inside this package (the embedded default, package:factoids.jsonl);
  - a local file       .json / .jsonl / .csv / .parquet;
  - a Hub name         with dataset.config and dataset.split (needs the Hugging Face Hub or its local cache).
All three go through `datasets.load_dataset`, the path hub data sets take too. `dataset.fields` says where the
question, the answers and the id live; dotted paths reach into nested fields ("answer.aliases");
`dataset.fields.answers_sep` splits references written as one string ("William Shakespeare|Shakespeare").
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .config import DatasetConfig
from .errors import PipelineError, plural, preview

log = logging.getLogger(__name__)

LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
BOM = "\ufeff"  # the UTF-8 byte order mark some editors (Excel, Notepad) put first; not part of the data
# Several answers written as one string look like this; warn when at least DELIMITED_SHARE of the rows (and at
# least 2) hold one such reference in a field and no separator is set.
DELIMITERS = ("|", " ; ")
DELIMITED_SHARE = 0.10


@dataclass(frozen=True)
class QAItem:
    id: str
    question: str
    references: tuple[str, ...]
    # The row's columns named by dataset.fields.keep ({column: value}); not part of what is evaluated, so not of the
    # content hash either.
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict:
        return {"id": self.id, "question": self.question, "references": list(self.references)}


def locate_data(path: str, key: str = "dataset.path") -> tuple[str, Path | None]:
    """('local', file), ('folder', folder) or ('hub', None) for a dataset.path value (`key`: the setting, for
    messages). A file that is here is local whatever its name, never a Hub name."""
    if path.startswith("package:"):
        name = path.removeprefix("package:")
        file = Path(str(resources.files("pipeline") / "data" / name))
        if not file.is_file():
            shipped = sorted(p.name for p in (resources.files("pipeline") / "data").iterdir())
            raise PipelineError(f"{key}={path!r}: no file {name!r} is shipped in the package "
                                f"(shipped: {', '.join(shipped)}).")
        return "local", file
    p = Path(path).expanduser()
    if p.is_dir():  # a folder of data files here, not a Hub name
        return "folder", p
    if p.suffix.lower() in LOCAL_BUILDERS or path.startswith((".", "/", "~")) or p.is_file():
        if not p.is_file():
            raise PipelineError(f"{key}={path!r}: no such file ({p.resolve()}).")
        if p.suffix.lower() not in LOCAL_BUILDERS:
            raise PipelineError(f"{key}={path!r}: unsupported file type {p.suffix!r}; use one of "
                                f"{', '.join(LOCAL_BUILDERS)} (save a TSV or a spreadsheet as CSV).")
        return "local", p
    return "hub", None


def load_rows(cfg: DatasetConfig, key: str = "dataset.path"):
    """The raw `datasets.Dataset` and a short description of where it came from (`key`: the setting that named
    it, for messages)."""
    import datasets

    datasets.disable_progress_bars()
    kind, file = locate_data(cfg.path, key)
    if kind in ("local", "folder"):
        builder = LOCAL_BUILDERS[file.suffix.lower()] if kind == "local" else None
        where = str(file)
        if builder in ("json", "csv"):
            check_text_file(file, builder)
        try:
            ds = (datasets.load_dataset(builder, data_files=str(file), split="train") if builder else
                  datasets.load_dataset(str(file), split=cfg.split))
        except Exception as e:  # the datasets builders raise many types for unreadable files
            if "corresponds to no data" in str(e):
                raise PipelineError(f"{where}: holds no rows (only a header, an empty list, or no data files); "
                                    "there is nothing to read.") from None
            raise PipelineError(f"{where}: could not read it as {builder or 'a data folder'} "
                                f"({type(e).__name__}: {e}).") from None
        return ds, where
    where = f"Hugging Face Hub data set {cfg.path!r} (config={cfg.config!r}, split={cfg.split!r})"
    try:
        ds = datasets.load_dataset(cfg.path, cfg.config, split=cfg.split, revision=cfg.revision)
    except Exception as e:  # network, missing config or split, gated data set, ...
        raise PipelineError(
            f"could not load the {where}: {type(e).__name__}: {e}. Where the Hub cannot be reached, load it on a "
            f"machine that can (datasets.load_dataset({cfg.path!r}, {cfg.config!r}, split={cfg.split!r})"
            ".to_json('data.jsonl')) and pass dataset.path=/path/to/data.jsonl, or set HF_DATASETS_OFFLINE=1 to "
            "use a copy already in the local datasets cache."
        ) from None
    return ds, where


def check_text_file(file: Path, builder: str) -> None:
    """A JSON / JSONL / CSV file must be UTF-8 and (JSON) parse; errors name the 1-based line. The datasets
    builders would otherwise fail with an exception that names neither."""
    if file.stat().st_size == 0:
        raise PipelineError(f"{file}: the file is empty (0 bytes); there is nothing to read.")
    lines = []
    with open(file, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                lines.append(raw.decode("utf-8").removeprefix(BOM if lineno == 1 else ""))
            except UnicodeDecodeError as e:
                raise PipelineError(f"{file}, line {lineno}: byte {raw[e.start]:#04x} at column {e.start + 1} is not "
                                    "UTF-8; save the file as UTF-8 and run again.") from None
    if builder != "json":
        return
    text = "".join(lines)
    if not text.strip():
        raise PipelineError(f"{file}: the file holds only white space; there is nothing to read.")
    try:
        json.loads(text)  # one JSON document (a list of rows, or {"data": [...]})
        return
    except json.JSONDecodeError as whole:
        for lineno, line in enumerate(lines, 1):  # else JSON Lines: every non-blank line one object
            if not line.strip():
                continue
            try:
                json.loads(line)
            except json.JSONDecodeError as e:
                at = (whole.lineno, whole.colno, whole.msg) if file.suffix.lower() == ".json" and lineno == 1 else \
                    (lineno, e.colno, e.msg)
                raise PipelineError(f"{file}, line {at[0]}, column {at[1]}: not valid JSON ({at[2]}). Fix that line "
                                    "(JSON Lines: one object per line) and run again.") from None


def get_field(row: dict, dotted: str):
    value = row
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return value


def require_fields(ds, wanted: dict[str, str], where: str) -> None:
    """Each {setting: dotted field} must exist in the first row; the error names it and lists the columns."""
    first = ds[0]
    for key, dotted in wanted.items():
        try:
            get_field(first, dotted)
        except KeyError:
            raise PipelineError(
                f"{where}: has no field {dotted!r} (set by {key}). Its columns are: {', '.join(ds.column_names)}. "
                f"Map the right one with {key.split('[')[0]}=<column>"
                + (" (a list: ...=[col1,col2])" if "answers" in key else "")
                + (f", or set {key}=null to number the rows instead" if key.endswith("fields.id") else "") + "."
            ) from None


def as_references(value, dotted: str, row_no: int, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float)) for v in value):
        return [str(v) for v in value]
    if isinstance(value, (int, float)):
        return [str(value)]
    raise PipelineError(f"{where}, row {row_no}: field {dotted!r} holds {type(value).__name__} {value!r:.80}; "
                        "answers must be a string or a list of strings.")


def split_references(refs: list[str], sep: str | None) -> list[str]:
    """Each reference split at `sep` ("a|b" -> "a", "b"); without a separator, as they are."""
    return [piece for ref in refs for piece in (ref.split(sep) if sep else [ref])]


def as_text(value, strip: bool = True) -> str:
    """A cell as text: numbers are text too (an id 7, an answer "1985"); None and NaN are empty. `strip=False`
    keeps the white space around it (an answer's text exactly as written)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip() if strip else str(value)


@dataclass(frozen=True)
class FieldMap:
    """Which fields of a row hold the id, question and answers, and the setting that maps them (for messages)."""

    setting: str  # "dataset.fields" or "import_fields"
    question: str
    answers: tuple[str, ...]
    id: str | None = None  # None: the rows are numbered <name>-000000, ...
    sep: str | None = None  # splits each reference string (answers_sep); None: a string is one reference
    keep: tuple[str, ...] = ()  # the user's own columns, carried with each answer (keep)

    def wanted(self) -> dict[str, str]:
        """{setting: dotted field} for require_fields."""
        out = {f"{self.setting}.question": self.question}
        out |= {f"{self.setting}.answers[{i}]": a for i, a in enumerate(self.answers)}
        out |= {f"{self.setting}.keep[{i}]": k for i, k in enumerate(self.keep)}
        return out | ({f"{self.setting}.id": self.id} if self.id is not None else {})


def read_item(row: dict, i: int, fields: FieldMap, name: str, where: str) -> tuple[QAItem, list[str]]:
    """Row i (0-based) as a QA item, and what makes it unusable (an empty id or question, no reference answer)."""
    row_no = i + 1
    rid = as_text(get_field(row, fields.id)) if fields.id else f"{name}-{i:06d}"
    cell = get_field(row, fields.question)
    is_text = isinstance(cell, (str, int, float)) or cell is None
    question = as_text(cell) if is_text else ""
    refs: list[str] = []
    for dotted in fields.answers:
        refs += split_references(as_references(get_field(row, dotted), dotted, row_no, where), fields.sep)
    refs = list(dict.fromkeys(r.strip() for r in refs if r and r.strip()))
    problems = [text for bad, text in ((not rid, f"row {row_no}: empty id"),
                                       (not is_text, f"row {row_no} (id {rid}): {not_text(cell, fields)}"),
                                       (is_text and not question, f"row {row_no} (id {rid}): empty question"),
                                       (not refs, f"row {row_no} (id {rid}): no reference answers")) if bad]
    meta = {}
    for dotted in fields.keep:
        value = get_field(row, dotted)
        if isinstance(value, float) and math.isnan(value):
            value = None
        if value is not None and not isinstance(value, (str, int, float, bool)):
            problems.append(f"row {row_no} (id {rid}): kept column {dotted!r} holds {type(value).__name__} "
                            f"{value!r:.60}, not one value (text, a number, true/false or empty)")
            value = None
        meta[dotted] = value
    return QAItem(rid, question, tuple(refs), meta), problems


def not_text(cell, fields: FieldMap) -> str:
    """Why a question cell that holds a list or a mapping cannot be used, and which text field to map instead."""
    inside = next((k for k, v in cell.items() if isinstance(v, str)), None) if isinstance(cell, dict) else None
    return (f"question is {type(cell).__name__}, not text (map a text field with {fields.setting}.question=<field>"
            + (f", e.g. {fields.question}.{inside}" if inside else "") + ")")


def delimited_reference(row: dict, fields: FieldMap) -> tuple[str, str] | None:
    """(field, text) of the row's first answer field holding one reference that looks like several joined into one
    string ("a|b", "a ; b"); None where there is none, or a separator is set."""
    if fields.sep:
        return None
    for dotted in fields.answers:
        value = get_field(row, dotted)
        if isinstance(value, (list, tuple)) and len(value) == 1:
            value = value[0]
        if isinstance(value, str) and any(d in value for d in DELIMITERS):
            return dotted, value
    return None


def warn_if_delimited(found: list[tuple[int, str, str, str]], rows: int, fields: FieldMap, where: str) -> None:
    """One warning when many rows hold one delimited reference in the same field: exact match and contains would
    compare the answer with the whole string. `found`: (row number, id, field, text) from delimited_reference."""
    if not found:
        return
    field, n = Counter(f for _, _, f, _ in found).most_common(1)[0]
    if n < max(2, DELIMITED_SHARE * rows):
        return
    row_no, rid, _, text = next(x for x in found if x[2] == field)
    sep = "|" if "|" in text else ";"
    log.warning("%s: %d of %d rows hold a single reference in field %r that looks like several answers joined by "
                "'|' or ' ; ' (row %d (id %s): %r), so exact match and contains compare answers with the whole "
                "string. If it lists several answers, split them with \"%s.answers_sep='%s'\".",
                where, n, rows, field, row_no, rid, preview_text(text), fields.setting, sep)


def preview_text(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def refuse_bad_rows(items: list[QAItem], problems: list[str], where: str, fields: FieldMap) -> None:
    """Stop on unusable rows, then on ids that appear more than once (naming the rows)."""
    if problems:
        raise PipelineError(f"{where}: {plural(len(problems), 'row')} cannot be used: {preview(problems, 8)}. "
                            f"Fix the data, or map other fields with {fields.setting}.*.")
    counts = Counter(item.id for item in items)
    dups = {k: n for k, n in counts.items() if n > 1}
    if dups:
        rows = {k: [i + 1 for i, it in enumerate(items) if it.id == k] for k in list(dups)[:5]}
        detail = "; ".join(f"{k!r} at rows {v}" for k, v in rows.items())
        raise PipelineError(
            f"{where}: {plural(len(dups), 'id')} appear more than once ({detail}"
            f"{' ...' if len(dups) > 5 else ''}). Ids must be unique: fix the data, or set {fields.setting}.id=null "
            "to number the rows instead."
        )


def load_items(cfg: DatasetConfig) -> tuple[list[QAItem], dict]:
    """The data set as QA items, checked; plus a description for the manifest."""
    ds, where = load_rows(cfg)
    if len(ds) == 0:
        raise PipelineError(f"{where}: the data set is empty (0 rows); there is nothing to evaluate.")
    fields = FieldMap("dataset.fields", cfg.fields.question, tuple(cfg.fields.answers), cfg.fields.id,
                      cfg.fields.answers_sep, tuple(cfg.fields.keep))
    require_fields(ds, fields.wanted(), where)
    total = len(ds)
    if cfg.limit is not None:
        if cfg.limit < 1:
            raise PipelineError(f"dataset.limit={cfg.limit}: must be a positive number of rows, or null for all.")
        ds = ds.select(range(min(cfg.limit, total)))
    items, problems, delimited = [], [], []
    for i, row in enumerate(ds):
        item, bad = read_item(row, i, fields, cfg.name, where)
        items.append(item)
        problems += bad
        if found := delimited_reference(row, fields):
            delimited.append((i + 1, item.id, *found))
    refuse_bad_rows(items, problems, where, fields)
    warn_if_delimited(delimited, len(items), fields, where)
    description = {"name": cfg.name, "source": where, "rows_in_source": total, "rows_used": len(items),
                   "content_sha256": content_hash(items)}
    if fields.keep:
        description["kept_columns"] = list(fields.keep)
    return items, description


def content_hash(items: list[QAItem]) -> str:
    """Identifies the evaluated content (ids, questions, references), whatever file it came from."""
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps(it.to_dict(), sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()
