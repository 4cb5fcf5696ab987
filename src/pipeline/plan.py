"""Placement plans: where every module of a model goes and why it will not run out of memory, before any weight
is read.

The model is built on the meta device from its config and quantised there as `from_pretrained` would
(bitsandbytes swaps the Linear layers, still without memory). Each device gets a budget, and the library places
the layers: transformers' `get_balanced_memory` (strategies balanced / balanced_low_0) or `get_max_memory`
(sequential), then `infer_auto_device_map`. This module writes no placement algorithm of its own.

What it adds is accounting. The stock plan counts weights only. Here every device also carries named reserves:

    quant state   NF4/FP4 block constants (double quantisation: 1/64 + 4/16384 bytes per weight), int8 row scales
    KV cache      keys and values of the layers on that device, for batch_size x max_seq_len tokens
                  (sliding-window layers hold at most their window)
    activations   estimated peak of one decoder layer's forward pass over a batch: 4 hidden-size copies, the MLP's
                  gate/up/product (3 x intermediate size) and the q/k/v projections
    logits        the last position's logits over the vocabulary, in the model dtype, in float32 and after
                  log-softmax (on the device holding lm_head)
    qmm workspace NF4: the largest layer's weight de-quantised for a matmul; int8: int8 inputs and int32 outputs
    CUDA context  the CUDA context, cuBLAS workspaces and the allocator's slack (per GPU)
    margin        a fraction of the device kept free on top of all the above

A device whose weights plus reserves exceed its capacity gets a smaller budget, and the library places the
layers again; budgets only shrink, so this ends. `placement.reserves=false` skips all of it and reproduces
transformers' own plan exactly (weights only, bitsandbytes' x0.9 included), for comparison.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import torch

from .config import ModelConfig, PlacementConfig
from .errors import PipelineError, preview
from .hardware import GiB, Gpu, Hardware, parse_bytes
from .models import Precision

log = logging.getLogger(__name__)

STRATEGIES = ("balanced", "sequential", "balanced_low_0")
PRECISION_LADDER = ("bf16", "int8", "nf4")  # from most to least faithful
RESERVES = ("quant_state", "kv_cache", "activations", "logits", "qmm_workspace", "cuda_context")
RESERVE_LABELS = {"quant_state": "qstate", "kv_cache": "KV", "activations": "act", "logits": "logits",
                  "qmm_workspace": "qmm", "cuda_context": "ctx"}
# GPU kinds recommendations are counted in when the hardware has no GPU to take the kind from.
REFERENCE_KINDS = (("80 GiB (A100/H100 80GB)", 80 * GiB), ("48 GiB (A6000)", 48 * GiB),
                   ("40 GiB (A100 40GB)", 40 * GiB), ("24 GiB (RTX 3090/4090)", 24 * GiB))
MAX_GPUS_CONSIDERED = 16


# ------------------------------------------------------------------------------------------- model configs

def shipped_config_file(model_id: str | None) -> Path | None:
    """Configs of the preset models ship with the package, so planning works without the Hub."""
    if not model_id:
        return None
    file = Path(str(resources.files("pipeline") / "model_configs" / (model_id.replace("/", "--") + ".json")))
    return file if file.is_file() else None


def config_from_file(file: Path):
    from transformers import AutoConfig

    values = json.loads(file.read_text())
    return AutoConfig.for_model(values.pop("model_type"), **values)


def load_model_config(source: str, cfg: ModelConfig):
    """The transformers config of a model: its folder, the copy shipped for its Hub id, or the Hub / HF cache."""
    from transformers import AutoConfig

    if Path(source).is_dir():
        from .models import model_config

        return model_config(source, cfg)
    for model_id in (source, getattr(cfg, "hub_id", None)):
        shipped = shipped_config_file(model_id)
        if shipped is not None and cfg.revision is None:
            return config_from_file(shipped)
    if source.startswith("gguf:"):
        raise PipelineError(f"{cfg.name}: planning {source!r} needs its config: convert it first (run any stage with "
                            "this model), or set hub_id to the Hub id it is a copy of.")
    try:
        return AutoConfig.from_pretrained(source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise PipelineError(
            f"{cfg.name}: cannot find the config of {source!r} ({e}). Planning needs only its config.json: "
            "download that file where the Hub is reachable, put it in a folder and pass the folder as the model "
            "(or the whole model folder), or run where the Hugging Face cache already holds it."
        ) from None


@contextmanager
def quiet_library_logs():
    """The library warns 'Device N is not available' for every declared GPU absent from this host: expected."""
    loggers = [logging.getLogger(n) for n in ("accelerate", "accelerate.utils.modeling", "transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


_META_CACHE: dict = {}


def meta_model(model_config, precision: Precision):
    """The model skeleton on the meta device, quantised as `from_pretrained` would (no weights, no memory).

    Skeletons are cached by (config, precision): recommendations plan the same model many times.
    """
    from transformers import AutoModelForCausalLM
    from transformers.quantizers import AutoHfQuantizer

    key = (model_config.to_json_string(use_diff=False), precision)
    if key not in _META_CACHE:
        with torch.device("meta"):  # keeps tied weights tied, unlike init_empty_weights
            model = AutoModelForCausalLM.from_config(model_config, dtype=precision.dtype)
        quantizer = None
        if precision.quantized:
            quantizer = AutoHfQuantizer.from_config(precision.quantization_config(), pre_quantized=False)
            quantizer.preprocess_model(model=model, dtype=precision.dtype, device_map="auto", checkpoint_files=None,
                                       use_kernels=False)
        if len(_META_CACHE) >= 8:
            _META_CACHE.pop(next(iter(_META_CACHE)))
        _META_CACHE[key] = (model, quantizer)
    return _META_CACHE[key]


def with_values(node, **values):
    """A copy of a config node (Hydra DictConfig or dataclass) with some values changed."""
    from dataclasses import is_dataclass, replace

    from omegaconf import OmegaConf

    if OmegaConf.is_config(node):
        return OmegaConf.merge(node, values)
    if is_dataclass(node):
        return replace(node, **values)
    raise TypeError(type(node))


# ------------------------------------------------------------------------------------- what the model needs

@dataclass(frozen=True)
class Workload:
    """What one forward pass of the judge holds: `batch_size` rows of up to `seq_len` tokens."""

    batch_size: int
    seq_len: int


def module_name(model, module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


def decoder_layer_names(model) -> list[str]:
    """Names of the text decoder's layers (the ones with a KV cache), e.g. 'model.layers.0'."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is not None and hasattr(decoder, "layers"):
        base = module_name(model, decoder)
        return [f"{base}.layers.{i}" if base else f"layers.{i}" for i in range(len(decoder.layers))]
    classes = set(model._no_split_modules or ())
    return [n for n, m in model.named_modules() if type(m).__name__ in classes and "vision" not in n]


