"""The exclusive lock one process holds on a stage for the stage's whole life (runs/<id>/.locks/<stage>.lock), and the
short one over the result files that several runs share (runs/.results.lock)."""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import PipelineError

log = logging.getLogger(__name__)


def holder_description() -> dict:
    """Who holds a lock: written into the lock file, shown to the process that finds it taken."""
    return {"host": platform.node(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "slurm_job": os.environ.get("SLURM_JOB_ID"), "command": " ".join(sys.argv)[:300]}


class StageLock:
    """An exclusive OS lock (flock) that one process holds on a stage for the stage's whole life.

    The lock file lives in runs/<id>/.locks/, outside the stage folder, so that moving a stage aside never moves
    its lock. The kernel drops the lock when its process ends, however it ends (kill -9, node failure), so a lock
    left by a dead process is simply taken over; the file's contents say who holds it (emptied on a clean release,
    so a holder found there died holding it, and the log says so). Re-entrant within
    one process (the judge stage writes its report under its own lock).
    """

    _held: dict[str, list] = {}  # lock path -> [fd, depth], for this process

    def __init__(self, path: Path, what: str):
        self.path, self.what = Path(path), what

    def __enter__(self) -> "StageLock":
        key = str(self.path.resolve())
        if key in self._held:
            self._held[key][1] += 1
            return self
        fd = self._open_locked()
        if fd is None:
            holder = self._read_path()
            who = ", ".join(f"{k} {v}" for k, v in holder.items() if v and k != "command") or "unknown"
            raise PipelineError(
                f"{self.what} is in use by another process ({who}; command: {holder.get('command', '?')}). Two "
                "processes on one stage would corrupt it, so this one stops without writing anything. Wait for the "
                "other to finish (then this command has nothing left to do) or stop it; a stopped process releases "
                "its lock at once, and running the same command again resumes."
            ) from None
        previous = self._read(fd)
        if previous:
            log.info("%s: taking over the lock last held by pid %s on %s (started %s); that process has ended",
                     self.what, previous.get("pid"), previous.get("host"), previous.get("started"))
        try:  # who holds it, for the next process to show; the lock itself needs no disk space
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder_description()) + "\n").encode(), 0)
        except OSError as e:
            log.debug("%s: could not record the lock's holder: %s", self.path, e)
        self._held[key] = [fd, 1]
        return self

    def _open_locked(self) -> int | None:
        """A descriptor of the lock file holding the flock; None when another process holds it. A holder that
        removes the file (`discard`) may do so between our open and our flock: the lock we got is then on a file
        nobody else will open, so it is given up and taken again on the file now at the path."""
        while True:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # its folder was removed by a discarding holder just now
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)

    def _read_path(self) -> dict:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return {}
        try:
            return self._read(fd)
        finally:
            os.close(fd)

    def discard(self) -> None:
        """Remove the lock file when the lock is released (a stage that left nothing behind leaves no lock)."""
        self._held[str(self.path.resolve())].append("discard")

    def __exit__(self, *exc) -> None:
        key = str(self.path.resolve())
        entry = self._held[key]
        entry[1] -= 1
        if entry[1] == 0:
            del self._held[key]
            if "discard" in entry:  # unlinked while still held: a process that opened it meanwhile tries again
                self.path.unlink(missing_ok=True)
            try:  # a clean release leaves no holder behind: the next process only reports a holder that died
                os.ftruncate(entry[0], 0)
            except OSError:
                pass
            os.close(entry[0])  # closing the descriptor releases the flock
            if "discard" in entry:
                try:
                    self.path.parent.rmdir()  # .locks/ of a run with no other lock
                except OSError:
                    pass

    @staticmethod
    def _read(fd: int) -> dict:
        try:
            return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        except (ValueError, OSError):
            return {}


_results_held: dict[str, int] = {}  # lock path -> depth, for this process


@contextmanager
def results_lock(runs_dir: Path) -> Iterator[None]:
    """Waits for, then holds, the lock over the results that several runs share: each run's paired comparisons with
    other runs (rows against run:<id> in its metrics.csv files) and runs/comparisons.csv. A report over several runs
    holds it from reading their samples to its last write; a judge's report while it rewrites its metrics and drops
    the comparisons its new results undo; a stage that moves results aside while it moves them. So none can write
    back what another has just replaced (rows computed from verdicts that a judge run again has made stale), or
    read a folder that is moved away under it. Held for the length of a report at most, so it waits (saying so)
    rather than refuses; re-entrant within one process."""
    path = Path(runs_dir) / ".results.lock"
    key = str(path.resolve())
    if key in _results_held:
        _results_held[key] += 1
        try:
            yield
        finally:
            _results_held[key] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s: another process is writing results these runs share (a report); waiting for it", path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        _results_held[key] = 1
        try:
            yield
        finally:
            del _results_held[key]
    finally:
        os.close(fd)  # releases the flock
