"""Sharding a stage over SLURM array tasks, and merging the shards back.

A shard is a deterministic slice of the data set by id: the ids are sorted and dealt round-robin, so shard i of n
always gets the same ids whatever the order of the data or of execution, and shard sizes differ by at most one.

    runs/<id>/generate/
      shards/00002-of-00004/    one StageDir per shard: its own records file, manifest, log (written by one task)
      generations.jsonl         the merge: every shard's records, each id exactly once
      manifest.json             written last; says which shards were merged

Array tasks only ever write their own shard folder. The merged files are written by single-process steps
(`stage=merge`, `stage=report`, or an unsharded stage), never by two tasks at once. Reading a stage's records
(`stage_records`) uses the merged file when there is one, else merges the shards in memory and checks them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import PipelineError, plural, preview
from .files import read_json
from .runs import StageDir, diff_fingerprints

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @property
    def name(self) -> str:
        return f"{self.index:05d}-of-{self.count:05d}"

    def select(self, ids: list[str]) -> list[str]:
        """This shard's ids: sorted ids dealt round-robin."""
        return sorted(ids)[self.index::self.count]

    def stage(self, stage_root: Path, records_name: str) -> StageDir:
        """The folder this shard writes: the stage itself when unsharded, else shards/<name>/."""
        path = stage_root if self.count == 1 else stage_root / "shards" / self.name
        return StageDir(path, records_name)


