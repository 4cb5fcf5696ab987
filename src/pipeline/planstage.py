"""stage=plan: the judge's placement plan on declared or detected hardware, with the replica grouping stage=judge
will use and, for judge.engine=vllm, vLLM's layout; saved under runs/plans/. The planning itself is placement/
(pure); this stage sits above it and replicas.py."""

from __future__ import annotations

import time
from pathlib import Path

from .errors import PipelineError
from .hardware import Hardware
from .placement import Plan, plan_for


def run(cfg) -> Plan:
    """stage=plan: print and save the judge's placement plan on a hardware profile; no weights are read."""
    from .files import write_json
    from .hardware import for_profile

    started = time.perf_counter()
    hardware = for_profile(cfg.hardware)
    for note in hardware.notes:
        print(f"hardware: {note}")
    j = cfg.judge
    if j.engine == "vllm":  # a precision vLLM cannot run: refused before planning
        from .engines.vllm import server_dtype

        server_dtype(str(j.precision), len(hardware.gpus), f"judge {j.name}")
    plan = plan_for(j, hardware, recommendations=True)
    print(plan.table())
    if j.engine == "vllm":
        return vllm_plan(cfg, hardware, plan, started)
    grouping = replica_grouping(j, hardware, plan) if plan.fits else None
    elapsed = time.perf_counter() - started
    out = Path(cfg.runs_dir) / "plans" / f"{j.name}--{cfg.hardware.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {**plan.to_dict(), "planning_seconds": round(elapsed, 3), "replicas": grouping})
    print(f"planned in {elapsed:.1f} s without reading any weight; saved {out}")
    if not plan.fits:
        raise PipelineError(f"{' '.join(plan.problems)} The table above lists what would fit.")
    return plan


def replica_grouping(j, hardware: Hardware, plan: Plan) -> dict | None:
    """The copies stage=judge runs on these GPUs (judge.placement.replicas: auto, or N, refused when N do not fit),
    printed with one copy's plan when there is more than one; None for one copy (the plan above)."""
    from .replicas import describe, gpus_per_copy, group_plans_fit, groups, parse_requested, usable_gpus

    if not any(r.device.startswith("cuda:") for r in plan.rows):
        return None
    if j.placement.max_memory:
        if parse_requested(j.placement.replicas) not in (1, "auto"):
            raise PipelineError(f"judge.placement.replicas={j.placement.replicas}: judge.placement.max_memory places "
                                "one copy by hand; drop max_memory to split the GPUs into replicas.")
        return None
    per, one = gpus_per_copy(j, hardware, plan, None, None)
    grouped = groups(per, usable_gpus(j, hardware), j.placement.replicas)
    if len(grouped) < 2:
        return None
    problem = group_plans_fit(j, hardware, grouped, None, None)
    if problem:
        raise PipelineError(f"judge.placement.replicas={j.placement.replicas}: {problem}.")
    unused = usable_gpus(j, hardware)[len(grouped) * per:]
    text = describe(grouped, unused=unused)
    print(f"\nreplicas: stage=judge runs {text}, each copy placed as follows:")
    print(one.table())
    return {"count": len(grouped), "gpus_per_copy": per, "groups": grouped, "unused": unused, "describe": text,
            "copy_plan": one.to_dict()}


def vllm_plan(cfg, hardware: Hardware, plan: Plan, started: float) -> Plan:
    """stage=plan judge.engine=vllm: the hf plan above counts what one copy needs; vLLM spreads it over the GPUs
    its layout says (placement/vllm.py), and this says how, with the same verdict."""
    from .placement.vllm import layout, layout_text
    from .files import write_json

    j = cfg.judge
    lay = layout(j, hardware, plan)
    print(layout_text(lay))
    out = Path(cfg.runs_dir) / "plans" / f"{j.name}--{cfg.hardware.name}--vllm.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {**plan.to_dict(), "vllm": lay, "planning_seconds": round(time.perf_counter() - started, 3)})
    print(f"saved {out}")
    if not plan.fits or not lay.get("fits", True):
        raise PipelineError(f"judge {j.name} does not fit on {hardware.describe()} for vLLM: "
                            f"{' '.join(plan.problems) or layout_text(lay)}")
    return plan
