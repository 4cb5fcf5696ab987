"""How vLLM would run a judge on a node (engine=vllm): the tensor-parallel layout derived from the judge's plan.
Used by stage=plan judge.engine=vllm and by the stage that starts vLLM's server (engines/served.py)."""

from __future__ import annotations

from ..errors import PipelineError
from .configs import load_model_config


def layout(judge_cfg, hardware, plan) -> dict:
    """How vLLM runs the judge on `hardware`, given its hf `plan` there (which counts the reserves): tensor
    parallelism over the fewest GPUs that hold one copy with its reserves and divide the attention heads; per GPU,
    the weights' share and what vLLM may use (gpu_memory_utilization). judge.vllm.tensor_parallel_size > 0 is taken as given.
    On a CPU: one process."""
    from ..replicas import gpus_per_copy  # (it imports placement)

    gpus = hardware.gpus
    if not gpus:
        return {"tensor_parallel_size": 1, "devices": "cpu", "why": "no GPU: one process on the CPU"}
    text = load_model_config(judge_cfg.model, judge_cfg).get_text_config()
    heads = int(text.num_attention_heads)
    wanted = judge_cfg.vllm.tensor_parallel_size
    if wanted:
        tp, why = wanted, "judge.vllm.tensor_parallel_size"
    else:
        need = gpus_per_copy(judge_cfg, hardware, plan, None, None)[0] if plan.fits else len(gpus)
        tp = next((t for t in range(need, len(gpus) + 1) if heads % t == 0), len(gpus))
        why = (f"the fewest of the {len(gpus)} GPUs that hold a copy with its reserves ({need}) and divide its "
               f"{heads} attention heads")
    if tp > len(gpus) or heads % tp:
        raise PipelineError(f"engine=vllm: tensor parallelism over {tp} GPUs needs {tp} visible GPUs that divide the "
                            f"model's {heads} attention heads ({len(gpus)} visible).")
    per_gpu = int(plan.total_weight_bytes / tp)
    usable = int(min(g.total_bytes for g in gpus[:tp]) * judge_cfg.vllm.gpu_memory_utilization)
    return {"tensor_parallel_size": tp, "devices": [g.index for g in gpus[:tp]], "why": why,
            "weights_per_gpu_bytes": per_gpu, "usable_per_gpu_bytes": usable, "left_per_gpu_bytes": usable - per_gpu,
            "fits": usable > per_gpu}


def layout_text(lay: dict) -> str:
    if lay["devices"] == "cpu":
        return "vLLM layout: tensor parallel 1, on the CPU"
    gib = 2 ** 30
    return (f"vLLM layout: tensor parallel {lay['tensor_parallel_size']} over GPUs {lay['devices']} ({lay['why']}); "
            f"per GPU {lay['weights_per_gpu_bytes'] / gib:.2f} GiB of weights of {lay['usable_per_gpu_bytes'] / gib:.2f} "
            f"GiB vLLM may use, {lay['left_per_gpu_bytes'] / gib:.2f} GiB left for its KV cache and activations"
            + ("" if lay["fits"] else ": DOES NOT FIT"))
