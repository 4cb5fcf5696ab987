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
from typing import Iterable

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


class JsonlAppender:
    """Append-only JSONL writer: whole lines, flushed and fsynced after each batch."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._f = open(self.path, "ab")

    def append(self, records: Iterable[dict]) -> None:
        """Append whole lines and make them durable; on a full disk, cut back to the last whole batch and say so."""
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        start = self._f.tell()
        try:
            self._f.write(data)
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as e:
            if e.errno not in NO_SPACE:
                raise
            self._recover(start)
            e.filename = e.filename or str(self.path)
            raise PipelineError(os_error_message(e, needed_bytes=len(data))) from None

    def _recover(self, keep: int) -> None:
        """After a failed write: drop the torn batch, so the file again ends with the last complete batch."""
        try:
            self._f.close()
        except OSError:
            pass  # the buffered rest could not be written either; truncating below removes what did get out
        with open(self.path, "r+b") as f:
            f.truncate(keep)
            os.fsync(f.fileno())
        self._f = open(self.path, "ab")

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
