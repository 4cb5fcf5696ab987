"""Placement plans: where every module of a model goes, computed before any weight is read.

Planning is pure: the model is built on the meta device from its config, quantised (bitsandbytes replaces the
Linear layers, still on meta), and handed with a per-device `max_memory` budget to the same functions
`from_pretrained(device_map=...)` uses in transformers (`get_balanced_memory`, the quantiser's
`adjust_max_memory`, `infer_auto_device_map`). The result is a `Plan`: a value that prints as a table, saves as
plan.json, and is passed as the explicit `device_map` when the model is loaded. `check_loaded` then compares
where every parameter really landed with the plan.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import torch

from .config import ModelConfig, PlacementConfig
from .errors import PipelineError, preview
from .hardware import GiB, Hardware, parse_bytes
from .models import Precision

log = logging.getLogger(__name__)

STRATEGIES = ("balanced", "sequential", "balanced_low_0")


# ------------------------------------------------------------------------------------------- model configs

def shipped_config_file(model_id: str) -> Path | None:
    """Configs of the preset models ship with the package, so planning works without the Hub."""
    name = model_id.replace("/", "--") + ".json"
    file = Path(str(resources.files("pipeline") / "model_configs" / name))
    return file if file.is_file() else None


def load_model_config(source: str, cfg: ModelConfig):
    """The transformers config of `source` (a folder, or a Hub id: shipped copy, then Hub or local cache)."""
    from transformers import AutoConfig

    if Path(source).is_dir():
        return AutoConfig.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    shipped = shipped_config_file(source)
    if shipped is not None and cfg.revision is None:
        values = json.loads(shipped.read_text())
        return AutoConfig.for_model(values.pop("model_type"), **values)
    try:
        return AutoConfig.from_pretrained(source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise PipelineError(
            f"{cfg.name}: cannot find the config of {source!r} ({e}). Planning needs only its config.json: "
            "download that file where the Hub is reachable, put it in a folder and pass the folder as the model "
            "(or the whole model folder), or run where the Hugging Face cache already holds it."
        ) from None


def meta_model(model_config, precision: Precision):
    """The model skeleton on the meta device, quantised as `from_pretrained` would (no weights, no memory)."""
    from transformers import AutoModelForCausalLM
    from transformers.quantizers import AutoHfQuantizer

    with torch.device("meta"):  # keeps tied weights tied, unlike init_empty_weights
        model = AutoModelForCausalLM.from_config(model_config, dtype=precision.dtype)
    quantizer = None
    if precision.quantized:
        quantizer = AutoHfQuantizer.from_config(precision.quantization_config(), pre_quantized=False)
        quantizer.preprocess_model(model=model, dtype=precision.dtype, device_map="auto", checkpoint_files=None,
                                   use_kernels=False)
    return model, quantizer


# ------------------------------------------------------------------------------------------------ the plan

@dataclass
class DeviceRow:
    device: str  # "cuda:0", "cpu", "disk"
    label: str  # GPU name, "RAM", ...
    modules: list[str]
    params: int
    weight_bytes: int
    budget_bytes: int | None  # the max_memory entry infer_auto_device_map worked with
    capacity_bytes: int | None

    @property
    def summary(self) -> str:
        return summarize_modules(self.modules)


@dataclass
class Plan:
    model: str
    precision: str
    strategy: str
    hardware: dict
    device_map: dict[str, int | str]
    rows: list[DeviceRow]
    total_params: int
    total_weight_bytes: int
    fits: bool
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        for row, src in zip(d["rows"], self.rows):
            row["summary"] = src.summary
        return d

    def table(self) -> str:
        head = ("device", "modules", "params", "weights", "budget", "capacity")
        lines = [head]
        for r in self.rows:
            lines.append((f"{r.device} {r.label}".strip(), r.summary, f"{r.params / 1e9:.3f} B", gib(r.weight_bytes),
                          gib(r.budget_bytes), gib(r.capacity_bytes)))
        lines.append(("total", "", f"{self.total_params / 1e9:.3f} B", gib(self.total_weight_bytes), "", ""))
        widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
        out = [f"placement plan: {self.model}, {self.precision}, strategy {self.strategy}"]
        for n, line in enumerate(lines):
            out.append("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
            if n == 0 or n == len(lines) - 2:
                out.append("  ".join("-" * w for w in widths))
        out.append("verdict: " + ("fits" if self.fits else "DOES NOT FIT: " + " ".join(self.problems)))
        return "\n".join(out)


def gib(n: int | None) -> str:
    return "" if n is None else f"{n / GiB:.2f} GiB"


def summarize_modules(names: list[str]) -> str:
    """'model.embed_tokens, model.layers.0-39' from a list of module names."""
    if names == [""]:
        return "whole model"
    layers: dict[str, list[int]] = defaultdict(list)
    others = []
    for name in names:
        m = re.fullmatch(r"(.*\.)?(layers|h|blocks|layer)\.(\d+)", name)
        if m:
            layers[(m.group(1) or "") + m.group(2)].append(int(m.group(3)))
        else:
            others.append(name)
    parts = list(others)
    for prefix, idx in layers.items():
        idx.sort()
        ranges, start = [], idx[0]
        for a, b in zip(idx, idx[1:] + [None]):
            if b != a + 1:
                ranges.append(f"{start}" if start == a else f"{start}-{a}")
                start = b
        parts.append(f"{prefix}.{','.join(ranges)}")
    return ", ".join(parts)


def device_name(value: int | str) -> str:
    return f"cuda:{value}" if isinstance(value, int) else str(value)


# -------------------------------------------------------------------------------------------- the planning

def initial_budgets(hardware: Hardware, placement: PlacementConfig, use_gpus: bool) -> dict[int | str, int]:
    """max_memory before balancing: explicit values, else each device's memory less the headroom."""
    keep = 1.0 - placement.headroom
    if not 0.0 <= placement.headroom < 1.0:
        raise PipelineError(f"judge.placement.headroom={placement.headroom}: must be in [0, 1).")
    if placement.max_memory:
        budgets: dict[int | str, int] = {}
        for key, value in placement.max_memory.items():
            dev: int | str = int(key) if str(key).isdigit() else str(key)
            if dev not in ("cpu", "disk") and not isinstance(dev, int):
                raise PipelineError(f"judge.placement.max_memory: device {key!r} must be a GPU index (0, 1, ...) "
                                    "or 'cpu'.")
            if isinstance(dev, int) and dev >= len(hardware.gpus):
                raise PipelineError(f"judge.placement.max_memory names GPU {dev}, but {hardware.describe()}.")
            budgets[dev] = parse_bytes(value, f"judge.placement.max_memory.{key}")
        return budgets
    if use_gpus:
        return {g.index: int(g.total_bytes * keep) for g in hardware.gpus}
    return {"cpu": int(hardware.cpu_bytes * keep)}


