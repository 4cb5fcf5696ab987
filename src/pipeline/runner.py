"""The life cycle every record-writing stage shares, written once.

    job = StageJob(cfg, run_dir, root, shard, fingerprint, ids)     what, where, with which settings, over which ids
    if job.finished(): return                                         read-only: nothing to do (or other settings)
    with job.attempt() as attempt:                                    lock, begin or resume, log file, graceful stop
        if attempt is None: return                                    finished meanwhile by another process
        ... load what the records need, for attempt.todo only ...
        attempt.write(batches, rows_of)                               append batch by batch, with the progress bar
        attempt.finish(manifest)                                      publish the records, then the manifest

A stage (generate.py, judge.py) is then a straight line: check its inputs, build its job, load, write, finish.
Everything here is about files and processes; nothing loads a model.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

from omegaconf import OmegaConf
from tqdm import tqdm

from .errors import PipelineError, preview
from .interrupts import GracefulStop
from .manifest import environment_manifest
from .rows import Row
from .runs import StageDir, forget_run, point_latest
from .shards import Shard, refuse_other_settings

log = logging.getLogger(__name__)

B = TypeVar("B")


@dataclass
class StageJob:
    """One stage (or one shard of it) of one run: its folder, its settings and the ids it covers."""

    cfg: object  # the resolved Config
    run_dir: Path
    root: StageDir  # the stage as a whole (a shard writes root/shards/<name>/)
    shard: Shard
    fingerprint: dict  # the settings that decide its records: a resume or rerun must match them
    all_ids: Sequence[str]  # every id of the stage, in order
    also_replace: tuple[Path, ...] = ()  # folders made from this stage's records, moved aside with it on overwrite
    new_run: bool = False  # this process made the run folder: a first stage that writes nothing removes it again
    points_latest: bool = False  # the stage's first record points runs/latest at the run (the run's answers)
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.assigned = self.shard.select(list(self.all_ids))
        self.mine = set(self.assigned)
        self.stage = self.shard.stage(self.root.path, self.root.records_name)

    @property
    def sharded(self) -> bool:
        return self.shard.count > 1

    @property
    def label(self) -> str:
        return f" (shard {self.shard.name})" if self.sharded else ""

    def finished(self) -> bool:
        """Whether this stage is already finished with these settings (read-only); a finished stage or sibling
        shard with other settings is refused, unless overwrite=true."""
        refuse_other_settings(self.root.path, self.fingerprint, self.root.records_name)
        if self.cfg.overwrite:
            return False
        done = (self.sharded and self.root.finished_with(self.fingerprint, self.run_dir)) or \
            self.stage.finished_with(self.fingerprint, self.run_dir)
        if done:
            log.info("run %s: %s is already complete with these settings; nothing to do (overwrite=true redoes it)",
                     self.run_dir.name, self.root.path if self.sharded else self.stage.path)
        return done

    @contextmanager
    def attempt(self) -> Iterator["Attempt | None"]:
        """Hold the stage's lock, begin or resume it, log into its folder and stop gracefully on a signal; yields
        None when another process finished the stage since `finished()` was asked."""
        forgotten = False

        def forget_if_empty(exc_type, exc, tb) -> None:
            """A failure before the first record (a model that does not load) leaves nothing behind."""
            nonlocal forgotten
            if exc_type is not None and self.stage.forget_unstarted(self.run_dir):
                lock.discard()
                forgotten = True

        try:
            with ExitStack() as stack:
                lock = stack.enter_context(self.stage.lock())  # exclusive for the stage's whole life
                stack.push(forget_if_empty)
                done = self.stage.begin(self.fingerprint, self.cfg.overwrite,
                                        OmegaConf.to_yaml(self.cfg, resolve=True), self.run_dir,
                                        also_replace=self.also_replace)
                if done is None:
                    yield None
                    return
                stack.enter_context(self.stage.log_to_file())
                stopper = stack.enter_context(GracefulStop())
                yield Attempt(self, done, stopper)
        finally:
            if forgotten and self.new_run:  # after the lock is released and its file removed
                forget_run(self.run_dir)

    def point_latest(self) -> None:
        if self.points_latest:
            point_latest(self.run_dir.parent, self.run_dir.name)


@dataclass
class Attempt:
    """One attempt at a begun stage: what an earlier attempt wrote, what is left, and the writing itself."""

    job: StageJob
    done: list[dict]  # records an interrupted earlier attempt wrote
    stopper: GracefulStop

    def __post_init__(self) -> None:
        done_ids = {r["id"] for r in self.done}
        strays = sorted(done_ids - self.job.mine)
        if strays:
            raise PipelineError(f"{self.job.stage.partial_path}: holds records for ids this stage does not cover "
                                f"({preview(strays, 5)}); it was edited or belongs to other data. Pass "
                                "overwrite=true to start the stage again (the partial outputs are moved aside).")
        self.todo = [i for i in self.job.all_ids if i in self.job.mine and i not in done_ids]  # in the stage's order
        self.written = len(self.done)
        self.seconds = 0.0  # spent in write()
        if self.done:
            log.info("resuming an interrupted attempt: %d records already written, %d to go", len(self.done),
                     len(self.todo))

    @property
    def total(self) -> int:
        return len(self.job.assigned)

    def write(self, batches: Iterable[B], rows_of: Callable[[B], list[Row]], desc: str, unit: str) -> None:
        """Make and append the rows of each batch; between batches, stop cleanly if SLURM asked."""
        t0 = time.perf_counter()
        with self.job.stage.appender() as out, tqdm(total=self.total, initial=self.written, desc=desc, unit=unit,
                                                    disable=not self.job.cfg.progress) as bar:
            for batch in batches:
                self.stopper.check(self.written, self.total)
                rows = rows_of(batch)
                out.append([row.to_json() for row in rows])
                if self.written == len(self.done):  # the run's first answers of this attempt are on disk
                    self.job.point_latest()
                self.written += len(rows)
                bar.update(len(rows))
        self.seconds = time.perf_counter() - t0

    def finish(self, stage_name: str, schema: str, details: dict) -> None:
        """Publish the records and the manifest: the fields every stage has, then the stage's own `details`."""
        job = self.job
        job.stage.finish({
            "stage": stage_name,
            "run_id": job.run_dir.name,
            "schema": schema,
            "records": self.total,
            "resumed_with": len(self.done),
            "shard": {"index": job.shard.index, "count": job.shard.count, "name": job.shard.name},
            "assigned_ids": job.assigned if job.sharded else None,
            **details,
            "config": OmegaConf.to_container(job.cfg, resolve=True),
            **environment_manifest(),
        })
        job.point_latest()

    def rate(self, count: float) -> float | None:
        """`count` per second of writing (None when nothing was written)."""
        return round(count / self.seconds, 3) if self.seconds else None
