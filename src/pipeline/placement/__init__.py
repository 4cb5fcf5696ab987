"""Placement plans: where every module of a model goes and why it will not run out of memory, before any weight
is read; then, after loading, the check that the model is what was planned.

Pure functions over a model on the meta device and a hardware description; the loader (models.load_planned)
applies the plan they return. What lives where:

    configs    model configs (shipped copies, folder, Hub), the meta-device skeleton, config copies with changes
    facts      Workload and ModelFacts: the sizes of the reserves (KV cache, activations, logits, quant state, ...)
    plan       Plan, DeviceRow, ModelIdentity: the plan as a value, plan.json (to_dict) and the printed table
    budget     capacities, the library's placement under shrinking budgets, accounting, the verdict
    recommend  what would fit: the precision ladder and the fewest GPUs of a kind
    verify     verify_loaded: devices, dtypes and quantisation of the loaded model against its plan
    stage      plan_for (the judge's plan), single_device (the generator's); stage=plan itself is planstage.py
    copies     gpus_per_copy: the fewest usable GPUs that hold one whole copy (replicas, the vLLM layout)
"""

from .budget import STRATEGIES, capacities, plan_placement, uses_gpus
from .configs import _META_CACHE, load_model_config, meta_model, quiet_library_logs, with_values
from .facts import ModelFacts, Workload, decoder_layer_names
from .plan import DeviceRow, ModelIdentity, Plan, recommendation_text, summarize_modules
from .recommend import PRECISION_LADDER, fewest_gpus, recommend, replace_precision
from .stage import plan_for, single_device
from .verify import check_loaded, verify_loaded

__all__ = [
    "STRATEGIES", "capacities", "plan_placement", "uses_gpus",
    "_META_CACHE", "load_model_config", "meta_model", "quiet_library_logs", "with_values",
    "ModelFacts", "Workload", "decoder_layer_names",
    "DeviceRow", "ModelIdentity", "Plan", "recommendation_text", "summarize_modules",
    "PRECISION_LADDER", "fewest_gpus", "recommend", "replace_precision",
    "plan_for", "run", "single_device",
    "check_loaded", "verify_loaded",
]
