"""stage=label: a uniform random sample of a run's answers for people to label, and the filled sheet read back.

    python -m pipeline stage=label run_id=<id> label.n=200 label.seed=0     # write a sheet of 200 drawn answers
    python -m pipeline stage=label run_id=<id> label.sheet=<filled sheet>   # attach its labels (+ overwrite=true)

Correcting a judge's bias with human labels (prediction-powered inference) is only valid when the labelled answers
are a uniform random sample of the run. The frame is every answer, ordered by index then id; seed s draws a prefix of
one fixed order, numpy.random.default_rng(s).permutation(frame size). So a larger n with the same seed extends an
earlier sheet, and the first k rows of a sheet, labelled in order, are a uniform sample of k.

runs/<run_id>/labels/sheet-n<n>-seed<s>.csv   the n drawn answers in draw order: id, question, references (joined
    by " | "), prediction, human_label (empty, or prefilled with labels already attached); no verdicts or scores, so
    labellers are not anchored. UTF-8 with a byte order mark, which spreadsheets need. A cell starting with = + - @
    (or tab, CR) would run as a formula in a spreadsheet, so it is written with a single quote ' in front (so is one
    starting with '); reading back takes it off. A sheet is never overwritten: it may hold a labeller's work.
runs/<run_id>/labels/draws.json     each draw: seed, n, frame_size, frame_sha256 (of the frame's ids joined by
    newlines), ids (in draw order), sheet (its file name), written (time)
runs/<run_id>/labels/labels.jsonl   one rows.LabelRow per labelled id, in frame order, with the hash of the answer
    it labelled (label/2); rewritten whole, atomically, under the lock runs/<run_id>/.locks/labels.lock (a second
    read-back waits); a rewrite that changes a stored label keeps the old file in replaced/<time>/
runs/<run_id>/labels/manifest.json  written after labels.jsonl, as every stage's: its record count and sha256, so a
    hand-edited labels.jsonl is refused. A labels.jsonl of an earlier version (no manifest, label/1) is read with a
    warning; reading one of its sheets back seals it, and binds that sheet's labels to the answers it shows
    (labelfile.py reads, verifies and writes the two).

A sheet read back needs its id and human_label columns; labels take importer.parse_label's forms in any case, and an
empty cell is "not labelled yet". Line numbers count rows as a spreadsheet shows them (line 1 is the header). Every
labelled row must show the run's current answer of its id (question, references, prediction: those of the three the
sheet has), or the whole sheet is refused: a sheet of another run, or edited, or of answers since regenerated.
`load_labels` is what the report uses: a run's human labels, and whether they are a uniform sample. A label of an
answer that changed since it was labelled is left out, with a warning naming the id: never paired with the new one.
"""

from __future__ import annotations

import csv
import io
import logging
import shlex
import time
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Iterator

from .cells import plain_cell, safe_cell  # (the one rule for every CSV people open: cells.py)
from .errors import PipelineError, plural, preview
from .files import sha256_file, write_atomic, write_json
from .importer import FALSE_LABELS, TRUE_LABELS, parse_label
from .binding import answer_hashes  # the hash of each answer by id: what a label records
from .labelfile import current_labels, keep_copies, label_store, read_label_file, write_label_file
# what the report reads (labelset.py, below it and this stage); load_labels and with_labels also under this name
from .labelset import draw, frame, frame_sha256, labels_path, load_labels, read_draws, with_labels  # noqa: F401
from .locks import StageLock
from .rows import GenerationRow, LabelRow, parse_rows
from .runs import StageDir, find_run
from .shards import shard_dirs

log = logging.getLogger(__name__)

SHEET_COLUMNS = ["id", "question", "references", "prediction", "human_label"]
ACCEPTED = (f"{'/'.join(TRUE_LABELS)} for correct, {'/'.join(FALSE_LABELS)} for incorrect (any case), or an "
            "empty cell for not labelled yet")
ANSWER_COLUMNS = ("question", "references", "prediction")  # what a labeller saw, checked when read back
LOCK_WAIT_S = 300.0  # how long a read-back waits for another one to finish


