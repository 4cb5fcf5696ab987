"""The engine settings of a model (generator.* and judge.*): which engine runs it, and how to reach a server.

Kept apart from config.py (which imports them) so that reading them imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from ..choice import Choice

EngineName = Choice("EngineName", [(e, e) for e in ("hf", "vllm", "openai")])
DEFAULT_GPU_SHARE = 0.9  # vLLM's own default gpu_memory_utilization, where the plan leaves a GPU more
ApiStyle = Choice("ApiStyle", [(e, e) for e in ("completions", "chat")])


def chat_style(model_cfg) -> bool:
    """Whether a generator or judge is a model behind a chat-completions endpoint (engine=openai api.style=chat):
    messages out, no tokenizer or weights of it here."""
    return str(model_cfg.engine) == "openai" and str(model_cfg.api.style) == "chat"


@dataclass
class ApiConfig:
    """engine=openai: an OpenAI-compatible server or API. style=completions sends the prompts as token ids of the
    model's own tokenizer (`model` above names it: a hub id or folder), exactly the hf engine's; style=chat sends
    messages, for hosted APIs and any chat server (no tokenizer needed; see engines/chat.py)."""

    # completions: /v1/completions with token-id prompts (vllm serve, SGLang: the hf engine's exact prompts).
    # chat: /v1/chat/completions with messages (OpenAI and other hosted APIs; any chat server).
    style: ApiStyle = ApiStyle.completions
    # style=chat: send the judge prompt's reply prefix ("Verdict:") as the start of the reply for the server to
    # continue (vLLM and SGLang can; most hosted APIs cannot). false: the judge writes the whole reply.
    prefill: bool = False

    # The server's API root, e.g. http://gpu-node-3:8000/v1 (required with engine=openai).
    base_url: Optional[str] = None
    # The model name the server knows (its /v1/models id). null: the server's only model.
    model: Optional[str] = None
    # The NAME of an environment variable that holds the API key (the key itself is never in a config, manifest,
    # log, record or error). null: no key is sent.
    key_env: Optional[str] = None
    # Requests in flight at once; a batch of answers is split among them.
    concurrency: int = 4
    # Seconds one request may take (connecting and reading) before it counts as failed and is retried.
    timeout_s: float = 300.0
    # Tries after the first for a request that failed for a passing reason (429, 5xx, a timeout, a broken reply):
    # waits grow from backoff_s, doubling, up to max_backoff_s, with random jitter; a Retry-After header is obeyed.
    retries: int = 6
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0


@dataclass
class VllmConfig:
    """engine=vllm: the stage starts vLLM's OpenAI-compatible server on this node in vLLM's own Python environment
    (it pins its own torch and transformers), waits until it answers, judges through it, and stops it."""

    # The Python of the environment vLLM is installed in. null: $PIPELINE_VLLM_PYTHON, else
    # <cache_dir>/engines/vllm/bin/python (what `make vllm` installs).
    python: Optional[str] = None
    # GPUs one copy of the model spans (tensor parallelism). 0: the fewest visible GPUs that hold a copy with its
    # reserves and divide its attention heads (`stage=plan judge.engine=vllm` shows it; 1 on a CPU).
    tensor_parallel_size: int = 0
    # Copies of the model side by side, each over tensor_parallel_size GPUs, sharing the requests (vLLM's data
    # parallelism). 0: as many as the visible GPUs hold, so none is idle (1 on a CPU).
    data_parallel_size: int = 0
    # Share of each GPU's memory vLLM may take (weights, KV cache, activations). null: 0.9, or less where the
    # judge's plan gives a GPU less (judge.placement.max_memory, less judge.placement.margin).
    gpu_memory_utilization: Optional[float] = None
    # On a CPU: GiB of memory for the KV cache (VLLM_CPU_KVCACHE_SPACE).
    cpu_kv_cache_gib: int = 1
    # Positions per sequence. null: the stage's longest prompt plus its reply, rounded up to a multiple of 256.
    max_model_len: Optional[int] = None
    # Seconds to wait for the server to answer /health after starting it.
    start_timeout_s: float = 900.0
    # More command-line arguments for the server, e.g. ["--enforce-eager"].
    extra_args: List[str] = field(default_factory=list)
