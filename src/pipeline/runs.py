"""Run directories and the state of each stage inside them.

    runs/
      latest -> 20261121-143000-smollm2-135m-factoids      (symlink to the newest run)
      <run_id>/
        run.json                       id and creation time
        generate/                      one StageDir per stage
          stage.json                   what the stage was started with (its fingerprint), when
          config.yaml                  the fully resolved config
          generations.jsonl.partial    records appended batch by batch while running
          generations.jsonl            the same file, renamed once every record is in
          manifest.json                written last: status "complete", versions, hardware, timings
        judge/<judge name>/ ...        likewise, plus plan.json and the result CSVs
        replaced/<time>/...            what `overwrite=true` moved out of the way (never deleted)

A stage is finished exactly when its manifest.json says status "complete". A stage directory without one is
unfinished: re-running the same command resumes it, skipping the records already written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .config import NAME_LIMIT, check_name
from .errors import PipelineError, plural, preview
from .locks import StageLock, results_lock
from .rows import check_versions
from .files import (JsonlAppender, fsync_dir, parse_jsonl, read_checked_jsonl, read_json, repair_jsonl_tail,
                    sha256_file, write_atomic, write_json, write_sums)

log = logging.getLogger(__name__)

SUMS_VERSION = 1  # stage.json's "checksums": the partial records file has a checksums file beside it

RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,%d}" % (NAME_LIMIT - 1))
LATEST = "latest"


def check_run_id(run_id: str) -> str:
    """A run id is a single folder name: no path separators, no '..', nothing that escapes runs/."""
    if str(run_id) == LATEST:
        raise PipelineError(f"run_id={LATEST!r} is not allowed for a new run: it names the newest run. "
                            "Example: run_id=nq-smollm2-try1")
    return check_name("run_id", run_id)


def new_run_id(*parts: str) -> str:
    """A fresh, sortable id: '20261121-143000-smollm2-135m-factoids'."""
    tail = "-".join(re.sub(r"[^A-Za-z0-9._-]+", "-", p).strip("-.") for p in parts if p)
    return check_run_id(f"{time.strftime('%Y%m%d-%H%M%S')}-{tail}"[:128])


def list_runs(runs_dir: Path) -> list[str]:
    """Run ids under `runs_dir`, oldest first (by creation time recorded in run.json)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    found = []
    for p in runs_dir.iterdir():
        if p.is_dir() and not p.is_symlink() and (p / "run.json").is_file():
            try:
                created = read_json(p / "run.json").get("created", 0)
            except PipelineError:
                created = 0
            found.append((created, p.name))
    return [name for _, name in sorted(found)]


def find_run(runs_dir: Path, run_id: str | None) -> Path:
    """The directory of an existing run; None or 'latest' means the newest one."""
    runs_dir = Path(runs_dir)
    existing = list_runs(runs_dir)
    if run_id is None or run_id == LATEST:
        if not existing:
            raise PipelineError(
                f"no runs in {runs_dir}/ yet: run `python -m pipeline stage=generate` first, or pass "
                "runs_dir=<folder> if your runs are elsewhere."
            )
        link = runs_dir / LATEST
        if link.is_symlink() and (link / "run.json").is_file():
            chosen, why = runs_dir / os.readlink(link), f"{runs_dir / LATEST} points at it"
        else:
            chosen, why = runs_dir / existing[-1], "the newest run"
        log.info("no run_id given: run %s (%s); pass run_id=<id> for another", chosen.name, why)
        return chosen
    run_id = check_run_id(run_id)
    path = runs_dir / run_id
    if not (path / "run.json").is_file():
        listing = preview(reversed(existing), 15) if existing else "none"
        raise PipelineError(
            f"unknown run_id={run_id!r}: there is no run {path}/. Runs in {runs_dir}/ (newest first): {listing}."
        )
    return path


def create_run(runs_dir: Path, run_id: str) -> Path:
    """Make (or reuse) the directory of run `run_id` and point runs/latest at it."""
    path, _ = make_run(runs_dir, run_id)
    point_latest(Path(runs_dir), run_id)
    return path


