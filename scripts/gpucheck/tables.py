"""gpu-check.md: the results of gpu-check.json as Markdown, one section per kind of step."""

from __future__ import annotations

from .common import GiB, one_line

VERSIONS = ("python", "torch", "transformers", "bitsandbytes", "accelerate", "hydra-core", "omegaconf", "datasets",
            "tokenizers", "safetensors")


def gib(n) -> str:
    return "–" if n is None else f"{n / GiB:.2f}"


def num(x, fmt: str = ".1f") -> str:
    return "–" if x is None else format(x, fmt)


def markdown(r: dict) -> str:
    lines = summary(r) + step_table(r) + doctor_table(r) + model_table(r) + judge_table(r) + generate_table(r) \
        + failures(r)
    return "\n".join(lines) + "\n"


def summary(r: dict) -> list[str]:
    """The heading and the list under it: GPU, versions, the stored run, the steps, whether the plans held."""
    v = r.get("versions") or {}
    lines = [f"# GPU check ({r['mode']}), {r.get('started_iso', '')}", ""]
    gpus = r.get("gpu") or []
    gpu = ", ".join(f"{g['name']} ({g['total_bytes'] / GiB:.1f} GiB)" for g in gpus) or "none (CPU)"
    lines.append(f"- GPU: {gpu}; driver {r.get('driver') or '–'}; CUDA {v.get('cuda') or '–'}")
    lines.append("- versions: " + ", ".join(f"{n} {(v.get(n) or {}).get('version', '–')}"
                                            + (" (kit)" if (v.get(n) or {}).get("from_kit") else "")
                                            for n in VERSIONS if n in v))
    run = r.get("run") or {}
    if run:
        lengths = (f"; longest judge prompt {run['longest_prompt']} tokens, median {run.get('median_prompt')}"
                   if run.get("longest_prompt") else "")
        lines.append(f"- stored run: {run.get('answers')} answers ({run.get('source')}){lengths}")
    steps = r.get("steps", {})
    lines.append(f"- steps: {len(r.get('passed', []))} of {len(steps)} passed in {num(r.get('seconds'))} s"
                 + ("" if not r.get("failed") else f"; FAILED: {', '.join(r['failed'])}")
                 + ("" if not r.get("skipped") else f"; skipped (time): {', '.join(r['skipped'])}"))
    held = r.get("plan_held")
    lines.append("- plan held on every measured device: " + ("–" if held is None else "yes" if held else "**NO**"))
    return lines


def step_table(r: dict) -> list[str]:
    lines = ["", "| step | result | seconds |", "|---|---|---|"]
    for name, st in r.get("steps", {}).items():
        res = "ok" if st["ok"] else ("skipped" if st.get("skipped") else "FAILED: " + one_line(st.get("error")))
        lines.append(f"| {name} | {res} | {num(st.get('seconds'))} |")
    return lines


def doctor_table(r: dict) -> list[str]:
    doctor = r.get("doctor") or {}
    if not doctor.get("bitsandbytes"):
        return []
    lines = ["", "## stage=doctor: bitsandbytes", "", "| scheme | usable | detail |", "|---|---|---|"]
    for scheme, b in doctor["bitsandbytes"].items():
        lines.append(f"| {scheme} | {'yes' if b['usable'] else 'NO'} | {b['detail']} |")
    return lines


def model_table(r: dict) -> list[str]:
    models = r.get("models") or {}
    if not models:
        return []
    shapes = "tiny shapes: a dry check" if r["mode"] == "dry" else "real shapes"
    lines = ["", f"## Models (random weights, {shapes})", "",
             "| model | layers | hidden | vocab | parameters | safetensors GiB | built s |",
             "|---|---|---|---|---|---|---|"]
    for name, m in models.items():
        lines.append(f"| {name} | {m.get('layers')} | {m.get('hidden_size')} | {m.get('vocab_size')} | "
                     f"{m.get('params', 0) / 1e9:.3f} B | {gib(m.get('bytes'))} | {num(m.get('seconds'))} |")
    return lines


def judge_table(r: dict) -> list[str]:
    judges = r.get("judges") or []
    if not judges:
        return []
    lines = ["", "## stage=judge: planned vs measured memory per device (GiB), load time, throughput", "",
             "plan = weights + reserves + margin (plan.json); counted = weights + reserves; measured = the "
             "judge stage's own torch.cuda.max_memory_allocated / max_memory_reserved (its manifest); after "
             "load = allocated once loaded, against the planned weights + quantisation state.", "",
             "| judge | precision | mode | batch x seq | device | plan | counted | weights (+qstate) | after load "
             "| peak allocated | peak reserved | within plan | load s | answers/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for j in judges:
        for i, d in enumerate(j.get("devices") or [{}]):
            lines.append(judge_row(j, d, first=i == 0))
    return lines


def judge_row(j: dict, d: dict, first: bool) -> str:
    """One device of one judge; the judge's own columns on its first device only."""
    within = ("–" if "max_memory_reserved" not in d else
              "yes" if d.get("reserved_within_plan") and d.get("allocated_within_plan") else "**NO**")
    label = j["judge"] + (f" ({j.get('answers')} answers, {j['allocator']} allocator)" if j.get("allocator") else "")
    return (f"| {label if first else ''} | {j['precision'] if first else ''} | "
            f"{j['mode'] if first else ''} | "
            f"{(str(j.get('batch_size')) + ' x ' + str(j.get('seq_len'))) if first and j.get('seq_len') else ''} | "
            f"{d.get('device', '–')} | {gib(d.get('total_bytes'))} | {gib(d.get('planned_without_margin'))} | "
            f"{gib(d.get('weights_and_qstate_planned', d.get('weight_bytes')))} | "
            f"{gib(d.get('allocated_after_load'))} | {gib(d.get('max_memory_allocated'))} | "
            f"{gib(d.get('max_memory_reserved'))} | {within} | "
            f"{num(j.get('load_s')) if first else ''} | {num(j.get('answers_per_s')) if first else ''} |")


def generate_table(r: dict) -> list[str]:
    gen = r.get("generate") or {}
    if not gen.get("methods"):
        return []
    lines = ["", f"## Generate: {gen.get('model')}, {gen.get('precision')} on {gen.get('device')}, "
                 f"{gen.get('new_tokens')} new tokens per answer, batch {gen.get('batch_size')}", "",
             "| method | prompts | new tokens | seconds | tokens/s | vs one at a time |", "|---|---|---|---|---|---|"]
    for name, m in gen["methods"].items():
        lines.append(f"| {name} | {m.get('prompts')} | {m.get('tokens')} | {num(m.get('seconds'), '.2f')} | "
                     f"{num(m.get('tokens_per_s'))} | "
                     f"{'–' if m.get('vs_one_at_a_time') is None else format(m['vs_one_at_a_time'], '.1f') + 'x'} |")
    return lines


def failures(r: dict) -> list[str]:
    failed = [(n, st) for n, st in r.get("steps", {}).items() if not st["ok"]]
    if not failed:
        return []
    lines = ["", "## Failed or skipped steps"]
    for name, st in failed:
        lines += ["", f"### {name}", "", str(st.get("error"))]
        if st.get("stderr_tail"):
            lines += ["", "```", st["stderr_tail"], "```"]
    return lines
