"""How many GPUs one whole copy of a judge needs on a machine: the fewest of its usable GPUs that hold the plan
without offloading (for replicas.py's grouping and placement/vllm.py's tensor-parallel layout)."""

from __future__ import annotations

import math

from .configs import with_values
from .stage import plan_for


def usable_gpus(judge_cfg, hardware) -> list[int]:
    """The GPUs the judge may use: the first judge.placement.gpus of them, else all."""
    return list(range(judge_cfg.placement.gpus or len(hardware.gpus)))


def gpus_per_copy(judge_cfg, hardware, plan, source: str | None, seq_len: int | None):
    """(GPUs of one whole copy, its plan): the fewest of the usable GPUs (the first ones) that hold the judge
    without offloading. A plan that offloads, or one placed by hand (max_memory), keeps them all (one copy)."""
    usable = len(usable_gpus(judge_cfg, hardware))
    if judge_cfg.placement.max_memory or plan.offloaded:
        return usable, plan
    largest = max(g.total_bytes for g in hardware.gpus)
    for n in range(max(1, math.ceil(plan.total_weight_bytes / largest)), usable):
        candidate = plan_for(with_values(judge_cfg, placement={"gpus": n}), hardware, source, seq_len)
        if candidate.fits and not candidate.offloaded:
            return n, candidate.with_source(source) if source else candidate
    return usable, plan
