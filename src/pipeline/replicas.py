"""Judge replicas: several copies of the judge in one stage=judge, each on its own group of GPUs.

When the judge fits on fewer GPUs than the node has, one device-mapped copy leaves most of them idle. With
judge.placement.replicas=auto (the default) or =N, the visible GPUs are split into groups that each hold one whole
plan, and one process per group judges a disjoint share of the answers:

    8 x H100, a 70B in bf16 (2 GPUs a copy)    4 replicas x 2 GPUs: [0,1] [2,3] [4,5] [6,7]
    the same judge in int8 (1 GPU a copy)      8 replicas x 1 GPU: [0] [1] [2] [3] [4] [5] [6] [7]
    on the CPU, judge.placement.replicas=2     2 replicas on the CPU, 4 threads each

This module is the decision: how many copies, on which GPUs (or with how many threads), writing which shards
(`decide`; `choose` also checks that their command line gives them this config). replica_runs.py runs them: it
starts one process per replica, waits for them all, and merges their shards.

Replicas run only where they cannot change what the stage means: in an unsharded stage=judge, or, with an explicit
count, inside shard i of n (an array task), where replica r writes the global shard i + r*n of n*N (round-robin
dealing gives it exactly its part of shard i), so the tasks' replicas together are one array that stage=report
merges. auto inside an array task is one copy, as without replicas: its tasks must agree on the count.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace

from .errors import PipelineError, plural
from .placement.copies import gpus_per_copy, usable_gpus  # noqa: F401 (also replicas.<name>)
from .shards import Shard, parse_name, shard_dirs

log = logging.getLogger(__name__)

AUTO = "auto"
ENV = "PIPELINE_REPLICA"  # set by the parent in each replica's environment: which replica, and its parent's config


# --------------------------------------------------------------------------------------------- how many, where

def parse_requested(value) -> int | str | None:
    """judge.placement.replicas as "auto" or a whole number >= 1 (also written as a string); None when neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 1 else None
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        if text.isdigit() and int(text) >= 1:
            return int(text)
    return None


def describe(groups: list[list[int]], threads: int | None = None, unused: list[int] | tuple = ()) -> str:
    """'4 replicas x 2 GPUs: [0,1] [2,3] [4,5] [6,7]', or '2 replicas on the CPU, 1 thread each'."""
    if not any(groups):
        each = f", {plural(threads, 'thread')} each" if threads else ""
        return f"{plural(len(groups), 'replica')} on the CPU{each}"
    text = f"{plural(len(groups), 'replica')} x {plural(len(groups[0]), 'GPU')}: " + \
        " ".join("[" + ",".join(str(g) for g in group) + "]" for group in groups)
    if unused:
        text += f"; {plural(len(unused), 'GPU')} unused ({','.join(str(g) for g in unused)})"
    return text


def groups(plan_gpus: int, visible: list[int], requested) -> list[list[int]]:
    """Disjoint consecutive groups of `plan_gpus` of the `visible` GPUs, one per replica.

    auto: as many as fit (at least 1); N: exactly N, refused when fewer fit. A plan on the CPU (plan_gpus 0) has no
    GPUs to split: auto is 1 copy, N is N processes (the groups are then empty).
    """
    wanted = parse_requested(requested)
    if wanted is None:
        raise PipelineError(f"judge.placement.replicas={requested!r} must be auto or a whole number at least 1.")
    if plan_gpus <= 0:
        return [[] for _ in range(1 if wanted == AUTO else wanted)]
    fit = len(visible) // plan_gpus
    if fit < 1:
        raise PipelineError(f"a copy of the judge needs {plural(plan_gpus, 'GPU')}, but {visible_text(visible)}.")
    if wanted != AUTO and wanted > fit:
        raise PipelineError(
            f"judge.placement.replicas={wanted}: each copy of the judge needs {plural(plan_gpus, 'GPU')} and "
            f"{visible_text(visible)}, so at most {plural(fit, 'replica')} fit{'s' if fit == 1 else ''}. Ask for at "
            f"most {fit}, or judge.placement.replicas=auto.")
    count = fit if wanted == AUTO else wanted
    out = [list(visible[i * plan_gpus:(i + 1) * plan_gpus]) for i in range(count)]
    unused = list(visible[count * plan_gpus:])
    if unused and count > 1:  # (one group: the stage runs one copy over every GPU, as without replicas)
        log.info("%s (%s of a copy, %d visible)", describe(out, unused=unused), plural(plan_gpus, "GPU"),
                 len(visible))
    return out