def finished_answers(run_dir: Path) -> list[GenerationRow]:
    """The answers of the run's finished generate stage; refused, with the command to finish it, otherwise."""
    gen = StageDir(run_dir / "generate", "generations.jsonl")
    if not gen.is_complete():
        todo = (f"stage=merge run_id={run_dir.name} once every generate shard has finished" if shard_dirs(gen.path)
                else f"stage=generate run_id={run_dir.name} " + ("to finish it" if gen.path.exists() else "first"))
        raise PipelineError(f"run {run_dir.name}: its generate stage is not finished ({gen.manifest_path} is missing "
                            f"or incomplete), so there are no answers to label yet; run python -m pipeline {todo}.")
    return parse_rows(GenerationRow, gen.read_records(), gen.records_path)


@contextmanager
def labels_lock(run_dir: Path, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """The run's labels lock, waiting (up to wait_s) while another stage=label process holds it."""
    lock = StageLock(Path(run_dir) / ".locks" / "labels.lock", f"{labels_path(run_dir).parent}/")
    deadline = time.monotonic() + wait_s
    for attempt in count():
        try:
            lock.__enter__()
            break
        except PipelineError:  # held by another process
            if time.monotonic() > deadline:
                raise
            if attempt == 0:
                log.info("%s: another process is attaching labels; waiting for it", lock.what)
            time.sleep(0.1)
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def command(cfg, run_dir: Path, *args: str) -> str:
    """The exact command line for this run (runs_dir included when it is not the default)."""
    where = [] if str(cfg.runs_dir) == "runs" else [shlex.quote(f"runs_dir={cfg.runs_dir}")]
    return " ".join(["python -m pipeline", *args, f"run_id={run_dir.name}", *where])


def write_sheet(cfg, run_dir: Path, answers: list[GenerationRow]) -> Path:
    """Draw label.n answers with label.seed, write them as a new sheet and record the draw."""
    n, seed = cfg.label.n, cfg.label.seed
    if seed < 0 or not answers:
        raise PipelineError(f"label.seed={seed} must be 0 or more." if seed < 0 else
                            f"run {run_dir.name} has no answers; there is nothing to label.")
    picks, ids = draw(answers, n, seed), [a.id for a in frame(answers)]
    if n > len(ids):
        print(f"label.n={n} is more than the run's {len(ids)} answers: the sheet holds all of them, in random order")
    path = labels_path(run_dir, f"sheet-n{len(picks)}-seed{seed}.csv")
    back = command(cfg, run_dir, "stage=label", shlex.quote(f"label.sheet={path}"))
    with labels_lock(run_dir):
        if path.exists():
            print(f"kept {path}: the sheet exists already (it may hold a labeller's work) and is never overwritten "
                  f"(move it away to draw it again).\nread it back with: {back}")
            return path
        known, buf = load_labels(run_dir, answers).by_id, io.StringIO()
        csv.writer(buf).writerows([SHEET_COLUMNS] + [[safe_cell(x) for x in (a.id, a.question, " | ".join(
            a.references), a.prediction)] + [str(known.get(a.id, "")).lower()] for a in picks])
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, "\ufeff" + buf.getvalue())  # a byte order mark: spreadsheets then read UTF-8
        write_json(labels_path(run_dir, "draws.json"), read_draws(run_dir) + [{
            "seed": seed, "n": len(picks), "frame_size": len(ids), "frame_sha256": frame_sha256(ids),
            "ids": [a.id for a in picks], "sheet": path.name, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}])
    prefilled = sum(a.id in known for a in picks)
    print(f"wrote {path}: {plural(len(picks), 'row')} ({len(picks)} of the run's {len(ids)} answers drawn at random, "
          f"seed {seed}{f'; {prefilled} prefilled with labels already attached' if prefilled else ''}). Fill in "
          f"human_label ({ACCEPTED}), in row order if you stop early, then read it back with:\n{back}")
    return path