def make_run(runs_dir: Path, run_id: str) -> tuple[Path, bool]:
    """Make (or reuse) the directory of run `run_id`; whether this call made it. runs/latest is left alone: a stage
    points it at the run once its first record is written (`point_latest`), so that a run whose first stage failed
    (a model that did not load) never becomes the run that the next command picks."""
    path = Path(runs_dir) / check_run_id(run_id)
    new = not (path / "run.json").exists()
    path.mkdir(parents=True, exist_ok=True)
    if new:
        try:
            write_json(path / "run.json", {"run_id": run_id, "created": time.time(),
                                           "created_iso": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        except BaseException:
            forget_run(path)
            raise
    return path, new


def forget_run(run_dir: Path) -> None:
    """Remove a run this process made whose first stage failed before its first record: its run.json, and its
    folder and .locks/ when nothing else is in them (another process's files are never touched)."""
    (run_dir / "run.json").unlink(missing_ok=True)
    for folder in (run_dir / ".locks", run_dir):
        with contextlib.suppress(OSError):  # not empty: someone else's work is there, and stays
            folder.rmdir()
    if not run_dir.exists():
        log.info("run %s: removed again, as its first stage wrote nothing", run_dir.name)


def point_latest(runs_dir: Path, run_id: str) -> None:
    """Atomically re-point runs/latest (a relative symlink) at `run_id`."""
    tmp = runs_dir / f".{LATEST}.tmp-{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(run_id, tmp)
        os.replace(tmp, runs_dir / LATEST)
    except OSError as e:  # a filesystem without symlinks still works: 'latest' then falls back to run.json times
        log.debug("could not update %s/%s: %s", runs_dir, LATEST, e)


def move_aside(run_dir: Path, paths: list[Path]) -> Path | None:
    """Move finished outputs into run_dir/replaced/<time>/ so that an overwrite never destroys results; not while
    a report reads or writes the results runs share (locks.results_lock)."""
    paths = [p for p in paths if p.exists()]
    if not paths:
        return None
    with results_lock(run_dir.parent):
        return _move_aside(run_dir, paths)


def _move_aside(run_dir: Path, paths: list[Path]) -> Path:
    dest_root = run_dir / "replaced" / time.strftime("%Y%m%d-%H%M%S")
    for p in paths:
        dest = dest_root / p.relative_to(run_dir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(p), dest)
        log.info("moved the previous %s to %s", p.relative_to(run_dir), dest.relative_to(run_dir))
    return dest_root


def diff_fingerprints(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Human-readable differences between two nested dicts: ['generator.max_new_tokens: 32 -> 16']."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff_fingerprints(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out



def run_dir_of(path: Path) -> Path:
    """The run folder a stage folder belongs to (the nearest parent with run.json), else the folder's parent."""
    for parent in Path(path).parents:
        if (parent / "run.json").is_file():
            return parent
    return Path(path).parent


def check_records(records: list[dict], where: Path, records_name: str) -> None:
    """Every record has a known schema version and its own id: refuse anything else, naming lines and ids."""
    check_versions(records, where, records_name)
    counts = Counter(r.get("id") for r in records)
    dups = {k: n for k, n in counts.items() if n > 1}
    if dups:
        raise PipelineError(
            f"{where}: {plural(len(dups), 'id')} appear more than once "
            f"({preview([f'{k!r} x{n}' for k, n in dups.items()], 5)}); "
            "each answer must be recorded exactly once. The file was edited or written by two processes at once: "
            "redo the stage with overwrite=true."
        )

class StageLogHandler(logging.FileHandler):
    """A stage's log.txt. When it cannot be written (a full disk), it says so once, in one line on the terminal,
    and stops trying: the stage itself then fails at its next durable write, naming that file, or finishes."""

    def __init__(self, path: Path):
        super().__init__(path, encoding="utf-8", delay=True)
        self.failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        if self.failed:
            return
        self.failed = True
        error = sys.exc_info()[1]
        what = os.strerror(error.errno) if isinstance(error, OSError) and error.errno else str(error)
        log.warning("%s: cannot be written (%s); this stage's log goes to the terminal only from here", self.baseFilename,
                    what)


@dataclass
class StageDir:
    """One stage's output folder: a records file that grows batch by batch, and a manifest written last."""

    path: Path
    records_name: str  # e.g. "generations.jsonl"

    @property
    def records_path(self) -> Path:
        return self.path / self.records_name

    @property
    def partial_path(self) -> Path:
        return self.path / f"{self.records_name}.partial"

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    @property
    def sums_path(self) -> Path:
        """The checksum of every record of the partial file, appended after each batch (see files.read_checked_jsonl);
        removed once the stage is finished, when the manifest's sha256 covers the whole file."""
        return self.path / f"{self.records_name}.sums"

    def is_complete(self) -> bool:
        if not self.manifest_path.is_file():
            return False
        try:
            return read_json(self.manifest_path).get("status") == "complete"
        except PipelineError:
            return False

    def manifest(self) -> dict:
        return read_json(self.manifest_path)

    def lock(self) -> StageLock:
        """The stage's exclusive lock: hold it from `begin` to `finish` (a context manager)."""
        run_dir = run_dir_of(self.path)
        name = str(self.path.relative_to(run_dir)).replace(os.sep, "--") if self.path.is_relative_to(run_dir) \
            else self.path.name
        return StageLock(run_dir / ".locks" / f"{name}.lock", f"{self.path}/")

    def finished_with(self, fingerprint: dict, run_dir: Path) -> bool:
        """True when the stage is finished with these settings; an error when finished with others. Read-only."""
        if not self.is_complete():
            return False
        changes = diff_fingerprints(self.manifest().get("fingerprint", {}), fingerprint)
        if changes:
            raise PipelineError(
                f"{self.path}/ already holds a finished stage made with other settings ({'; '.join(changes)}); its "
                "results are kept. Pass overwrite=true to redo it (the old outputs are moved to "
                f"{run_dir}/replaced/, not deleted), or choose another run_id."
            )
        return True

    def begin(self, fingerprint: dict, overwrite: bool, config_yaml: str, run_dir: Path,
              also_replace: tuple[Path, ...] = ()) -> list[dict] | None:
        """Start or resume the stage; returns the records an earlier, interrupted attempt already wrote, or None
        when the stage is already finished with these settings (nothing to do).

        A finished stage made with other settings is refused unless `overwrite` (then it, and `also_replace`, are
        moved aside). An unfinished one is resumed if it was started with the same settings, else refused.
        """
        label = str(self.path)
        if self.is_complete():
            if not overwrite:
                self.finished_with(fingerprint, run_dir)  # refuses other settings
                return None
            self.move_aside_unlocked(run_dir, also_replace)
        elif self.path.exists() and overwrite:
            self.move_aside_unlocked(run_dir, also_replace)

        stage_file = self.path / "stage.json"
        done: list[dict] = []
        if stage_file.is_file():
            started = read_json(stage_file)
            changes = diff_fingerprints(started.get("fingerprint", {}), fingerprint)
            if changes:
                raise PipelineError(
                    f"{label}/ holds an unfinished stage started with different settings "
                    f"({'; '.join(changes)}). Re-run with the same settings to resume it, or pass overwrite=true "
                    "to start it again (the partial outputs are moved aside)."
                )
            if self.records_path.exists() and not self.partial_path.exists():
                # stopped between publishing the records and writing the manifest (killed, a full disk): take the
                # records back, so that this attempt publishes them again without redoing any
                os.replace(self.records_path, self.partial_path)
            done = self.resume_records(started)
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            for left in (self.partial_path, self.sums_path):  # left by a crash before stage.json: nothing to trust
                left.unlink(missing_ok=True)
            self.started_here = True
            write_json(stage_file, {"fingerprint": fingerprint, "started": time.time(), "pid": os.getpid(),
                                    "checksums": SUMS_VERSION})
        write_atomic(self.path / "config.yaml", config_yaml)
        return done

    started_here = False  # set by begin when this attempt wrote stage.json

    def resume_records(self, started: dict) -> list[dict]:
        """What an interrupted attempt wrote, each record verified against the checksum written with it; a stage
        begun by a version that kept no checksums is read as it was, and its records get checksums from now on."""
        if started.get("checksums") == SUMS_VERSION:
            if self.partial_path.exists() and self.partial_path.stat().st_size and not self.sums_path.exists():
                raise PipelineError(
                    f"{self.partial_path}: the checksums of its records ({self.sums_path.name}) are missing, so they "
                    "cannot be verified (a file restored or copied by hand?). Restore both files, or pass "
                    "overwrite=true to redo the stage (the old files are moved to replaced/).")
            done = read_checked_jsonl(self.partial_path, self.sums_path)
        else:
            done = repair_jsonl_tail(self.partial_path)
            if done:
                log.warning("%s: begun by an older version that kept no checksums, so its %d records are taken as "
                            "they are", self.partial_path, len(done))
            write_sums(self.sums_path, [line for line in self.partial_path.read_bytes().split(b"\n") if line]
                       if self.partial_path.exists() else [])
            write_json(self.path / "stage.json", {**started, "checksums": SUMS_VERSION})
        check_records(done, self.partial_path, self.records_name)
        return done

    def holds_records(self) -> bool:
        """Whether any record of this stage is on disk (written, or published without a manifest yet)."""
        return self.records_path.exists() or (self.partial_path.exists() and self.partial_path.stat().st_size > 0)

    def forget_unstarted(self, run_dir: Path) -> bool:
        """After a failed attempt that began the stage and wrote no record: remove what it made (stage.json,
        config.yaml, log.txt, plan.json), and the stage's folders when empty, so that nothing is left in the way of
        the corrected command. False (nothing removed) when the stage holds records or was begun earlier."""
        if not self.started_here or self.holds_records():
            return False
        for name in ("stage.json", "config.yaml", "log.txt", "plan.json", self.partial_path.name, self.sums_path.name):
            (self.path / name).unlink(missing_ok=True)
        folder = self.path
        while folder != run_dir and folder.is_relative_to(run_dir):
            try:
                folder.rmdir()
            except OSError:  # not empty: other stages (or shards) are there
                break
            folder = folder.parent
        return True

    def move_aside_unlocked(self, run_dir: Path, also_replace: tuple[Path, ...]) -> None:
        """Move this stage and `also_replace` aside, refusing while another process works in any stage among them."""
        with contextlib.ExitStack() as stack:
            for folder in also_replace:
                for lock_file in sorted((run_dir / ".locks").glob(f"{folder.relative_to(run_dir)}--*.lock")):
                    stack.enter_context(StageLock(lock_file, f"{run_dir / lock_file.stem.replace('--', os.sep)}/"))
            move_aside(run_dir, [self.path, *also_replace])

    def appender(self) -> JsonlAppender:
        return JsonlAppender(self.partial_path, self.sums_path)

    def finish(self, manifest: dict[str, Any]) -> None:
        """Publish the records file, then the manifest (with the settings the stage was made with); after this
        the stage counts as finished, and the records' checksums give way to the manifest's sha256."""
        records = read_checked_jsonl(self.partial_path, self.sums_path)
        check_records(records, self.partial_path, self.records_name)
        if "records" in manifest and manifest["records"] != len(records):
            raise PipelineError(f"{self.partial_path}: holds {len(records)} records, but this stage made "
                                f"{manifest['records']}; not publishing it. Redo the stage with overwrite=true.")
        os.replace(self.partial_path, self.records_path)
        fsync_dir(self.path)
        fingerprint = read_json(self.path / "stage.json").get("fingerprint", {})
        write_json(self.manifest_path, {"status": "complete", "fingerprint": fingerprint, **manifest,
                                        "records_file": self.records_file_info(len(records))})
        self.sums_path.unlink(missing_ok=True)

    def records_file_info(self, count: int) -> dict:
        """What a manifest keeps to verify its records file later: name, number of records, sha256."""
        return {"name": self.records_name, "records": count, "sha256": sha256_file(self.records_path)}

    def publish(self, records: list[dict], manifest: dict[str, Any]) -> None:
        """Write a finished stage in one go (a merge): records file, then manifest."""
        check_records(records, self.records_path, self.records_name)
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.records_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        write_json(self.manifest_path, {"status": "complete", **manifest,
                                        "records_file": self.records_file_info(len(records))})

    @contextmanager
    def log_to_file(self, name: str = "log.txt") -> Iterator[None]:
        """Also write the package's log records to <stage>/log.txt while the stage runs (appending on resume)."""
        handler = StageLogHandler(self.path / name)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.INFO)
        root = logging.getLogger("pipeline")
        level = root.level
        if root.getEffectiveLevel() > logging.INFO:
            root.setLevel(logging.INFO)
        root.addHandler(handler)
        try:
            yield
        except BaseException as e:  # into the stage's log file only: the entry point tells the user
            handler.handle(root.makeRecord(root.name, logging.ERROR, __file__, 0, "stage stopped: %s: %s",
                                           (type(e).__name__, e), None))
            raise
        finally:
            root.removeHandler(handler)
            root.setLevel(level)
            with contextlib.suppress(OSError):  # a full disk was said when it first failed
                handler.close()

    def read_records(self) -> list[dict]:
        """The finished stage's records, verified against its manifest (count and sha256), with known schemas and
        unique ids; anything else is refused, naming the file and what does not match."""
        expected = self.manifest().get("records_file")
        if not self.records_path.is_file():
            raise PipelineError(f"{self.records_path} is missing although {self.manifest_path} says the stage is "
                                "complete; restore it, or redo the stage with overwrite=true.")
        if expected is None:
            log.warning("%s: its manifest predates record checksums, so the file cannot be verified", self.records_path)
        elif sha256_file(self.records_path) != expected.get("sha256"):
            raise PipelineError(
                f"{self.records_path} is not the file its stage wrote: its sha256 differs from the one in "
                f"{self.manifest_path} ({expected.get('records')} records). It was edited, truncated or replaced "
                "after the stage finished. Restore the original, or redo the stage with overwrite=true."
            )
        records = parse_jsonl(self.records_path)
        if expected is not None and len(records) != expected.get("records"):
            raise PipelineError(f"{self.records_path}: {len(records)} records, but its manifest says "
                                f"{expected.get('records')}; redo the stage with overwrite=true.")
        check_records(records, self.records_path, self.records_name)
        return records


def finished_judges(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "judge").glob("*") if StageDir(p, "verdicts.jsonl").is_complete())
