"""runs/<run_id>/labels/labels.jsonl: the human labels stage=label attached, sealed and bound to their answers.

    labels.jsonl    one rows.LabelRow per labelled id, each with the hash of the answer it labelled (label/2)
    manifest.json   written after labels.jsonl, as every stage's (runs.StageDir.publish): its count and sha256

Reading verifies the file against its manifest: a labels.jsonl edited by hand is refused, naming it and how to
recover. A labels.jsonl of an earlier version (label/1 records, no manifest) is read as it is, with a warning: a
user's labels are precious, and reading one of its sheets back seals it and binds that sheet's labels. A label
whose answer has changed since it was given (answers regenerated with overwrite=true, or edited) is left out, with
a warning naming its id: it is never paired with the new answer, and it stays in the file.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from .errors import PipelineError, plural, preview
from .files import sha256_file
from .rows import LabelRow
from .runs import StageDir


def label_store(run_dir: Path) -> StageDir:
    """labels/ holds labels.jsonl and, written after it, its manifest.json (count and sha256), as every stage does."""
    return StageDir(Path(run_dir) / "labels", "labels.jsonl")


def read_label_file(run_dir: Path, known_ids: set[str]) -> tuple[list[LabelRow], bool]:
    """labels.jsonl's rows, verified against labels/manifest.json, and whether there is one: a file written by an
    earlier version has none, and is read as it is (a user's labels are precious); anything else is refused."""
    store = label_store(run_dir)
    path, sealed = store.records_path, store.manifest_path.is_file()
    expected = (store.manifest().get("records_file") or {}) if sealed else {}
    count = plural(expected.get("records", 0), "label")
    recover = (f"Restore it together with the {store.manifest_path.name} it was written with (the files a labels "
               f"rewrite replaced are under {Path(run_dir) / 'replaced'}/), or move both away and read the sheets back "
               f"again (python -m pipeline stage=label run_id={Path(run_dir).name} label.sheet=<each sheet>)")
    if sealed and not path.is_file():
        raise PipelineError(f"{path} is missing although {store.manifest_path} records {count}. {recover}.")
    if sealed and sha256_file(path) != expected.get("sha256"):
        raise PipelineError(f"{path} is not the file stage=label wrote: its sha256 differs from the one in "
                            f"{store.manifest_path} ({count}); it was edited, truncated or replaced by hand. "
                            f"{recover}.")
    rows = read_label_rows(path, known_ids)
    if sealed and len(rows) != expected.get("records"):
        raise PipelineError(f"{path}: {plural(len(rows), 'label')}, but {store.manifest_path} records {count}. "
                            f"{recover}.")
    return rows, sealed


def write_label_file(run_dir: Path, rows: list[LabelRow]) -> None:
    """labels.jsonl (atomically), then its manifest: the file is sealed."""
    label_store(run_dir).publish([r.to_json() for r in rows], {
        "stage": "label", "run_id": Path(run_dir).name, "records": len(rows),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def read_label_rows(path: Path, known_ids: set[str]) -> list[LabelRow]:
    """labels.jsonl, checked line by line: JSON records of label/1 or label/2 (with the answer's hash), known ids,
    each once, true/false labels."""
    fix = "it was edited by hand: fix or delete that line (reading the sheets back again restores labels)"
    rows, seen = [], {}
    for lineno, line in ((k, x) for k, x in enumerate(path.read_bytes().split(b"\n") if path.is_file() else [], 1)
                         if x.strip()):
        where = f"{path}, line {lineno}"
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise PipelineError(f"{where}: not a valid JSON record ({getattr(e, 'msg', e)}); {fix}.") from None
        row = LabelRow.from_json(record, where) if isinstance(record, dict) else None
        problem = ("not a JSON object" if row is None else
                   f"human_label is {row.human_label!r}, not true or false" if not isinstance(row.human_label, bool)
                   else f"id {row.id!r} is not an answer of this run" if not isinstance(row.id, str) or
                   row.id not in known_ids
                   else f"id {row.id!r} is already labelled on line {seen[row.id]}" if row.id in seen
                   else "a label/2 record without the answer's answer_sha256" if record["schema"] != "label/1" and
                   not isinstance(row.answer_sha256, str) else None)
        if problem:
            raise PipelineError(f"{where}: {problem}; {fix}.")
        seen[row.id] = lineno
        rows.append(row)
    return rows


def current_labels(stored: list[LabelRow], hashes: dict[str, str]) -> list[LabelRow]:
    """The stored labels of the answers as they are now: those bound to another answer of their id are left out
    (label/1 labels, which record no answer, are kept: they cannot be checked, and stored_warnings says so)."""
    return [r for r in stored if r.answer_sha256 is None or r.answer_sha256 == hashes[r.id]]


def left_out(stored: list[LabelRow], kept: list[LabelRow]) -> list[str]:
    kept_ids = {r.id for r in kept}
    return [r.id for r in stored if r.id not in kept_ids]


def stored_warnings(path: Path, stored: list[LabelRow], sealed: bool, changed: list[str]) -> list[str]:
    """What labels.jsonl cannot vouch for: an earlier version's file (no manifest), labels that record no answer
    (label/1), and labels of answers that changed since (left out)."""
    unbound = [r for r in stored if r.answer_sha256 is None]
    sheets = ", ".join(dict.fromkeys(r.sheet for r in unbound))
    do, they, them = ("do", "they", "them") if len(unbound) != 1 else ("does", "it", "it")
    out = []
    if stored and not sealed and len(unbound) == len(stored):
        out.append(f"{path} was written by an earlier version: it has no manifest and its "
                   f"{plural(len(stored), 'label')} {do} not record which answer {they} labelled, so none can be "
                   "checked; read each of its sheets back again (stage=label label.sheet=<sheet>) to seal it and bind "
                   f"{them} (sheets: {sheets})")
        unbound = []
    elif stored and not sealed:
        out.append(f"{path} has no manifest.json beside it, so it cannot be verified; read one of its sheets back "
                   "again (stage=label label.sheet=<sheet>) to seal it")
    if unbound:
        out.append(f"{plural(len(unbound), 'label')} (label/1, from an earlier version) {do} not record which answer "
                   f"{they} labelled, so {they} cannot be checked against the run's answers; read {sheets} back again "
                   f"to bind {them}")
    if changed:
        one = len(changed) == 1
        out.append(f"{plural(len(changed), 'label')} {'was' if one else 'were'} given to "
                   f"{'an answer that has' if one else 'answers that have'} changed since (id{'s' * (not one)} "
                   f"{preview(map(repr, changed), 8)}): the run's answers were regenerated or edited after labelling, "
                   f"so {'that label is' if one else 'those labels are'} left out; label the new "
                   f"answer{'s' * (not one)} with a new sheet (stage=label label.n=...)")
    return out


def keep_copies(run_dir: Path, paths: list[Path]) -> Path:
    """Copy the existing `paths` into one run_dir/replaced/<time>/ before they are rewritten, never over an earlier
    copy; that folder."""
    paths, stamp, k = [p for p in paths if p.is_file()], time.strftime("%Y%m%d-%H%M%S"), 1
    while any((root := run_dir / "replaced" / (stamp if k == 1 else f"{stamp}-{k}")).joinpath(p.relative_to(run_dir))
              .exists() for p in paths):
        k += 1
    for path in paths:
        (root / path.relative_to(run_dir)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, root / path.relative_to(run_dir))
    return root