def sheet_records(value: str, run_dir: Path) -> tuple[Path, list[str], list[list[str]]]:
    """The sheet's path, header and rows (a byte order mark, ',', ';' or tab separators all read)."""
    path = Path(value).expanduser()
    if not path.is_file() and len(path.parts) == 1 and labels_path(run_dir, path.name).is_file():
        path = labels_path(run_dir, path.name)  # label.sheet=<name of a sheet in the run's labels folder>
    if not path.is_file():
        raise PipelineError(f"label.sheet={value!r}: no such file ({path.resolve()}).")
    try:
        text = path.read_bytes().decode("utf-8-sig")
        first = {d: {c.strip().strip('"').lower() for c in text.split("\n", 1)[0].split(d)} for d in ",;\t"}
        delimiter = next((d for d, cells in first.items() if {"id", "human_label"} <= cells), ",")
        records = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    except (UnicodeDecodeError, csv.Error) as e:
        raise PipelineError(f"{path}: not a readable UTF-8 CSV file ({e}); save it as CSV UTF-8 and read it back.") \
            from None
    header = [c.strip().lower() for c in (records[0] if records else [])]
    missing = [c for c in ("id", "human_label") if c not in header]
    if missing:
        raise PipelineError(f"{path}: no {' or '.join(missing)} column; its columns are "
                            f"{preview(header, 12) or 'none'}. A sheet needs id and human_label (others are ignored).")
    return path, header, records[1:]


def read_sheet(path: Path, header: list[str], records: list[list[str]], answers: list[GenerationRow]
               ) -> tuple[list[tuple[str, bool, int]], int]:
    """The sheet's labels as (id, label, line), and how many of its rows have no label yet; every problem refused."""
    id_col, label_col, known = header.index("id"), header.index("human_label"), {a.id for a in answers}
    unknown, twice, bad, labels, empty, seen = [], [], [], [], 0, {}
    for line, rec in enumerate(records, 2):
        cell, value = [(rec[c] if c < len(rec) else "").strip() for c in (id_col, label_col)]
        key = next((c for c in (cell[1:] if cell.startswith("'") else cell, cell) if c in known), None)
        if not cell and not value:
            continue  # a blank row
        elif key is None:
            unknown.append(f"line {line}: {cell!r}")
        elif key in seen:
            twice.append(f"{key!r} on lines {seen[key]} and {line}")
        else:
            seen[key] = line
            try:
                label = parse_label(value)
            except ValueError:
                bad.append(f"line {line}: {value!r}")
                continue
            empty += label is None
            labels += [(key, label, line)] if label is not None else []
    problems = [f"{plural(len(found), noun)} {what} ({preview(found, 5)}){tail}" for found, noun, what, tail in (
        (unknown, "id", "not in this run", ""), (twice, "id", "appearing twice", ""),
        (bad, "label", "in an unreadable form", f"; accepted: {ACCEPTED}")) if found]
    if problems:
        raise PipelineError(f"{path}: {'; '.join(problems)} ({plural(empty, 'row')} without a label yet). Nothing was "
                            "attached; correct the sheet and read it back again.")
    return labels, empty


def sheet_shows(cell: str, text: str) -> bool:
    """Whether a sheet's cell shows `text`: as the sheet wrote it (cells.safe_cell), or as a spreadsheet saved it
    (without the leading ' it reads as "text"); CR LF and LF line ends are the same."""
    text = text.replace("\r\n", "\n")
    return text in {plain_cell(cell).replace("\r\n", "\n"), cell.replace("\r\n", "\n")}


def differing_answers(header: list[str], records: list[list[str]], labels: list[tuple[str, bool, int]],
                      answers: list[GenerationRow]) -> list[str]:
    """"'<id>' (line <n>: prediction)" for each labelled row whose question, references or prediction (those of the
    three the sheet has; references as the sheet writes them, joined by " | ") are not the run's answer of its id."""
    of, columns, out = {a.id: a for a in answers}, [(c, header.index(c)) for c in ANSWER_COLUMNS if c in header], []
    for i, _, line in labels:
        record, a = records[line - 2], of[i]
        shown = {"question": a.question, "references": " | ".join(a.references), "prediction": a.prediction}
        bad = [c for c, k in columns if not sheet_shows(record[k] if k < len(record) else "", shown[c])]
        out += [f"{i!r} (line {line}: {', '.join(bad)})"] if bad else []
    return out


