"""What would fit: for each precision of the ladder, whether it fits here and the fewest GPUs of a kind that hold it.

The counts are what-if plans (`plan_placement` on declared hardware of n identical GPUs), so they carry the same
reserves as the real plan. Without GPUs to take the kind from, reference kinds are counted in. The text shown
under a plan is `plan.recommendation_text`.
"""

from __future__ import annotations

import math

from ..config import ModelConfig, PlacementConfig, PrecisionName
from ..hardware import GiB, Gpu, Hardware
from ..models import Precision
from .budget import plan_placement
from .configs import meta_model, with_values
from .facts import Workload
from .plan import MAX_GPUS_CONSIDERED

PRECISION_LADDER = (PrecisionName.bf16.value, PrecisionName.int8.value, PrecisionName.nf4.value)  # most faithful first
# GPU kinds recommendations are counted in when the hardware has no GPU to take the kind from.
REFERENCE_KINDS = (("80 GiB (A100/H100 80GB)", 80 * GiB), ("48 GiB (A6000)", 48 * GiB),
                   ("40 GiB (A100 40GB)", 40 * GiB), ("24 GiB (RTX 3090/4090)", 24 * GiB))


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
    from ..models import choose_precision

    kinds = [hardware.gpu_kind] if hardware.gpu_kind else list(REFERENCE_KINDS)
    out = []
    for name in PRECISION_LADDER:
        precision = choose_precision(replace_precision(model_cfg, name), on_gpu=True)
        here = plan_placement(model_config, label, precision, hardware, with_values(placement, devices="gpu"),
                              workload) if hardware.gpus else None
        out.append({"precision": name, "fits_here": bool(here and here.fits),
                    "fewest_gpus": {k[0]: fewest_gpus(model_config, label, precision, k, placement, workload)
                                    for k in kinds}})
    return out


def replace_precision(model_cfg: ModelConfig, name: str):
    """A copy of a model config with another precision (nf4 with double quantisation)."""
    from omegaconf import OmegaConf

    node = OmegaConf.create(OmegaConf.to_container(model_cfg)) if OmegaConf.is_config(model_cfg) else model_cfg
    node.precision = name
    if name == PrecisionName.nf4:
        node.double_quant = True
    return node
