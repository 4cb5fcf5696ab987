"""How vLLM would run a judge on a node (engine=vllm): the tensor-parallel layout derived from the judge's plan.
Used by stage=plan judge.engine=vllm and by the stage that starts vLLM's server (engines/served.py)."""

from __future__ import annotations

from ..engines.settings import DEFAULT_GPU_SHARE
from ..errors import PipelineError
from .configs import load_model_config
from .copies import gpus_per_copy


def layout(judge_cfg, hardware, plan) -> dict:
    """How vLLM runs the judge on `hardware`, given its hf `plan` there (which counts the reserves): tensor
    parallelism over the fewest GPUs that hold one copy with its reserves and divide the attention heads; per GPU,
    the weights' share and what vLLM may use (gpu_memory_utilization); and as many such copies as the GPUs hold
    (data parallelism). judge.vllm.tensor_parallel_size / data_parallel_size > 0 are taken as given. On a CPU: one
    process."""
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
    dp = data_parallel(judge_cfg.vllm.data_parallel_size, tp, len(gpus))
    used = gpus[:tp * dp]
    share = memory_share(judge_cfg, plan, used)
    per_gpu = int(plan.total_weight_bytes / tp)
    usable = int(min(g.total_bytes for g in used) * share)
    return {"tensor_parallel_size": tp, "data_parallel_size": dp, "devices": [g.index for g in used], "why": why,
            "gpu_memory_utilization": share, "weights_per_gpu_bytes": per_gpu, "usable_per_gpu_bytes": usable,
            "left_per_gpu_bytes": usable - per_gpu, "fits": usable > per_gpu}


def data_parallel(wanted: int, tp: int, gpus: int) -> int:
    """Copies of the model vLLM runs side by side, each over `tp` GPUs: `wanted`, or (0) as many as the GPUs hold,
    so that no GPU is left idle by a copy that needs fewer than the node has."""
    if not wanted:
        return max(1, gpus // tp)
    if wanted * tp > gpus:
        raise PipelineError(f"engine=vllm: judge.vllm.data_parallel_size={wanted} copies over {tp} GPUs each need "
                            f"{wanted * tp} GPUs; {gpus} are visible (at most {max(1, gpus // tp)} copies).")
    return wanted


def memory_share(judge_cfg, plan, gpus) -> float:
    """vLLM's gpu_memory_utilization: judge.vllm.gpu_memory_utilization, else 0.9 (vLLM's default), lowered to what the plan lets a
    GPU hold (judge.placement.max_memory, less the margin) where that is less."""
    if judge_cfg.vllm.gpu_memory_utilization is not None:
        return float(judge_cfg.vllm.gpu_memory_utilization)
    rows = {r.device: r for r in plan.rows}
    margin = float(judge_cfg.placement.margin)
    share = DEFAULT_GPU_SHARE
    for g in gpus:
        row = rows.get(f"cuda:{g.index}")
        cap = row.capacity_bytes if row is not None and row.capacity_bytes else g.total_bytes
        share = min(share, cap * (1 - margin) / g.total_bytes)
    return round(share, 4)


def layout_text(lay: dict) -> str:
    if lay["devices"] == "cpu":
        return "vLLM layout: tensor parallel 1, on the CPU"
    gib = 2 ** 30
    copies = lay.get("data_parallel_size", 1)
    return (f"vLLM layout: tensor parallel {lay['tensor_parallel_size']}"
            + (f" x {copies} copies (data parallel)" if copies > 1 else "")
            + f" over GPUs {lay['devices']} ({lay['why']}); "
            f"per GPU {lay['weights_per_gpu_bytes'] / gib:.2f} GiB of weights of {lay['usable_per_gpu_bytes'] / gib:.2f} "
            f"GiB vLLM may use (gpu_memory_utilization {lay['gpu_memory_utilization']:g}), "
            f"{lay['left_per_gpu_bytes'] / gib:.2f} GiB left for its KV cache and activations"
            + ("" if lay["fits"] else ": DOES NOT FIT"))
