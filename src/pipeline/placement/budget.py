"""Placing the layers: device budgets, the library's placement, and accounting of weights plus reserves.

Each device gets a budget, and the library places the layers: transformers' `get_balanced_memory` (strategies
balanced / balanced_low_0) or `get_max_memory` (sequential), then `infer_auto_device_map`. This module writes no
placement algorithm of its own. What it adds is accounting (`account`): every device also carries the named
reserves of facts.py, the CUDA context (per GPU) and a margin (a fraction of the device kept free on top).

A device whose weights plus reserves exceed its capacity gets a smaller budget, and the library places the
layers again; budgets only shrink, so this ends. `placement.reserves=false` skips all of it and reproduces
transformers' own plan exactly (weights only, bitsandbytes' x0.9 included), for comparison. `verdict` says
whether the result fits and, if not, why.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass

from ..config import PlacementConfig, PrecisionName
from ..errors import PipelineError
from ..hardware import GiB, Hardware, parse_bytes
from ..models import Precision
from .configs import meta_model, quiet_library_logs
from .facts import ModelFacts, Workload
from .plan import RESERVES, DeviceRow, ModelIdentity, Plan, device_name, owner

STRATEGIES = ("balanced", "sequential", "balanced_low_0")
MAX_ROUNDS = 200  # budgets only shrink, so far fewer rounds end every plan; this only bounds a bug


def capacities(hardware: Hardware, placement: PlacementConfig, use_gpus: bool) -> dict[int | str, int]:
    """What each device may hold: explicit max_memory, else the hardware's memory (plus RAM with offload)."""
    if placement.max_memory:
        caps: dict[int | str, int] = {}
        for key, value in placement.max_memory.items():
            dev: int | str = int(key) if str(key).isdigit() else str(key)
            if dev not in ("cpu", "disk", "mps") and not isinstance(dev, int):
                raise PipelineError(f"judge.placement.max_memory: device {key!r} must be a GPU index (0, 1, ...) "
                                    "or 'cpu'.")
            if isinstance(dev, int) and dev >= len(hardware.gpus):
                raise PipelineError(f"judge.placement.max_memory names GPU {dev}, but {hardware.describe()}.")
            caps[dev] = parse_bytes(value, f"judge.placement.max_memory.{key}")
        return caps
    if not use_gpus:
        return {"cpu": hardware.cpu_bytes}
    key = (lambda g: "mps") if hardware.backend == "mps" else (lambda g: g.index)
    caps = {key(g): g.total_bytes for g in hardware.gpus}
    if placement.allow_offload:
        caps["cpu"] = hardware.cpu_bytes
    return caps


def uses_gpus(placement: PlacementConfig, hardware: Hardware) -> bool:
    """Whether the judge runs on GPUs: devices=gpu, or devices=auto on hardware that has some."""
    return placement.devices == "gpu" or (placement.devices == "auto" and bool(hardware.gpus))


def is_compute_device(dev: int | str, use_gpus: bool) -> bool:
    return not use_gpus if dev == "cpu" else dev != "disk"


def device_key(device: str) -> int | str:
    return int(device.split(":")[1]) if device.startswith("cuda:") else device


@dataclass(frozen=True)
class PlanningInputs:
    """What stays fixed while the budgets shrink: the meta model, its sizes and facts, the devices and settings."""

    model: object  # the meta-device skeleton
    quantizer: object | None
    facts: ModelFacts | None  # None: weights only (placement.reserves=false)
    sizes: dict  # module name -> bytes, as the library counts them
    tied: frozenset[str]  # parameter names that are tied copies, counted once
    caps: dict  # device -> capacity in bytes
    placement: PlacementConfig
    hardware: Hardware
    use_gpus: bool
    context: int  # CUDA context bytes per GPU


def device_reserves(inputs: PlanningInputs, device_map: dict, devices) -> dict[int | str, dict[str, int]]:
    """The named reserves of every device in a device map (all zero in weights-only mode)."""
    facts, use_gpus = inputs.facts, inputs.use_gpus
    reserves: dict[int | str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(RESERVES, 0))
    if facts is None:
        return reserves
    for layer in facts.decoder_layers:
        dev = owner(device_map, layer)
        if is_compute_device(dev, use_gpus):
            reserves[dev]["kv_cache"] += facts.kv_bytes[layer]
            reserves[dev]["activations"] = facts.activation_bytes
    head = owner(device_map, facts.lm_head)
    if is_compute_device(head, use_gpus):
        reserves[head]["logits"] = facts.logits_bytes
    for name, extra in facts.quantized.items():
        dev = owner(device_map, name)
        reserves[dev]["quant_state"] += extra
        if is_compute_device(dev, use_gpus):
            reserves[dev]["qmm_workspace"] = facts.qmm_workspace
    for dev in devices:
        if isinstance(dev, int):
            reserves[dev]["cuda_context"] = inputs.context
    return reserves