def check_sheet_answers(cfg, run_dir: Path, sheet: Path, records: list[list[str]], differ: list[str],
                        size: int) -> None:
    """Refuse a sheet whose labelled rows show other answers than the run's (`differ`), saying how to draw anew."""
    if not differ:
        return
    drawn = next((d for d in reversed(read_draws(run_dir)) if d["sheet"] == sheet.name), None)
    n = drawn["n"] if drawn else sum(any(c.strip() for c in r) for r in records)
    seed = drawn["seed"] if drawn else cfg.label.seed
    same_name = labels_path(run_dir, f"sheet-n{min(n, size)}-seed{seed}.csv")
    one, again = len(differ) == 1, command(cfg, run_dir, "stage=label", f"label.n={n}", f"label.seed={seed}")
    raise PipelineError(
        f"{sheet}: {plural(len(differ), 'labelled row')} show{'s an answer' if one else ' answers'} that "
        f"{'is' if one else 'are'} not run {run_dir.name}'s answer{'s' * (not one)} of "
        f"{'that id' if one else 'those ids'} ({preview(differ, 8)}); the sheet was drawn from another run, or edited "
        "(a spreadsheet that turns text into numbers or dates edits it too), or the run's answers changed since it was "
        f"drawn. Nothing was attached; draw a new sheet of the run's answers with {again}"
        + (f" (move {same_name} away first: a sheet is never overwritten)" if same_name.exists() else "")
        + " and label that.")


@dataclass(frozen=True)
class Attached:
    """What reading a sheet back did to labels.jsonl."""

    added: int
    replaced: int
    unchanged: int
    bound: int  # labels of an earlier version (label/1) now bound to the answer the sheet shows
    written: bool

    def said(self) -> str:
        """What the read-back did, in words."""
        parts = [f"attached {plural(self.added, 'new label')}, replaced {self.replaced}"] * bool(self.added or
                                                                                               self.replaced)
        parts += [f"bound {plural(self.bound, 'earlier label')} to the answers it shows"] * bool(self.bound)
        return ", ".join(parts) or ("sealed the labels of an earlier version" if self.written else
                                    "nothing changed (reading a sheet again is harmless)")


