"""Durable file primitives: every artifact is either complete or visibly unfinished.

- `write_atomic` writes to a temporary file in the same folder, fsyncs it, and renames it over the target, so a
  reader sees the old file or the new one, never half of one.
- `JsonlAppender` appends whole lines in batches and fsyncs after each batch. A process killed mid-write leaves at
  most one torn last line; reopening the file cuts it off (and says so) before anything new is appended.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from pathlib import Path

from .errors import PipelineError, os_error_message

# errno values that mean "no room": the disk or the user's quota is full
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)

log = logging.getLogger(__name__)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def write_atomic(path: Path, data: str | bytes) -> None:
    """Replace `path` with `data` in one step (temporary file, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    raw = data if isinstance(data, bytes) else data.encode("utf-8")
    try:
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)  # never leave a half-written temporary file behind
        if e.errno in NO_SPACE:
            e.filename = e.filename or str(path)
            raise PipelineError(os_error_message(e, needed_bytes=len(raw))) from None
        raise
    fsync_dir(path.parent)


def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise PipelineError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}).") from None


def parse_jsonl(path: Path) -> list[dict]:
    """Records of a finished JSONL file; a bad line is an error that names the file and its 1-based line."""
    records = []
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise PipelineError(
                    f"{path}, line {lineno}: not a valid record ({getattr(e, 'msg', None) or e.reason}). The file is "
                    "damaged; re-run the stage that wrote it with overwrite=true."
                ) from None
            if not isinstance(record, dict):
                raise PipelineError(f"{path}, line {lineno}: a record must be a JSON object, not "
                                    f"{type(record).__name__}; the file is damaged.")
            records.append(record)
    return records