def account(inputs: PlanningInputs, device_map: dict, budgets: dict) -> list[DeviceRow]:
    """Weights and reserves on each device of a device map, under the budgets the library worked with."""
    by_device: dict[int | str, list[str]] = defaultdict(list)
    for module, dev in device_map.items():
        by_device[dev].append(module)
    reserves = device_reserves(inputs, device_map, by_device)
    params = module_param_counts(inputs.model, inputs.tied, device_map)
    gpus = {g.index: g for g in inputs.hardware.gpus}
    order = sorted(by_device, key=lambda d: (not isinstance(d, int), d if isinstance(d, int) else 0, str(d)))
    rows = []
    for dev in order:
        modules = by_device[dev]
        gpu = gpus.get(dev) if isinstance(dev, int) else None
        cap = inputs.caps.get(dev)
        rows.append(DeviceRow(
            device=device_name(dev),
            label=gpu.name if gpu else ("RAM" if dev == "cpu" else ""),
            modules=modules,
            params=sum(params[m] for m in modules),
            weight_bytes=sum(inputs.sizes[m] for m in modules),
            reserves={k: v for k, v in reserves[dev].items() if v} if inputs.facts is not None else {},
            margin_bytes=int(cap * inputs.placement.margin) if cap and inputs.facts is not None else 0,
            budget_bytes=int(budgets[dev]) if dev in budgets else None,
            capacity_bytes=cap,
        ))
    return rows


def library_budgets(inputs: PlanningInputs, budgets: dict, gpu0_floor: int) -> dict:
    """max_memory as transformers derives it for a strategy (balanced caps, bitsandbytes' x0.9 in stock mode)."""
    from transformers.integrations.accelerate import get_balanced_memory, get_max_memory

    strategy, model, quantizer = inputs.placement.strategy, inputs.model, inputs.quantizer
    if strategy == "sequential":
        mm = get_max_memory(dict(budgets))
    else:
        mm = get_balanced_memory(model, dict(budgets), no_split_module_classes=model._no_split_modules,
                                 hf_quantizer=quantizer, low_zero=strategy == "balanced_low_0")
        if 0 in mm and gpu0_floor:
            mm[0] = min(max(mm[0], gpu0_floor), budgets[0])
    if inputs.facts is None and quantizer is not None:
        mm = quantizer.adjust_max_memory(mm)
    return mm


def check_settings(placement: PlacementConfig, workload: Workload) -> None:
    if placement.strategy not in STRATEGIES:
        raise PipelineError(f"judge.placement.strategy={placement.strategy!r} is not one of {', '.join(STRATEGIES)}.")
    if placement.devices not in ("auto", "gpu", "cpu"):
        raise PipelineError(f"judge.placement.devices={placement.devices!r} is not one of auto, gpu, cpu.")
    if not 0.0 <= placement.margin < 1.0:
        raise PipelineError(f"judge.placement.margin={placement.margin}: must be a fraction in [0, 1).")
    if workload.batch_size < 1 or workload.seq_len < 1:
        raise PipelineError("judge.batch_size and judge.placement.max_seq_len must be at least 1.")


def starting_budgets(inputs: PlanningInputs) -> dict:
    """Capacity less the margin and the fixed costs of every device that will run layers; the rest is settled
    by placing."""
    facts = inputs.facts
    if facts is None:
        return dict(inputs.caps)
    budgets = {d: int(c * (1 - inputs.placement.margin)) for d, c in inputs.caps.items()}
    for d in budgets:
        if is_compute_device(d, inputs.use_gpus):
            budgets[d] -= facts.activation_bytes + facts.qmm_workspace + (inputs.context if isinstance(d, int) else 0)
    return {d: max(0, b) for d, b in budgets.items()}


def place(inputs: PlanningInputs, budgets: dict) -> tuple[dict, list[DeviceRow]]:
    """The library's device map under the budgets, shrinking the budget of any device it overfills."""
    from transformers.integrations.accelerate import infer_auto_device_map

    facts, model, caps = inputs.facts, inputs.model, inputs.caps
    gpu0_floor = 0
    step = max(inputs.sizes[name] for name in facts.decoder_layers) if facts else 0
    with quiet_library_logs():
        for _ in range(MAX_ROUNDS):
            mm = library_budgets(inputs, budgets, gpu0_floor)
            device_map = dict(infer_auto_device_map(model, max_memory=mm, no_split_module_classes=model._no_split_modules,
                                                    hf_quantizer=inputs.quantizer))
            rows = account(inputs, device_map, mm)
            if facts is None:
                break
            spilled = any(r.device in ("disk", "cpu") for r in rows) and inputs.use_gpus
            if inputs.placement.strategy == "balanced_low_0" and spilled and 0 in mm and mm[0] < budgets.get(0, 0):
                gpu0_floor = mm[0] + max(step, 1)  # balanced_low_0 must not spill where GPU 0 still has room
                continue
            over = {key: r.total_bytes - caps[key] for r, key in ((r, device_key(r.device)) for r in rows)
                    if key in caps and is_compute_device(key, inputs.use_gpus) and r.total_bytes > caps[key]}
            if not over:
                break
            for key, excess in over.items():
                budgets[key] = max(0, budgets[key] - excess)
    return device_map, rows