@dataclass
class ModelFacts:
    """Sizes the reserves are computed from, derived once from the meta model and its config."""

    decoder_layers: list[str]
    kv_bytes: dict[str, int]  # per decoder layer
    activation_bytes: int  # per device that runs decoder layers
    logits_bytes: int
    lm_head: str
    quantized: dict[str, int]  # param name -> quant-state bytes
    qmm_workspace: int

    @classmethod
    def of(cls, model, model_config, precision: Precision, quantizer, work: Workload) -> "ModelFacts":
        text = model_config.get_text_config()
        hidden, inter = text.hidden_size, text.intermediate_size
        heads = text.num_attention_heads
        kv_heads = getattr(text, "num_key_value_heads", None) or heads
        head_dim = getattr(text, "head_dim", None) or hidden // heads
        width = torch.tensor([], dtype=precision.dtype).element_size()
        layers = decoder_layer_names(model)
        types = getattr(text, "layer_types", None) or ["full_attention"] * len(layers)
        window = getattr(text, "sliding_window", None)
        kv = {}
        for name, kind in zip(layers, types):
            tokens = min(work.seq_len, window) if kind == "sliding_attention" and window else work.seq_len
            kv[name] = 2 * work.batch_size * tokens * kv_heads * head_dim * width
        tokens = work.batch_size * work.seq_len
        activations = tokens * (4 * hidden + 3 * inter + (heads + 2 * kv_heads) * head_dim) * width
        vocab = model.get_output_embeddings().weight.shape[0]
        logits = work.batch_size * vocab * (width + 4 + 4)

        quantized: dict[str, int] = {}
        largest_in = largest_out = largest = 0
        if quantizer is not None:
            for name, p in model.named_parameters():
                if not quantizer.param_needs_quantization(model, name):
                    continue
                numel = p.numel()
                if precision.name == "int8":
                    out_features = p.shape[0]
                    quantized[name] = 4 * out_features  # float32 scale per output row
                    largest_out = max(largest_out, out_features)
                    largest_in = max(largest_in, numel // out_features)
                elif precision.double_quant:  # 8-bit absmax per 64 weights, float32 per 256 absmax blocks
                    quantized[name] = math.ceil(numel / 64) + 4 * math.ceil(numel / (64 * 256))
                else:  # float32 absmax per 64 weights
                    quantized[name] = 4 * math.ceil(numel / 64)
                largest = max(largest, numel)
        if precision.name == "int8":
            workspace = tokens * (largest_in + 4 * largest_out)
        else:
            workspace = largest * width
        lm_head = module_name(model, model.get_output_embeddings())
        return cls(layers, kv, activations, logits, lm_head, quantized, workspace)


# ------------------------------------------------------------------------------------------------ the plan

@dataclass
class DeviceRow:
    device: str  # "cuda:0", "cpu", "disk", "mps"
    label: str  # GPU name, "RAM", ...
    modules: list[str]
    params: int
    weight_bytes: int
    reserves: dict[str, int]
    margin_bytes: int
    budget_bytes: int | None  # the max_memory entry infer_auto_device_map worked with
    capacity_bytes: int | None

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + sum(self.reserves.values()) + self.margin_bytes

    @property
    def summary(self) -> str:
        return summarize_modules(self.modules)


@dataclass
class Plan:
    model: str
    precision: str
    strategy: str
    hardware: dict
    workload: dict
    device_map: dict[str, int | str]
    rows: list[DeviceRow]
    total_params: int
    total_weight_bytes: int
    fits: bool
    problems: list[str] = field(default_factory=list)
    offloaded: bool = False
    reserves_counted: bool = True
    recommendations: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        for row, src in zip(d["rows"], self.rows):
            row["summary"] = src.summary
            row["total_bytes"] = src.total_bytes
        return d

    def table(self) -> str:
        shown = [r for r in RESERVES if any(row.reserves.get(r) for row in self.rows)]
        head = ["device", "params", "weights", *[RESERVE_LABELS[r] for r in shown], "margin", "total / capacity",
                "modules"]
        lines = [head]
        for r in self.rows:
            cap = f" / {r.capacity_bytes / GiB:.2f}" if r.capacity_bytes else ""
            lines.append([f"{r.device} {r.label}".strip(), f"{r.params / 1e9:.3f} B", gib(r.weight_bytes),
                          *[gib(r.reserves.get(x, 0)) for x in shown], gib(r.margin_bytes),
                          f"{r.total_bytes / GiB:.2f}{cap} GiB", r.summary])
        lines.append(["total", f"{self.total_params / 1e9:.3f} B", gib(self.total_weight_bytes),
                      *[gib(sum(row.reserves.get(x, 0) for row in self.rows)) for x in shown],
                      gib(sum(row.margin_bytes for row in self.rows)),
                      f"{sum(row.total_bytes for row in self.rows) / GiB:.2f} GiB", ""])
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        w = self.workload
        out = [f"placement plan: {self.model}, {self.precision}, strategy {self.strategy}, on "
               f"{self.hardware['name']}; batch {w['batch_size']} x {w['seq_len']} tokens"]
        for n, line in enumerate(lines):
            out.append("  ".join(c.ljust(wd) if i in (0, len(head) - 1) else c.rjust(wd)
                                 for i, (c, wd) in enumerate(zip(line, widths))).rstrip())
            if n in (0, len(lines) - 2):
                out.append("  ".join("-" * wd for wd in widths))
        if shown:
            out.append("reserves (GiB): " + ", ".join(f"{RESERVE_LABELS[x]} = {x.replace('_', ' ')}" for x in shown))
        elif not self.reserves_counted:
            out.append("weights only (placement.reserves=false): the stock transformers plan")
        out.append("verdict: " + ("fits" + (" (WITH OFFLOAD: slow)" if self.offloaded else "") if self.fits
                                  else "DOES NOT FIT. " + " ".join(self.problems)))
        if self.recommendations:
            out.append(recommendation_text(self.recommendations))
        return "\n".join(out)


def gib(n: int | None) -> str:
    return "" if n is None else f"{n / GiB:.2f}"


def summarize_modules(names: list[str]) -> str:
    """'model.embed_tokens, model.layers.0-39' from a list of module names."""
    if names == [""]:
        return "whole model"
    layers: dict[str, list[int]] = defaultdict(list)
    others = []
    for name in names:
        head, _, tail = name.rpartition(".")
        if tail.isdigit() and head.rpartition(".")[2] in ("layers", "h", "blocks", "layer"):
            layers[head].append(int(tail))
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


def owner(device_map: dict, name: str) -> int | str:
    """The device of a parameter or module: the entry for it or for its nearest ancestor."""
    best = None
    for module in device_map:
        if module == "" or name == module or name.startswith(module + "."):
            if best is None or len(module) > len(best):
                best = module
    if best is None:
        raise KeyError(name)
    return device_map[best]


# -------------------------------------------------------------------------------------------- the planning

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


def account(model, device_map: dict, facts: ModelFacts | None, sizes: dict, params: dict, caps: dict,
            budgets: dict, placement: PlacementConfig, hardware: Hardware, use_gpus: bool) -> list[DeviceRow]:
    """Weights and reserves on each device of a device map."""
    context = parse_bytes(placement.cuda_context, "judge.placement.cuda_context")
    by_device: dict[int | str, list[str]] = defaultdict(list)
    for module, dev in device_map.items():
        by_device[dev].append(module)
    reserves: dict[int | str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(RESERVES, 0))
    if facts is not None:
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
        for dev in by_device:
            if isinstance(dev, int):
                reserves[dev]["cuda_context"] = context
    gpus = {g.index: g for g in hardware.gpus}
    order = sorted(by_device, key=lambda d: (not isinstance(d, int), d if isinstance(d, int) else 0, str(d)))
    rows = []
    for dev in order:
        modules = by_device[dev]
        gpu = gpus.get(dev) if isinstance(dev, int) else None
        cap = caps.get(dev)
        rows.append(DeviceRow(
            device=device_name(dev),
            label=gpu.name if gpu else ("RAM" if dev == "cpu" else ""),
            modules=modules,
            params=sum(params[m] for m in modules),
            weight_bytes=sum(sizes[m] for m in modules),
            reserves={k: v for k, v in reserves[dev].items() if v} if facts is not None else {},
            margin_bytes=int(cap * placement.margin) if cap and facts is not None else 0,
            budget_bytes=int(budgets[dev]) if dev in budgets else None,
            capacity_bytes=cap,
        ))
    return rows


def library_budgets(model, budgets: dict, strategy: str, quantizer, stock: bool, gpu0_floor: int) -> dict:
    """max_memory as transformers derives it for a strategy (balanced caps, bitsandbytes' x0.9 in stock mode)."""
    from transformers.integrations.accelerate import get_balanced_memory, get_max_memory

    if strategy == "sequential":
        mm = get_max_memory(dict(budgets))
    else:
        mm = get_balanced_memory(model, dict(budgets), no_split_module_classes=model._no_split_modules,
                                 hf_quantizer=quantizer, low_zero=strategy == "balanced_low_0")
        if 0 in mm and gpu0_floor:
            mm[0] = min(max(mm[0], gpu0_floor), budgets[0])
    if stock and quantizer is not None:
        mm = quantizer.adjust_max_memory(mm)
    return mm


def plan_placement(model_config, model_label: str, precision: Precision, hardware: Hardware,
                   placement: PlacementConfig, workload: Workload) -> Plan:
    """Where each module goes on `hardware`, and whether weights plus reserves fit every device."""
    from transformers.integrations.accelerate import compute_module_sizes, infer_auto_device_map

    if placement.strategy not in STRATEGIES:
        raise PipelineError(f"judge.placement.strategy={placement.strategy!r} is not one of {', '.join(STRATEGIES)}.")
    if placement.devices not in ("auto", "gpu", "cpu"):
        raise PipelineError(f"judge.placement.devices={placement.devices!r} is not one of auto, gpu, cpu.")
    if not 0.0 <= placement.margin < 1.0:
        raise PipelineError(f"judge.placement.margin={placement.margin}: must be a fraction in [0, 1).")
    if workload.batch_size < 1 or workload.seq_len < 1:
        raise PipelineError("judge.batch_size and judge.placement.max_seq_len must be at least 1.")
    hardware = hardware.first(placement.gpus)
    use_gpus = uses_gpus(placement, hardware)

    model, quantizer = meta_model(model_config, precision)
    sizes, _ = compute_module_sizes(model, quantizer)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    total_params = sum(p.numel() for n, p in model.named_parameters() if n not in tied)
    base = dict(model=model_label, precision=precision.describe(), strategy=placement.strategy,
                hardware=hardware.to_dict(), workload=asdict(workload), total_params=total_params,
                total_weight_bytes=sizes[""], reserves_counted=placement.reserves)
    if use_gpus and not hardware.gpus:
        return Plan(**base, device_map={}, rows=[], fits=False,
                    problems=[f"It needs GPUs (judge.placement.devices=gpu), and {hardware.describe()}."])
    if precision.quantized and not use_gpus and hardware.backend == "mps":
        raise PipelineError("bitsandbytes int8/nf4 need CUDA (or a CPU); on Apple MPS use bf16, fp16 or fp32.")

    caps = capacities(hardware, placement, use_gpus)
    facts = ModelFacts.of(model, model_config, precision, quantizer, workload) if placement.reserves else None
    limits = {d: int(c * (1 - placement.margin)) if facts else c for d, c in caps.items()}
    budgets = dict(limits)
    if facts is not None:  # fixed costs of every device that will run layers; the rest is settled below
        context = parse_bytes(placement.cuda_context, "judge.placement.cuda_context")
        for d in budgets:
            if is_compute_device(d, use_gpus):
                budgets[d] -= facts.activation_bytes + facts.qmm_workspace + (context if isinstance(d, int) else 0)
        budgets = {d: max(0, b) for d, b in budgets.items()}

    gpu0_floor = 0
    step = max(sizes[name] for name in facts.decoder_layers) if facts else 0
    with quiet_library_logs():
        for _ in range(200):
            mm = library_budgets(model, budgets, placement.strategy, quantizer, stock=facts is None,
                                 gpu0_floor=gpu0_floor)
            device_map = dict(infer_auto_device_map(model, max_memory=mm, no_split_module_classes=model._no_split_modules,
                                                    hf_quantizer=quantizer))
            rows = account(model, device_map, facts, sizes, module_param_counts(model, tied, device_map), caps, mm,
                           placement, hardware, use_gpus)
            if facts is None:
                break
            spilled = any(r.device in ("disk", "cpu") for r in rows) and use_gpus
            if placement.strategy == "balanced_low_0" and spilled and 0 in mm and mm[0] < budgets.get(0, 0):
                gpu0_floor = mm[0] + max(step, 1)  # balanced_low_0 must not spill where GPU 0 still has room
                continue
            over = {key: r.total_bytes - caps[key] for r, key in ((r, device_key(r.device)) for r in rows)
                    if key in caps and is_compute_device(key, use_gpus) and r.total_bytes > caps[key]}
            if not over:
                break
            for key, excess in over.items():
                budgets[key] = max(0, budgets[key] - excess)

    return Plan(**base, device_map=device_map, rows=rows,
                **verdict(rows, caps, use_gpus, placement, precision, model_label, hardware))


def device_key(device: str) -> int | str:
    return int(device.split(":")[1]) if device.startswith("cuda:") else device


def verdict(rows: list[DeviceRow], caps: dict, use_gpus: bool, placement: PlacementConfig, precision: Precision,
            model_label: str, hardware: Hardware) -> dict:
    problems = []
    offloaded = [r for r in rows if r.device == "disk" or (use_gpus and r.device == "cpu")]
    if offloaded and not placement.allow_offload:
        where = " and ".join(f"{r.weight_bytes / GiB:.2f} GiB ({r.summary}) to {r.device}" for r in offloaded)
        problems.append(f"{model_label} in {precision.describe()} does not fit on {hardware.describe()}: the plan "
                        f"would put {where}.")
    elif offloaded and precision.quantized and (precision.name != "int8" or any(r.device == "disk" for r in offloaded)):
        problems.append(f"bitsandbytes {precision.name} cannot offload to {'/'.join(r.device for r in offloaded)}: "
                        "choose a bf16 judge for offloading, or more GPU memory.")
    for r in rows:
        cap = caps.get(device_key(r.device))
        if cap and is_compute_device(device_key(r.device), use_gpus) and r.total_bytes > cap:
            problems.append(f"{r.device} needs {r.total_bytes / GiB:.2f} GiB (weights {r.weight_bytes / GiB:.2f} + "
                            f"reserves) but has {cap / GiB:.2f} GiB.")
    return {"fits": not problems, "problems": problems, "offloaded": bool(offloaded) and not problems}


def module_param_counts(model, tied: set[str], device_map: dict) -> dict[str, int]:
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


# ------------------------------------------------------------------------------------------ recommendations

def same_kind(kind: tuple[str, int], n: int, cpu_bytes: int) -> Hardware:
    name, size = kind
    return Hardware(f"{n}x {name}", [Gpu(i, name, size) for i in range(n)], cpu_bytes, "declared")


def fewest_gpus(model_config, label: str, precision: Precision, kind: tuple[str, int], placement: PlacementConfig,
                workload: Workload) -> int | None:
    """The fewest GPUs of one kind that hold the model in this precision, or None up to MAX_GPUS_CONSIDERED."""
    from transformers.integrations.accelerate import compute_module_sizes

    one = with_values(placement, devices="gpu", gpus=None, max_memory=None, allow_offload=False)
    model, quantizer = meta_model(model_config, precision)
    weights = compute_module_sizes(model, quantizer)[0][""]
    start = max(1, math.ceil(weights / kind[1]))
    for n in range(start, MAX_GPUS_CONSIDERED + 1):
        if plan_placement(model_config, label, precision, same_kind(kind, n, 0), one, workload).fits:
            return n
    return None


def recommend(model_config, label: str, model_cfg: ModelConfig, hardware: Hardware, placement: PlacementConfig,
              workload: Workload) -> list[dict]:
    """For each precision: does it fit on this hardware, and how many GPUs of this kind (or reference kinds)."""
    from .models import resolve_precision

    kinds = [hardware.gpu_kind] if hardware.gpu_kind else list(REFERENCE_KINDS)
    out = []
    for name in PRECISION_LADDER:
        precision = resolve_precision(replace_precision(model_cfg, name), on_gpu=True)
        here = plan_placement(model_config, label, precision, hardware, with_values(placement, devices="gpu"),
                              workload) if hardware.gpus else None
        out.append({"precision": name, "fits_here": bool(here and here.fits),
                    "fewest_gpus": {k[0]: fewest_gpus(model_config, label, precision, k, placement, workload)
                                    for k in kinds}})
    return out


def replace_precision(model_cfg: ModelConfig, name: str):
    from omegaconf import OmegaConf

    node = OmegaConf.create(OmegaConf.to_container(model_cfg)) if OmegaConf.is_config(model_cfg) else model_cfg
    node.precision = name
    if name == "nf4":
        node.double_quant = True
    return node


def recommendation_text(recs: list[dict]) -> str:
    lines = ["what fits (precision: here? / fewest GPUs of each kind):"]
    for r in recs:
        kinds = ", ".join(f"{n if n else f'>{MAX_GPUS_CONSIDERED}'} x {k}" for k, n in r["fewest_gpus"].items())
        lines.append(f"  {r['precision']:5} {'fits here' if r['fits_here'] else 'no':9}  {kinds}")
    best = next((r["precision"] for r in recs if r["fits_here"]), None)
    if best:
        lines.append(f"  the most faithful precision that fits here: {best}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ after loading

def planned_device(device_map: dict[str, int | str], param_name: str) -> str:
    return device_name(owner(device_map, param_name))


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
        # accelerate keeps offloaded parameters on the meta device and brings them in when their module runs
        offloaded = p.device.type == "meta" and expected in ("cpu", "disk") and plan.offloaded
        if expected != actual and not offloaded:
            wrong.append(f"{name} on {actual}, planned {expected}")
        counts[actual] += p.numel()
    if wrong:
        raise PipelineError(f"the loaded model does not match its placement plan: {preview(wrong, 5)}. "
                            "Nothing was judged; this is a bug in the plan or the loader, please report it.")
    return dict(counts)


# ------------------------------------------------------------------------------------------------ stage=plan

def plan_for(judge_cfg, hardware: Hardware, source: str | None = None, seq_len: int | None = None,
             recommendations: bool = False) -> Plan:
    """The judge's plan on `hardware` for its batch size and sequence length (max_seq_len unless given).

    `source` is the resolved model folder when there is one; by default the spec itself (a Hub id or a GGUF spec
    with a hub_id), whose shipped config is used.
    """
    from .models import resolve_precision

    j = judge_cfg
    model_config = load_model_config(source or j.model, j)
    precision = resolve_precision(j, on_gpu=uses_gpus(j.placement, hardware))
    workload = Workload(j.batch_size, seq_len or j.placement.max_seq_len)
    label = f"{j.name} ({j.model})"
    plan = plan_placement(model_config, label, precision, hardware, j.placement, workload)
    if recommendations:
        plan.recommendations = recommend(model_config, label, j, hardware, j.placement, workload)
    return plan


def run(cfg) -> Plan:
    """stage=plan: print and save the judge's placement plan on a hardware profile; no weights are read.

        python -m pipeline stage=plan judge=llama70b-8bit hardware=4xA100-40GB
        python -m pipeline stage=plan judge=llama70b hardware=auto judge.placement.strategy=balanced_low_0
    """
    import time

    from .files import write_json
    from .hardware import resolve

    started = time.perf_counter()
    hardware = resolve(cfg.hardware)
    for note in hardware.notes:
        print(f"hardware: {note}")
    j = cfg.judge
    plan = plan_for(j, hardware, recommendations=True)
    elapsed = time.perf_counter() - started
    print(plan.table())
    out = Path(cfg.runs_dir) / "plans" / f"{j.name}--{cfg.hardware.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {**plan.to_dict(), "planning_seconds": round(elapsed, 3)})
    print(f"planned in {elapsed:.1f} s without reading any weight; saved {out}")
    if not plan.fits:
        raise PipelineError(f"{' '.join(plan.problems)} The table above lists what would fit.")
    return plan
