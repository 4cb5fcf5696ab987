"""stage=merge: publish the merged results of a run's sharded stages (SLURM array tasks).

    python -m pipeline stage=merge run_id=<id>

For the generate stage and every judge, when the stage is not finished as a whole but has shards, the shards are
checked (one shard count, one set of settings, none missing or unfinished, every id exactly once; see
shards.merge_shards) and written as the stage's records file and manifest.json. stage=report does this first,
so a chained report job needs no separate merge. Only ever run by one process per run.
"""

from __future__ import annotations

import logging
from pathlib import Path

from . import shards
from .errors import PipelineError
from .runs import StageDir, find_run

log = logging.getLogger(__name__)

CARRIED = ("stage", "run_id", "schema", "dataset", "generator", "judge", "prompt", "expected_total")


def merge_stage(stage_root: Path, records_name: str, expected_ids: list[str] | None = None) -> bool:
    """Write the merged records and manifest of a sharded stage; False when it is already finished as a whole."""
    stage = StageDir(stage_root, records_name)
    with stage.lock():  # one merge at a time, and never while an unsharded run of the stage is writing
        return merge_locked(stage, stage_root, records_name, expected_ids)


def merge_locked(stage: StageDir, stage_root: Path, records_name: str, expected_ids: list[str] | None) -> bool:
    if stage.is_complete():
        return False
    records, info = shards.merge_shards(stage_root, records_name, expected_ids)
    if records and "index" in records[0]:
        records.sort(key=lambda r: r["index"])
    first = info["manifests"][0]
    manifest = {k: first[k] for k in CARRIED if k in first}
    manifest.update({
        "records": len(records),
        "fingerprint": info["fingerprint"],
        "merged_from": {"shard_count": info["shard_count"], "shards": info["shards"]},
        "shard_timings": {name: m.get("timings") for name, m in zip(info["shards"], info["manifests"].values())},
        "shard_hosts": {name: m.get("hardware", {}).get("hostname") for name, m in
                        zip(info["shards"], info["manifests"].values())},
    })
    engines = [m["engine"] for m in info["manifests"].values() if m.get("engine")]
    if engines:  # a served engine's shards: what they cost together
        manifest["engine"] = {**engines[0], "usage": summed_usage([e.get("usage") or {} for e in engines]),
                              "shards": len(engines)}
    stage.publish(records, manifest)
    log.info("merged %d shards of %s into %s (%d records)", info["shard_count"], stage_root, stage.records_path,
             len(records))
    return True


def summed_usage(usages: list[dict]) -> dict:
    """Tokens, requests and retries of several shards of a served engine, added up."""
    total = {k: sum(int(u.get(k) or 0) for u in usages) for k in ("prompt_tokens", "completion_tokens", "requests",
                                                                    "retries")}
    kinds: dict[str, int] = {}
    for u in usages:
        for kind, n in (u.get("retried_failures") or {}).items():
            kinds[kind] = kinds.get(kind, 0) + int(n)
    return {**total, "retried_failures": kinds}


def merge_run(run_dir: Path) -> list[str]:
    """Merge every sharded stage of a run that can be merged; the stages merged now."""
    merged = []
    gen_root = run_dir / "generate"
    if merge_stage(gen_root, "generations.jsonl"):
        merged.append("generate")
    if not StageDir(gen_root, "generations.jsonl").is_complete():
        raise PipelineError(f"run {run_dir.name}: the generate stage is not finished; nothing to merge.")
    gen_ids = [r["id"] for r in StageDir(gen_root, "generations.jsonl").read_records()]
    for judge_dir in sorted(p for p in (run_dir / "judge").glob("*") if p.is_dir()):
        if shards.shard_dirs(judge_dir) and merge_stage(judge_dir, "verdicts.jsonl", gen_ids):
            merged.append(f"judge/{judge_dir.name}")
    return merged


def run(cfg) -> list[str]:
    run_dir = find_run(Path(cfg.runs_dir), cfg.run_id)
    merged = merge_run(run_dir)
    print(f"run {run_dir.name}: merged {', '.join(merged)}" if merged else
          f"run {run_dir.name}: nothing to merge (every stage is finished as a whole)")
    return merged