def plan_placement(model_config, model_label: str, precision: Precision, hardware: Hardware,
                   placement: PlacementConfig, workload: Workload, identity: ModelIdentity | None = None) -> Plan:
    """Where each module goes on `hardware`, and whether weights plus reserves fit every device.

    `identity` is the model the plan will load (what-if plans, never loaded, go without).
    """
    from transformers.integrations.accelerate import compute_module_sizes

    check_settings(placement, workload)
    hardware = hardware.first(placement.gpus)
    use_gpus = uses_gpus(placement, hardware)
    model, quantizer = meta_model(model_config, precision, identity.trust_remote_code if identity else None)
    sizes, _ = compute_module_sizes(model, quantizer)
    tied = frozenset(getattr(model, "all_tied_weights_keys", {}) or {})
    total_params = sum(p.numel() for n, p in model.named_parameters() if n not in tied)
    base = dict(model=model_label, precision=precision, strategy=placement.strategy, hardware=hardware.to_dict(),
                workload=asdict(workload), total_params=total_params, total_weight_bytes=sizes[""],
                reserves_counted=placement.reserves, identity=identity)
    if use_gpus and not hardware.gpus:
        return Plan(**base, device_map={}, rows=[], fits=False,
                    problems=[f"It needs GPUs (judge.placement.devices=gpu), and {hardware.describe()}."])
    if precision.quantized and not use_gpus and hardware.backend == "mps":
        raise PipelineError("bitsandbytes int8/nf4 need CUDA (or a CPU); on Apple MPS use bf16, fp16 or fp32.")

    facts = ModelFacts.of(model, model_config, precision, quantizer, workload) if placement.reserves else None
    inputs = PlanningInputs(model, quantizer, facts, sizes, tied, capacities(hardware, placement, use_gpus),
                            placement, hardware, use_gpus,
                            parse_bytes(placement.cuda_context, "judge.placement.cuda_context"))
    device_map, rows = place(inputs, starting_budgets(inputs))
    return Plan(**base, device_map=device_map, rows=rows, **verdict(inputs, rows, precision, model_label))


def verdict(inputs: PlanningInputs, rows: list[DeviceRow], precision: Precision, model_label: str) -> dict:
    """fits, problems and offloaded of a plan: what does not fit, or cannot be offloaded, and why."""
    caps, use_gpus, hardware = inputs.caps, inputs.use_gpus, inputs.hardware
    problems = []
    offloaded = [r for r in rows if r.device == "disk" or (use_gpus and r.device == "cpu")]
    if offloaded and not inputs.placement.allow_offload:
        where = " and ".join(f"{r.weight_bytes / GiB:.2f} GiB ({r.summary}) to {r.device}" for r in offloaded)
        problems.append(f"{model_label} in {precision.describe()} does not fit on {hardware.describe()}: the plan "
                        f"would put {where}.")
    elif offloaded and precision.quantized and (precision.name != PrecisionName.int8
                                                or any(r.device == "disk" for r in offloaded)):
        problems.append(f"bitsandbytes {precision.name} cannot offload to {'/'.join(r.device for r in offloaded)}: "
                        "choose a bf16 judge for offloading, or more GPU memory.")
    for r in rows:
        cap = caps.get(device_key(r.device))
        if cap and is_compute_device(device_key(r.device), use_gpus) and r.total_bytes > cap:
            problems.append(f"{r.device} needs {r.total_bytes / GiB:.2f} GiB (weights {r.weight_bytes / GiB:.2f} + "
                            f"reserves) but has {cap / GiB:.2f} GiB.")
    return {"fits": not problems, "problems": problems, "offloaded": bool(offloaded) and not problems}


def module_param_counts(model, tied: frozenset[str], device_map: dict) -> dict[str, int]:
    """Parameter count under each device-map entry (tied copies counted once)."""
    counts = dict.fromkeys(device_map, 0)
    prefixes = sorted(device_map, key=len, reverse=True)
    for name, p in model.named_parameters():
        if name in tied:
            continue
        for m in prefixes:
            if m == "" or name == m or name.startswith(m + "."):
                counts[m] += p.numel()
                break
    return counts
