"""Plans from a model config: the judge's (`plan_for`) and the generator's one-device plan (`single_device`).
stage=plan, which prints and saves the judge's plan, is planstage.py (above this package)."""

from __future__ import annotations

from ..hardware import Hardware
from ..models import Precision
from .budget import plan_placement, uses_gpus
from .configs import load_model_config
from .facts import Workload
from .plan import ModelIdentity, Plan
from .recommend import recommend


def plan_for(judge_cfg, hardware: Hardware, source: str | None = None, seq_len: int | None = None,
             recommendations: bool = False) -> Plan:
    """The judge's plan on `hardware` for its batch size and sequence length (max_seq_len unless given).

    `source` is the resolved model folder when there is one; by default the spec itself (a Hub id or a GGUF spec
    with a hub_id), whose shipped config is used, and the plan gets its source later (`Plan.with_source`).
    """
    from ..models import choose_precision

    j = judge_cfg
    model_config = load_model_config(source or j.model, j)
    precision = choose_precision(j, on_gpu=uses_gpus(j.placement, hardware))
    workload = Workload(j.batch_size, seq_len or j.placement.max_seq_len)
    label = f"{j.name} ({j.model})"
    plan = plan_placement(model_config, label, precision, hardware, j.placement, workload,
                          identity=ModelIdentity.of(j, source))
    if recommendations:
        plan.recommendations = recommend(model_config, label, j, hardware, j.placement, workload)
    return plan


def single_device(model_cfg, precision: Precision, device: str, source: str) -> Plan:
    """The trivial plan: the whole model on one device (`{"": device}`), loaded from `source`.

    Nothing is placed or accounted (no rows, totals 0): the generator's model is small by design, and this plan
    exists so that one loader and one check serve every model.
    """
    return Plan(model=f"{model_cfg.name} ({model_cfg.model})", precision=precision, strategy="single device",
                hardware={"name": str(device)}, workload={"batch_size": model_cfg.batch_size, "seq_len": None},
                device_map={"": str(device)}, rows=[], total_params=0, total_weight_bytes=0, fits=True,
                reserves_counted=False, identity=ModelIdentity.of(model_cfg, source))