def visible_text(visible: list[int]) -> str:
    return f"{len(visible)} {'GPU is' if len(visible) == 1 else 'GPUs are'} visible"


def cpu_threads() -> int:
    """The CPUs this process may run on (SLURM's --cpus-per-task restricts them), else the machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_per_replica(threads: int | None, count: int) -> int:
    """The torch threads of each replica: threads (or every CPU) shared out evenly, at least 1."""
    return max(1, (threads or cpu_threads()) // max(1, count))


def replica_shards(shard: Shard, count: int) -> list[Shard]:
    """The shards the replicas of `shard` write: replica r of shard i of n is shard i + r*n of n*count, whose ids
    (sorted ids dealt round-robin) are exactly replica r's part of shard i."""
    return [Shard(shard.index + r * shard.count, shard.count * count) for r in range(count)]


def device_tokens(backend: str, n: int, env: dict | None = None) -> tuple[str, list[str]]:
    """The variable that selects GPUs for a child and the value naming each of this process's GPUs 0..n-1 in it:
    the entries of this process's own CUDA_VISIBLE_DEVICES (SLURM's allocation, UUIDs, MIG ids) when it has one."""
    env = os.environ if env is None else env
    var = "HIP_VISIBLE_DEVICES" if backend == "rocm" and "HIP_VISIBLE_DEVICES" in env else "CUDA_VISIBLE_DEVICES"
    given = [t.strip() for t in env.get(var, "").split(",") if t.strip()]
    return var, given[:n] if len(given) >= n else [str(i) for i in range(n)]


@dataclass
class Grouping:
    """The replicas a judge stage runs: their GPU groups, threads, and the plan of one copy."""

    groups: list[list[int]]  # this process's GPU indices per replica; all empty on the CPU
    threads: int
    plan: object  # the placement Plan of one copy (on the first group's GPUs)
    variable: str | None = None  # CUDA_VISIBLE_DEVICES (or HIP_VISIBLE_DEVICES); None on the CPU
    devices: list[str] = field(default_factory=list)  # its value for each replica
    unused: list[int] = field(default_factory=list)
    overrides: list[str] | None = None  # this process's command-line overrides, checked to give its config

    @property
    def count(self) -> int:
        return len(self.groups)

    @property
    def on_cpu(self) -> bool:
        return not any(self.groups)

    def describe(self) -> str:
        return describe(self.groups, self.threads, self.unused)

    def record(self) -> dict:
        """What the merged manifest (and plan.json) say of the replicas."""
        return {"count": self.count, "groups": [] if self.on_cpu else self.groups, "threads": self.threads,
                "gpus_per_replica": 0 if self.on_cpu else len(self.groups[0]),
                "cuda_visible_devices": None if self.on_cpu else self.devices, "unused_gpus": self.unused}


# --------------------------------------------------------------------------------------------- the decision

def group_plans_fit(judge_cfg, hardware, grouped: list[list[int]], source, seq_len) -> str | None:
    """None when every group holds a whole copy (checked for GPUs unlike the first group's); else why not."""
    from .hardware import Hardware
    from .placement import plan_for, with_values

    first = [(hardware.gpus[i].name, hardware.gpus[i].total_bytes) for i in grouped[0]]
    for group in grouped[1:]:
        if [(hardware.gpus[i].name, hardware.gpus[i].total_bytes) for i in group] == first:
            continue
        own = Hardware(hardware.name, [replace(hardware.gpus[i], index=j) for j, i in enumerate(group)],
                       hardware.cpu_bytes, hardware.source, hardware.backend, list(hardware.notes))
        p = plan_for(with_values(judge_cfg, placement={"gpus": None}), own, source, seq_len)
        if not p.fits or p.offloaded:
            return f"GPUs {group} ({own.describe()}) cannot hold a copy: {' '.join(p.problems) or 'it offloads'}"
    return None