def plan_placement(model_config, model_label: str, precision: Precision, hardware: Hardware,
                   placement: PlacementConfig) -> Plan:
    """Where each module goes on `hardware`, as transformers would place it with these budgets."""
    from transformers.integrations.accelerate import (
        compute_module_sizes, get_balanced_memory, get_max_memory, infer_auto_device_map)

    if placement.strategy not in STRATEGIES:
        raise PipelineError(f"judge.placement.strategy={placement.strategy!r} is not one of {', '.join(STRATEGIES)}.")
    if placement.devices not in ("auto", "gpu", "cpu"):
        raise PipelineError(f"judge.placement.devices={placement.devices!r} is not one of auto, gpu, cpu.")
    use_gpus = placement.devices == "gpu" or (placement.devices == "auto" and bool(hardware.gpus))

    model, quantizer = meta_model(model_config, precision)
    sizes, _ = compute_module_sizes(model, quantizer)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    total_params = sum(p.numel() for n, p in model.named_parameters() if n not in tied)
    hw = hardware.to_dict()

    if use_gpus and not hardware.gpus:
        return Plan(model_label, precision.describe(), placement.strategy, hw, {}, [], total_params, sizes[""],
                    fits=False, problems=[f"It needs GPUs (judge.placement.devices=gpu), and {hardware.describe()}."])

    budgets = initial_budgets(hardware, placement, use_gpus)
    no_split = model._no_split_modules
    if placement.strategy == "sequential":
        max_memory = get_max_memory(dict(budgets))
    else:
        max_memory = get_balanced_memory(model, dict(budgets), no_split_module_classes=no_split,
                                         hf_quantizer=quantizer, low_zero=placement.strategy == "balanced_low_0")
    if quantizer is not None:
        max_memory = quantizer.adjust_max_memory(max_memory)
    device_map = dict(infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split,
                                            hf_quantizer=quantizer))

    params_by_module = module_param_counts(model, tied, device_map)
    by_device: dict[int | str, list[str]] = defaultdict(list)
    for module, dev in device_map.items():
        by_device[dev].append(module)
    gpus = {g.index: g for g in hardware.gpus}
    order = sorted(by_device, key=lambda d: (not isinstance(d, int), d if isinstance(d, int) else 0, str(d)))
    rows = []
    for dev in order:
        modules = by_device[dev]
        gpu = gpus.get(dev) if isinstance(dev, int) else None
        rows.append(DeviceRow(
            device=device_name(dev),
            label=gpu.name if gpu else ("RAM" if dev == "cpu" else ""),
            modules=modules,
            params=sum(params_by_module[m] for m in modules),
            weight_bytes=sum(sizes[m] for m in modules),
            budget_bytes=int(max_memory[dev]) if dev in max_memory else None,
            capacity_bytes=gpu.total_bytes if gpu else (hardware.cpu_bytes if dev == "cpu" else None),
        ))

    problems = []
    spilled = [r for r in rows if r.device == "disk" or (use_gpus and r.device == "cpu")]
    if spilled:
        where = " and ".join(f"{r.weight_bytes / GiB:.2f} GiB ({r.summary}) to {r.device}" for r in spilled)
        room = sum(b for d, b in max_memory.items() if d not in ("cpu", "disk"))
        target = "GPU" if use_gpus else "CPU"
        problems.append(
            f"{model_label} in {precision.describe()} needs {sizes[''] / GiB:.2f} GiB of weights, but the "
            f"{target} budget is {(room if use_gpus else max_memory.get('cpu', 0)) / GiB:.2f} GiB "
            f"({hardware.describe()}); the plan would put {where}."
        )
    return Plan(model_label, precision.describe(), placement.strategy, hw,
                {k: v for k, v in device_map.items()}, rows, total_params, sizes[""], not problems, problems)