def attach(cfg, run_dir: Path, answers: list[GenerationRow], sheet: Path, labels: list[tuple[str, bool, int]]
           ) -> Attached:
    """Merge the sheet's labels into labels.jsonl (call under the labels lock). A stored label of an answer that has
    changed since counts as no label: the sheet's label of the new answer replaces it."""
    path, ids, hashes = labels_path(run_dir), [a.id for a in frame(answers)], answer_hashes(answers)
    stored, sealed = read_label_file(run_dir, set(ids))
    old, now = {r.id: r for r in stored}, {r.id: r for r in current_labels(stored, hashes)}
    imported = {a.id: a.human_label for a in answers if a.human_label is not None}
    rows, sha, counts, clashes, against, bound = dict(old), sha256_file(sheet), [0, 0, 0], [], [], 0
    for i, lab, line in labels:
        prev = imported.get(i, now[i].human_label if i in now else None)
        unbound = prev == lab and i in now and now[i].answer_sha256 is None
        bound += unbound
        if prev is None or (prev != lab and cfg.overwrite and i not in imported) or unbound:
            rows[i] = LabelRow(id=i, human_label=lab, sheet=sheet.name, sheet_sha256=sha, line=line,
                               answer_sha256=hashes[i])
        counts[0 if prev is None else 1 if prev != lab else 2] += 1
        if prev is not None and prev != lab:
            (against if i in imported else clashes).append(f"line {line}: {i!r} says {str(lab).lower()}, " + (
                f"imported {str(prev).lower()}" if i in imported else f"attached {str(prev).lower()} from "
                f"{old[i].sheet}"))
    if against:
        raise PipelineError(f"{sheet}: {plural(len(against), 'label')} contradict the human labels imported with the "
                            f"answers in {run_dir / 'generate/generations.jsonl'} ({preview(against, 5)}); those "
                            "cannot be replaced here, not even with overwrite=true. Correct the sheet, or import the "
                            "answers again with the right labels. Nothing was attached.")
    if clashes and not cfg.overwrite:
        raise PipelineError(f"{sheet}: {plural(len(clashes), 'label')} contradict labels already attached to run "
                            f"{run_dir.name} in {path} ({preview(clashes, 5)}). Nothing was attached; correct the "
                            f"sheet, or pass overwrite=true to replace them (the old {path.name} is kept under "
                            f"{run_dir / 'replaced'}/).")
    changed = [i for i in rows if rows[i] is not old.get(i)]
    write = bool(changed) or bool(stored and not sealed)  # (an earlier version's file is sealed by any read-back)
    if write:
        if any(i in old for i in changed):
            log.info("kept the previous labels in %s", keep_copies(run_dir, [path, label_store(run_dir).manifest_path]))
        position = {i: k for k, i in enumerate(ids)}
        write_label_file(run_dir, sorted(rows.values(), key=lambda r: position[r.id]))
    return Attached(*counts, bound=bound, written=write)


def read_back(cfg, run_dir: Path, answers: list[GenerationRow]) -> Path:
    """stage=label label.sheet=<file>: attach the sheet's labels, then rewrite the report of finished judges."""
    from . import report  # at call time: the report reads the labels through load_labels

    sheet, header, records = sheet_records(cfg.label.sheet, run_dir)
    labels, empty = read_sheet(sheet, header, records, answers)
    check_sheet_answers(cfg, run_dir, sheet, records, differing_answers(header, records, labels, answers), len(answers))
    if unseen := [c for c in ANSWER_COLUMNS if c not in header]:
        names = f"{', '.join(unseen[:-1])} or {unseen[-1]}" if len(unseen) > 1 else unseen[0]
        log.warning("%s: no %s column, so what its labels were given to cannot be checked; they are bound to the "
                    "run's answers as they are now", sheet, names)
    with labels_lock(run_dir):
        done = attach(cfg, run_dir, answers, sheet, labels)
        judges = report.finished_judges(run_dir) if done.written else []
        try:
            if judges:
                report.report_run(run_dir, report.settings(cfg))
        except PipelineError as e:
            raise PipelineError(f"the labels were attached ({labels_path(run_dir)}), but rewriting the report failed: "
                                f"{e}") from None
        by_id = load_labels(run_dir, answers).by_id
    drawn = next((d for d in reversed(read_draws(run_dir)) if d["sheet"] == sheet.name), None)
    pool = drawn["ids"] if drawn else [i for i, _, _ in labels]
    left = sum(i not in by_id for i in pool) + (0 if drawn else empty)
    of = f"the {len(pool)} drawn answers (seed {drawn['seed']})" if drawn else f"the sheet's {len(pool) + empty} rows"
    print(f"{sheet.name}: {done.said()}, {done.unchanged} already attached, {plural(empty, 'row')} without a label "
          f"yet; {left} of {of} {'is' if left == 1 else 'are'} still unlabelled. Labels: {labels_path(run_dir)}"
          f"{'; rewrote the results of ' + ', '.join(judges) if judges else ''}.\nreport: "
          f"{command(cfg, run_dir, 'stage=report')}")
    return labels_path(run_dir)


def run(cfg) -> Path:
    """stage=label: read a filled sheet back (label.sheet set), else write a new sheet."""
    run_dir = find_run(Path(cfg.runs_dir), cfg.run_id)
    return (read_back if cfg.label.sheet else write_sheet)(cfg, run_dir, finished_answers(run_dir))