def from_slurm(env: dict[str, str] | None = None) -> Shard | None:
    """The shard of a SLURM array task (task id relative to the array's first id and step), or None.

    Not under Hydra's submitit launcher (SUBMITIT_EXECUTOR set): there the array enumerates the combinations of a
    sweep, not data-set shards; shard such jobs with explicit shard.index / shard.count if at all.
    """
    env = os.environ if env is None else env
    if "SLURM_ARRAY_TASK_ID" not in env or "SLURM_ARRAY_TASK_COUNT" not in env or "SUBMITIT_EXECUTOR" in env:
        return None
    task, count = int(env["SLURM_ARRAY_TASK_ID"]), int(env["SLURM_ARRAY_TASK_COUNT"])
    first = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
    step = int(env.get("SLURM_ARRAY_TASK_STEP", 1) or 1)
    return Shard((task - first) // step, count)


def this_shard(shard_cfg, env: dict[str, str] | None = None, overwrite: bool = False) -> Shard:
    """shard.index / shard.count as given; unset ones come from the SLURM array; else 0 of 1.

    `overwrite` is refused for one shard of an array: the other shards would still hold the old results.
    """
    slurm = from_slurm(env)
    index = shard_cfg.index if shard_cfg.index is not None else (slurm.index if slurm else 0)
    count = shard_cfg.count if shard_cfg.count is not None else (slurm.count if slurm else 1)
    if count < 1 or not 0 <= index < count:
        raise PipelineError(f"shard.index={index}, shard.count={count}: the index must be in 0..count-1 "
                            f"(shard {index} of {count} does not exist).")
    if count > 1 and overwrite:
        raise PipelineError("overwrite=true cannot be used by one shard of an array (the others would still hold "
                            "the old results): pass it to stage=submit, or redo the stage unsharded.")
    return Shard(index, count)


def refuse_other_settings(stage_root: Path, fingerprint: dict, records_name: str) -> None:
    """A shard may not start with settings other than those its sibling shards (finished or not) were started with:
    two generators writing into one run would make it meaningless, and the merge would only find out at the end."""
    for folder in shard_dirs(stage_root):
        started = folder / "stage.json"
        if not started.is_file():
            continue
        changes = diff_fingerprints(read_json(started).get("fingerprint", {}), fingerprint)
        if changes:
            raise PipelineError(
                f"{stage_root}/: shard {folder.name} was started with other settings ({'; '.join(changes)}). One run "
                "holds one set of settings: use another run_id for these (e.g. run_id=<name>-${generator.name} in a "
                "sweep), or redo the stage unsharded with overwrite=true."
            )


def shard_dirs(stage_root: Path) -> list[Path]:
    return sorted(p for p in (stage_root / "shards").glob("*-of-*") if p.is_dir())


def parse_name(name: str) -> Shard:
    index, _, count = name.partition("-of-")
    return Shard(int(index), int(count))


def merge_shards(stage_root: Path, records_name: str, expected_ids: list[str] | None) -> tuple[list[dict], dict]:
    """Every shard's records, checked: one shard count and one set of settings, no shard missing or unfinished,
    each shard holding exactly its ids, each expected id exactly once. Returns (records, what was merged)."""
    count, present = complete_shards(stage_root, records_name)
    manifests = {i: s.manifest() for i, s in present.items()}
    first = manifests[0].get("fingerprint", {})
    for i, m in manifests.items():
        changes = diff_fingerprints(first, m.get("fingerprint", {}))
        if changes:
            raise PipelineError(f"{stage_root}/: shard {Shard(i, count).name} was made with other settings than "
                                f"shard {Shard(0, count).name} ({'; '.join(changes)}); refusing to merge them.")
    records, problems = collect(present, manifests, count)
    seen = {r["id"] for r in records}
    total = manifests[0].get("expected_total")
    if expected_ids is None and total is not None and len(seen) != total:
        problems.append(f"the data set has {total} questions but the shards hold {len(seen)}")
    if expected_ids is not None:
        lost, extra = sorted(set(expected_ids) - seen), sorted(seen - set(expected_ids))
        problems += [f"{plural(len(lost), 'id')} in no shard: {preview(lost, 8)}"] if lost else []
        problems += [f"{plural(len(extra), 'id')} not in the data set: {preview(extra, 8)}"] if extra else []
    if problems:
        raise PipelineError(f"{stage_root}/ shards do not add up: {'; '.join(problems)}.")
    return records, {"shard_count": count, "shards": [Shard(i, count).name for i in range(count)],
                     "fingerprint": first, "manifests": manifests}


def complete_shards(stage_root: Path, records_name: str) -> tuple[int, dict[int, StageDir]]:
    """The shard count and every shard's folder by index; refused unless all shards of one count are finished."""
    dirs = shard_dirs(stage_root)
    if not dirs:
        raise PipelineError(f"{stage_root}/ has neither finished results nor shards; run the stage first.")
    counts = {parse_name(d.name).count for d in dirs}
    if len(counts) > 1:
        by_count = {c: [d.name for d in dirs if parse_name(d.name).count == c] for c in sorted(counts)}
        raise PipelineError(f"{stage_root}/shards/ mixes shard counts {sorted(counts)} ({by_count}); a merge needs "
                            "shards of one array. Move the stray shards aside, or redo the stage with one count.")
    count = counts.pop()
    present = {parse_name(d.name).index: StageDir(d, records_name) for d in dirs}
    missing = [Shard(i, count).name for i in range(count) if i not in present]
    unfinished = [Shard(i, count).name for i, s in sorted(present.items()) if not s.is_complete()]
    if missing or unfinished:
        parts = ([f"missing {plural(len(missing), 'shard')}: {preview(missing)}"] if missing else []) + \
                ([f"unfinished: {preview(unfinished)}"] if unfinished else [])
        raise PipelineError(f"{stage_root}/ cannot be merged: {'; '.join(parts)} (of {count}). Run those array "
                            "tasks again (they resume), e.g. with sbatch --array=<their indices>.")
    return count, present


def collect(present: dict[int, StageDir], manifests: dict[int, dict], count: int) -> tuple[list[dict], list[str]]:
    """The shards' records in shard order, and what is wrong: a shard without exactly its assigned ids, an id in
    two shards."""
    records, seen, problems = [], {}, []
    for i in range(count):
        shard_records = present[i].read_records()
        assigned = manifests[i].get("assigned_ids")
        got = [r["id"] for r in shard_records]
        if assigned is not None and sorted(got) != sorted(assigned):
            lost, extra = sorted(set(assigned) - set(got)), sorted(set(got) - set(assigned))
            problems.append(f"shard {Shard(i, count).name}: " + ", ".join(
                x for x in [f"missing ids {preview(lost, 5)}" if lost else "",
                            f"ids not assigned to it {preview(extra, 5)}" if extra else ""] if x))
        for r in shard_records:
            if r["id"] in seen:
                problems.append(f"id {r['id']!r} in shards {Shard(seen[r['id']], count).name} and "
                                f"{Shard(i, count).name}")
            seen[r["id"]] = i
            records.append(r)
    return records, problems


def stage_records(stage_root: Path, records_name: str, expected_ids: list[str] | None = None) -> list[dict]:
    """A stage's records: the finished (merged or unsharded) file, else its shards merged in memory."""
    stage = StageDir(stage_root, records_name)
    if stage.is_complete():
        return stage.read_records()
    return merge_shards(stage_root, records_name, expected_ids)[0]