def module_param_counts(model, tied: set[str], device_map: dict) -> dict[str, int]:
    """Parameter count under each device-map entry (tied copies counted once)."""
    counts = {m: 0 for m in device_map}
    prefixes = sorted(device_map, key=len, reverse=True)
    for name, p in model.named_parameters():
        if name in tied:
            continue
        for m in prefixes:
            if m == "" or name == m or name.startswith(m + "."):
                counts[m] += p.numel()
                break
    return counts


# ------------------------------------------------------------------------------------------ after loading

def planned_device(device_map: dict[str, int | str], param_name: str) -> str:
    best = None
    for module in device_map:
        if module == "" or param_name == module or param_name.startswith(module + "."):
            if best is None or len(module) > len(best):
                best = module
    if best is None:
        raise KeyError(param_name)
    return device_name(device_map[best])


def check_loaded(model, plan: Plan) -> dict[str, int]:
    """Fail loudly if any parameter of the loaded model is not where the plan put it; params per device."""
    wrong, counts = [], defaultdict(int)
    for name, p in model.named_parameters():
        actual = "cpu" if p.device.type == "cpu" else str(p.device)
        if p.device.type == "cuda" and p.device.index is None:
            actual = "cuda:0"
        try:
            expected = planned_device(plan.device_map, name)
        except KeyError:
            wrong.append(f"{name} on {actual}, not in the plan")
            continue
        if expected != actual:
            wrong.append(f"{name} on {actual}, planned {expected}")
        counts[actual] += p.numel()
    if wrong:
        raise PipelineError(f"the loaded model does not match its placement plan: {preview(wrong, 5)}. "
                            "Nothing was judged; this is a bug in the plan or the loader, please report it.")
    return dict(counts)