def decide(cfg, job, hardware, plan, source: str | None = None, seq_len: int | None = None) -> Grouping | None:
    """The replicas this judge stage runs, or None: one copy in this process, exactly as without replicas (one
    resolved replica, a replica itself, auto inside a sharded run, or auto where the shards already there or a
    one-copy attempt to resume stand in the way: those are said in the log)."""
    wanted = parse_requested(cfg.judge.placement.replicas)
    if wanted is None:
        raise PipelineError(f"judge.placement.replicas={cfg.judge.placement.replicas!r} must be auto or a whole "
                            "number at least 1.")
    if wanted == 1 or os.environ.get(ENV) or (job.sharded and wanted == AUTO):
        return None

    def one_copy_or_refuse(why: str, fix: str) -> None:
        if wanted == AUTO:
            log.info("judge.placement.replicas=auto: one copy of the judge, because %s", why)
            return None
        raise PipelineError(f"judge.placement.replicas={wanted}: {why}. {fix}")

    on_gpus = [r for r in plan.rows if r.device.startswith("cuda:")]
    if any(r.device == "mps" for r in plan.rows):
        return one_copy_or_refuse("the judge runs on the one Apple MPS device", "Use judge.placement.replicas=1.")
    if not on_gpus:  # the CPU: N processes, each with its share of the threads
        if wanted == AUTO:
            return None
        grouped = groups(0, [], wanted)
        # weights and reserves once per copy; the margin is a share of the RAM, kept free once
        per_copy = sum(r.weight_bytes + sum(r.reserves.values()) for r in plan.rows if r.device == "cpu")
        usable = int(hardware.cpu_bytes * (1 - cfg.judge.placement.margin))
        if hardware.cpu_bytes and per_copy * wanted > usable:
            return one_copy_or_refuse(
                f"{wanted} copies of the judge on the CPU need {wanted * per_copy / 2**30:.1f} GiB of RAM and "
                f"{usable / 2**30:.1f} GiB are available (less the margin)",
                f"At most {max(1, usable // max(1, per_copy))} fit.")
        grouping = Grouping(grouped, threads_per_replica(cfg.threads, wanted), plan)
    else:
        if cfg.judge.placement.max_memory and wanted != AUTO:
            raise PipelineError(f"judge.placement.replicas={wanted}: judge.placement.max_memory places one copy by "
                                "hand over the GPUs it names; drop max_memory to split the GPUs into replicas, or "
                                "use judge.placement.replicas=1.")
        per, one = gpus_per_copy(cfg.judge, hardware, plan, source, seq_len)
        visible = usable_gpus(cfg.judge, hardware)
        grouped = groups(per, visible, wanted)
        if len(grouped) == 1:
            return None
        problem = group_plans_fit(cfg.judge, hardware, grouped, source, seq_len)
        if problem:
            return one_copy_or_refuse(problem, "Use fewer replicas, judge.placement.gpus, or replicas=1.")
        variable, tokens = device_tokens(hardware.backend, len(hardware.gpus))
        grouping = Grouping(grouped, threads_per_replica(cfg.threads, len(grouped)), one, variable,
                            [",".join(tokens[i] for i in g) for g in grouped], visible[len(grouped) * per:])
    return grouping if cfg.overwrite else check_leftovers(job, grouping, one_copy_or_refuse)


def check_leftovers(job, grouping: Grouping, one_copy_or_refuse) -> Grouping | None:
    """Refuse (or, for auto, fall back to one copy) where earlier work does not match these replicas: shards of
    another count, or an unfinished one-copy attempt in the stage folder itself (overwrite=true moves both aside)."""
    root = job.root
    target = job.shard.count * grouping.count
    counts = sorted({parse_name(d.name).count for d in shard_dirs(root.path)} - {target})
    if counts:
        return one_copy_or_refuse(
            f"{root.path}/shards/ already holds shards of {' and '.join(map(str, counts))} (from array tasks or "
            f"replicas of an earlier run), and these {grouping.count} replicas would write shards of {target}",
            f"Finish those with judge.placement.replicas={counts[0] // job.shard.count or 1} (or as array tasks, "
            "then stage=merge), or pass overwrite=true to start the stage again (the old outputs are moved aside).")
    if not job.sharded and (root.path / "stage.json").is_file() and not root.is_complete():
        return one_copy_or_refuse(
            f"{root.path}/ holds an unfinished attempt with one copy of the judge",
            "Resume it with judge.placement.replicas=1 (it keeps what it wrote), or pass overwrite=true.")
    return grouping