def repair_jsonl_tail(path: Path) -> list[dict]:
    """Read the records of an append-only JSONL file, cutting off a torn last line left by a killed writer.

    Appends are whole lines, so only bytes after the last newline can be the remains of an interrupted write;
    those are cut off. A bad line anywhere before that is real damage and an error.
    """
    if not path.exists():
        return []
    with open(path, "rb") as f:
        raw = f.read()
    complete, newline, torn = raw.rpartition(b"\n")
    if torn:
        keep = len(complete) + len(newline)
        log.warning("%s: cutting off a torn last line (%d bytes) left by an interrupted write", path, len(torn))
        with open(path, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    records = []
    for lineno, line in enumerate(complete.split(b"\n") if newline else [], 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as e:
            raise PipelineError(
                f"{path}, line {lineno}: not a valid record ({e}). Only a torn last line can come from an "
                "interrupted write, so this file is damaged; move it aside and re-run the stage."
            ) from None
    return records


def line_sha256(line: bytes) -> str:
    """The checksum a records file's line is stored with while its stage is unfinished (without its newline)."""
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def _whole_lines(path: Path) -> list[bytes]:
    """The complete lines of an append-only file, after cutting off a torn last line left by a killed writer."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    complete, newline, torn = raw.rpartition(b"\n")
    if torn:
        log.warning("%s: cutting off a torn last line (%d bytes) left by an interrupted write", path, len(torn))
        _truncate(path, len(complete) + len(newline))
    return complete.split(b"\n") if newline else []


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)
        f.flush()
        os.fsync(f.fileno())


def _record_id(line: bytes) -> object:
    try:
        return json.loads(line).get("id")
    except (ValueError, AttributeError):
        return None


def read_checked_jsonl(path: Path, sums_path: Path) -> list[dict]:
    """The records of an unfinished append-only JSONL file, each verified against the checksum written after it.

    Each batch is appended, fsynced, and then its lines' checksums are appended to `sums_path` (one JSON line per
    record: id and sha256), so a line with no checksum yet can only be the batch in flight when the writer died:
    it is cut off and redone. A line whose checksum differs, or a checksum whose line is gone, is an edit made by
    hand: refused, naming the ids, because resuming would publish the edit under a fresh checksum.
    """
    lines = _whole_lines(path)
    sums = [json.loads(line) for line in _whole_lines(sums_path) if line.strip()]
    if len(sums) > len(lines):
        gone = [s.get("id") for s in sums[len(lines):]]
        raise PipelineError(
            f"{path}: {len(gone)} records written by the stage are no longer there (ids {_ids(gone)}); the file was "
            "cut or edited by hand. Restore it, or pass overwrite=true to redo the stage (the old files are moved "
            "to replaced/).")
    edited = [s.get("id") if _record_id(line) in (None, s.get("id")) else f"{s.get('id')} (now {_record_id(line)})"
              for line, s in zip(lines, sums) if line_sha256(line) != s.get("sha256")]
    if edited:
        raise PipelineError(
            f"{path}: {len(edited)} records differ from what the stage wrote (ids {_ids(edited)}); the unfinished "
            "file was edited by hand, and resuming would publish the edit as the stage's own. Restore the records, "
            "or pass overwrite=true to redo the stage (the old files are moved to replaced/).")
    if len(lines) > len(sums):
        keep = sum(len(line) + 1 for line in lines[:len(sums)])
        log.warning("%s: cutting off %d records written after the last checksum (the batch in flight when the "
                    "writer stopped); they are made again", path, len(lines) - len(sums))
        _truncate(path, keep)
    records = []
    for lineno, line in enumerate(lines[:len(sums)], 1):
        try:
            records.append(json.loads(line))
        except ValueError as e:
            raise PipelineError(f"{path}, line {lineno}: not a valid record ({e}); the file is damaged. Pass "
                                "overwrite=true to redo the stage.") from None
    return records


def peek_jsonl(path: Path) -> list[dict]:
    """The records an unfinished file holds so far, read without changing it: a torn last line, or a line that is not
    a record, is passed over here (resuming the stage deals with both)."""
    records = []
    for line in path.read_bytes().split(b"\n"):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def write_sums(sums_path: Path, lines: list[bytes]) -> None:
    """Checksums for lines already in a records file (one written by an older version, which kept none)."""
    write_atomic(sums_path, "".join(json.dumps({"id": _record_id(line), "sha256": line_sha256(line)}) + "\n"
                                    for line in lines))


def _ids(ids: list) -> str:
    shown = ", ".join(repr(i) if not isinstance(i, str) or " (now " not in i else i for i in ids[:8])
    return shown + (f" and {len(ids) - 8} more" if len(ids) > 8 else "")


class JsonlAppender:
    """Append-only JSONL writer: whole lines, flushed and fsynced after each batch; with `sums_path`, each batch's
    checksums are appended there once its lines are durable (see `read_checked_jsonl`)."""

    def __init__(self, path: Path, sums_path: Path | None = None):
        self.path = Path(path)
        self.sums_path = Path(sums_path) if sums_path else None
        self._f = open(self.path, "ab")
        self._sums = open(self.sums_path, "ab") if self.sums_path else None

    def append(self, records: list[dict]) -> None:
        """Append whole lines and make them durable; on a full disk, cut back to the last whole batch and say so."""
        lines = [json.dumps(r, ensure_ascii=False).encode("utf-8") for r in records]
        data = b"".join(line + b"\n" for line in lines)
        start = self._f.tell()
        sums_start = self._sums.tell() if self._sums else 0
        writing = self.path
        try:
            self._durable(self._f, data)
            if self._sums:
                writing = self.sums_path
                self._durable(self._sums, "".join(json.dumps({"id": r.get("id"), "sha256": line_sha256(line)}) + "\n"
                                                  for r, line in zip(records, lines)).encode())
        except OSError as e:
            if e.errno not in NO_SPACE:
                raise
            self._recover(start, sums_start)
            e.filename = e.filename or str(writing)
            raise PipelineError(os_error_message(e, needed_bytes=len(data))) from None

    @staticmethod
    def _durable(f, data: bytes) -> None:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())

    def _recover(self, keep: int, sums_keep: int) -> None:
        """After a failed write: drop the torn batch (and its checksums), so both files again end with the last
        complete batch."""
        for handle, path, size in ((self._f, self.path, keep), (self._sums, self.sums_path, sums_keep)):
            if handle is None:
                continue
            try:
                handle.close()
            except OSError:
                pass  # the buffered rest could not be written either; truncating below removes what did get out
            _truncate(path, size)
        self._f = open(self.path, "ab")
        self._sums = open(self.sums_path, "ab") if self.sums_path else None

    def close(self) -> None:
        self._f.close()
        if self._sums:
            self._sums.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
