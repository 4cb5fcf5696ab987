"""After loading: is the model what its plan says? Every parameter's device and dtype, every Linear's quantisation.

What transformers 5 and bitsandbytes do, written out as the expectations checked here:

  devices       each parameter sits on the device the map gives its module (an index N means cuda:N). Parameters
                that accelerate offloads (an offloaded plan, planned cpu or disk) stay on the meta device until their
                module runs.
  quantisation  int8 plans: every Linear that bitsandbytes converts is a Linear8bitLt holding Int8Params; nf4/fp4
                plans: a Linear4bit holding Params4bit of that quant type, with the planned compute dtype and
                double quantisation; fp32/bf16/fp16 plans: no bitsandbytes module at all. bitsandbytes converts
                every torch Linear (and Conv1D) except the output embeddings (lm_head), tied weights, the module of
                the last parameter, the model's `_keep_in_fp32_modules`, and, in int8 maps that mix the CPU with
                other devices (`models.int8_cpu_offload`), the modules mapped to cpu or disk: those stay torch
                Linear layers in the plan's dtype, not float32 as the setting's name suggests.
  dtypes        Int8Params are int8 and Params4bit uint8 (packed storage). Every other floating parameter is in
                the plan's dtype, norms, embeddings and lm_head included, except what transformers upcasts to
                float32: `_keep_in_fp32_modules` under fp16, `_keep_in_fp32_modules_strict` under fp16 or bf16.

Any difference stops the run with a PipelineError naming the parameter or module, what was planned and what was
found: a model that is not what was planned would give results that are not what was asked for.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict

import torch

from ..errors import PipelineError, preview
from ..models import dtype_name, int8_cpu_offload
from .plan import Plan, owner

# Module lists (modules_to_not_convert) match a name from its start up to a module boundary, or as a suffix.
BOUNDARY = r"(?:(?<=\.)|(?=\.|$))"


def normal_device(value) -> str:
    """One spelling per device: 'cuda:N' for N, 'cuda' and 'cuda:N'; 'mps' for 'mps:0'; others as they are."""
    if isinstance(value, int):
        return f"cuda:{value}"
    kind, _, index = str(value).partition(":")
    return f"cuda:{index or 0}" if kind == "cuda" else kind


def named_by(name: str, key: str) -> bool:
    """Whether a module list entry covers a module, as bitsandbytes' conversion reads the list."""
    return bool(re.match(rf"(?:{key}){BOUNDARY}", name)) or name.endswith(key)


def device_problems(model, plan: Plan, counts: dict[str, int]) -> list[str]:
    """Parameters not on their planned device; counts the parameters found on each device."""
    wrong = []
    for name, p in model.named_parameters():
        actual = normal_device(p.device)
        try:
            expected = normal_device(owner(plan.device_map, name))
        except KeyError:
            wrong.append(f"{name} on {actual}, not in the plan")
            continue
        offloaded = actual == "meta" and expected in ("cpu", "disk") and plan.offloaded
        if expected != actual and not offloaded:
            wrong.append(f"{name} on {actual}, planned {expected}")
        counts[actual] += p.numel()
    return wrong


def left_unquantised(model, plan: Plan) -> list[str]:
    """The module list bitsandbytes leaves out of conversion for this model and plan (see the module docstring)."""
    keys = {key for pair in (getattr(model, "all_tied_weights_keys", None) or {}).items() for key in pair}
    params = list(model.named_parameters())
    if params:
        keys.add(params[-1][0])
    output = model.get_output_embeddings()
    keys |= {n for n, m in model.named_modules() if output is not None and m is output}
    keys |= set(getattr(model, "_keep_in_fp32_modules", None) or ())
    if int8_cpu_offload(plan.precision, plan.device_map):
        keys |= {k for k, v in plan.device_map.items() if v in ("cpu", "disk")}
    return sorted({k.removesuffix(".weight") for k in keys})


def quantised_kind(module) -> str | None:
    """'int8', 'nf4' or 'fp4' for a bitsandbytes layer, None for anything else."""
    bnb = sys.modules.get("bitsandbytes")  # not imported: no module can be one of its layers
    if bnb is None:
        return None
    if isinstance(module, bnb.nn.Linear8bitLt):
        return "int8"
    if isinstance(module, bnb.nn.Linear4bit):
        return getattr(module.weight, "quant_type", "4-bit")
    return None


def layer_text(kind: str | None, module=None) -> str:
    if kind == "int8":
        return "bitsandbytes Linear8bitLt (int8)"
    if kind is not None:
        return f"bitsandbytes Linear4bit ({kind})"
    return type(module).__name__ if module is not None else "an unquantised Linear"


def module_problems(model, plan: Plan) -> list[str]:
    """Linear layers quantised otherwise than planned, or 4-bit layers with other settings."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    precision = plan.precision
    kept = left_unquantised(model, plan) if precision.quantized else []
    wrong = []
    for name, module in model.named_modules():
        found = quantised_kind(module)
        if found is None and not (type(module) is nn.Linear or isinstance(module, Conv1D)):
            continue
        planned = precision.name if precision.quantized and not any(named_by(name, k) for k in kept) else None
        if found != planned:
            wrong.append(f"{name} is {layer_text(found, module)}, planned {layer_text(planned)}")
        elif found in ("nf4", "fp4"):
            if module.compute_dtype != precision.dtype:
                wrong.append(f"{name} computes in {dtype_name(module.compute_dtype)}, planned "
                             f"{dtype_name(precision.dtype)}")
            if bool(module.weight.compress_statistics) != precision.double_quant:
                wrong.append(f"{name} double quantisation {module.weight.compress_statistics}, "
                             f"planned {precision.double_quant}")
    return wrong


def planned_dtype(model, plan: Plan, name: str, param) -> torch.dtype | None:
    """The dtype a loaded parameter must have; None for integer parameters outside bitsandbytes."""
    kind = type(param).__name__
    if kind == "Int8Params":
        return torch.int8
    if kind == "Params4bit":
        return torch.uint8
    if not param.is_floating_point():
        return None
    dtype = plan.precision.dtype
    upcast = list(getattr(model, "_keep_in_fp32_modules", None) or ()) if dtype == torch.float16 else []
    if dtype in (torch.float16, torch.bfloat16):
        upcast += list(getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    if any(re.search(key.replace("*", ".*"), name) for key in upcast):
        return torch.float32
    return dtype


def dtype_problems(model, plan: Plan) -> list[str]:
    wrong = []
    for name, p in model.named_parameters():
        expected = planned_dtype(model, plan, name, p)
        if expected is not None and p.dtype != expected:
            wrong.append(f"{name} in {dtype_name(p.dtype)}, planned {dtype_name(expected)}")
    return wrong


def verify_loaded(model, plan: Plan) -> dict[str, int]:
    """Fail loudly unless every parameter of the loaded model is where, in which dtype and quantised as the plan
    says; returns the number of parameters on each device."""
    counts: dict[str, int] = defaultdict(int)
    wrong = device_problems(model, plan, counts) + module_problems(model, plan) + dtype_problems(model, plan)
    if wrong:
        raise PipelineError(f"the loaded model does not match its placement plan: {preview(wrong, 5)}. "
                            "Nothing was run with it; this is a bug in the plan or the loader, please report it.")
    return dict(counts)


check_loaded = verify_loaded  # the earlier name
