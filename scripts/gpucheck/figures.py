"""The figures of a judge stage: per device, the plan's bytes against the memory the stage measured (its manifest)."""

from __future__ import annotations


def judge_figures(manifest: dict | None, plan: dict | None, plan_stage: dict | None) -> dict:
    """Per device: the plan's bytes (weights, each reserve, margin, total) against the stage's measured memory."""
    out: dict = {"devices": [], "load_s": None, "judge_s": None, "answers_per_s": None, "answers": None}
    if manifest:
        t = manifest.get("timings", {})
        out.update(load_s=t.get("load_s"), judge_s=t.get("judge_s"), answers_per_s=t.get("answers_per_s"),
                   total_s=t.get("total_s"), answers=manifest.get("records"),
                   precision_label=manifest.get("judge", {}).get("precision"))
    if plan:
        out["seq_len"] = plan.get("workload", {}).get("seq_len")
        out["batch_size"] = plan.get("workload", {}).get("batch_size")
        out["plan_total_bytes"] = sum(r.get("total_bytes", 0) for r in plan.get("rows", []))
    measured = {g["device"]: g for g in (manifest or {}).get("gpu_memory") or []}
    after = ((manifest or {}).get("placement") or {}).get("memory_after") or {}
    stage_rows = {r["device"]: r for r in (plan_stage or {}).get("rows", [])}
    for row in (plan or {}).get("rows", []):
        out["devices"].append(device_figures(row, stage_rows.get(row["device"]), after.get(row["device"]),
                                             measured.get(row["device"])))
    return out


def device_figures(row: dict, other: dict | None, after: dict | None, measured: dict | None) -> dict:
    """One device's row of the plan against stage=plan's row (`other`), the memory after loading and the peaks."""
    reserves = row.get("reserves", {})
    ctx = reserves.get("cuda_context", 0)
    counted = row["weight_bytes"] + sum(reserves.values())
    d = {"device": row["device"], "label": row.get("label"), "modules": row.get("summary"), "params": row.get("params"),
         "weight_bytes": row["weight_bytes"], "reserves": reserves, "margin_bytes": row.get("margin_bytes"),
         "total_bytes": row.get("total_bytes"), "capacity_bytes": row.get("capacity_bytes"),
         "planned_without_margin": counted, "planned_allocations": counted - ctx}
    if other is not None:  # the margin is a share of the capacity: on a CPU, of the RAM free at that moment
        d["plan_stage_total_bytes"] = other.get("total_bytes")
        d["plan_stage_matches"] = (other["weight_bytes"] + sum(other.get("reserves", {}).values()) == counted
                                   and other.get("modules") == row.get("modules"))
    if after is not None:
        d["allocated_after_load"] = after.get("allocated_bytes")
        d["reserved_after_load"] = after.get("reserved_bytes")
        d["weights_and_qstate_planned"] = row["weight_bytes"] + reserves.get("quant_state", 0)
    if measured is not None:
        d["max_memory_allocated"] = measured["max_memory_allocated"]
        d["max_memory_reserved"] = measured["max_memory_reserved"]
        d["allocator"] = measured.get("allocator")
        d["allocated_within_plan"] = measured["max_memory_allocated"] <= d["planned_allocations"]
        d["reserved_within_plan"] = measured["max_memory_reserved"] <= counted
        d["headroom_bytes"] = counted - measured["max_memory_reserved"]
    return d


def plan_held(judges: list[dict]) -> bool | None:
    """Whether every measured device stayed within its plan (None when nothing was measured: the CPU)."""
    checks = [d.get("reserved_within_plan") and d.get("allocated_within_plan")
              for j in judges for d in j.get("devices", []) if "max_memory_reserved" in d]
    return all(checks) if checks else None
