"""A served engine for a stage: engine=openai (a server that is already running) or engine=vllm (a server this stage
starts and stops), both asked through engines/openai.py.

    with served_engine(model_cfg, source, tokenizer, stop_at_newline, longest, cache, log_name, what) as engine:
        ... engine.next_token_logprobs(...) / engine.generate(...) ...
        engine.describe()   # for the manifest: server, model, tokens used, retries
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from omegaconf import OmegaConf

from ..decoding import StopRule, context_length, eos_ids
from ..errors import PipelineError
from .chat import ChatEngine
from .openai import OpenAIEngine
from .settings import ApiConfig, chat_style
from .vllm import VllmServer, server_dtype, vllm_python

log = logging.getLogger(__name__)


def api_key(api, what: str) -> str | None:
    """The key from the environment variable api.key_env names (never the key in a message)."""
    if not api.key_env:
        return None
    key = os.environ.get(api.key_env)
    if not key:
        raise PipelineError(f"{what}: api.key_env={api.key_env} names an environment variable that is not set (or is "
                            f"empty): export {api.key_env}=<your key> before the command.")
    return key


def check_served(model_cfg, what: str) -> None:
    """What a served engine needs, checked before any file is read or written."""
    if model_cfg.engine == "openai":
        if not model_cfg.api.base_url:
            raise PipelineError(f"{what}: engine=openai needs the server's address: set api.base_url "
                                "(e.g. http://localhost:8000/v1).")
        api_key(model_cfg.api, what)
    if model_cfg.engine == "vllm":
        server_dtype(str(model_cfg.precision), 0, what)
        if str(model_cfg.api.style) == "chat":
            raise PipelineError(f"{what}: engine=vllm sends the prompts as token ids (the hf engine's own); "
                                "api.style=chat is for engine=openai: drop api.style, or serve the model yourself "
                                "and use engine=openai.")


def served_fingerprint(model_cfg) -> dict:
    """What else decides the records of a served engine (nothing for hf: its stages' fingerprints are unchanged):
    a stage is never resumed with another engine or served model."""
    if model_cfg.engine == "hf":
        return {}
    served = model_cfg.name if model_cfg.engine == "vllm" else model_cfg.api.model
    chat = {"style": "chat", "prefill": bool(model_cfg.api.prefill)} if str(model_cfg.api.style) == "chat" else {}
    return {"engine": {"name": str(model_cfg.engine), "served_model": served, **chat}}


def stop_rule(source: str, tokenizer, config, stop_at_newline: bool) -> StopRule:
    """The hf engine's stop rule for a model whose weights are not loaded here: vocabulary from its config,
    end-of-sequence ids from its tokenizer and generation config."""
    from transformers import GenerationConfig

    try:
        generation = GenerationConfig.from_pretrained(source)
    except (OSError, ValueError):
        generation = None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    vocab = max(int(getattr(text, "vocab_size", 0) or 0), len(tokenizer))
    return StopRule.for_vocab(tokenizer, vocab, eos_ids(tokenizer, generation), stop_at_newline)


def plain_api(api, **changes) -> ApiConfig:
    values = OmegaConf.to_container(api) if OmegaConf.is_config(api) else dataclasses.asdict(api)
    return dataclasses.replace(ApiConfig(**values), **changes)


def model_length(longest: int, config, vllm_cfg) -> int:
    """vLLM's max_model_len: the setting, else the longest prompt plus reply rounded up to 256, within the context."""
    if vllm_cfg.max_model_len:
        return int(vllm_cfg.max_model_len)
    context = context_length(config)
    length = -(-max(longest, 1) // 256) * 256
    return min(length, context) if context is not None and context >= longest else length


def server_layout(model_cfg) -> tuple[dict, int]:
    """The vLLM layout on this machine's GPUs (a judge's, from its plan; a generator, small by design, runs on one
    GPU unless generator.vllm.tensor_parallel_size says otherwise), and how many GPUs are visible."""
    from ..hardware import detect
    from ..placement import plan_for
    from ..placement.vllm import layout, layout_text

    hardware = detect()
    if not hardware.gpus or not hasattr(model_cfg, "placement"):
        return {"tensor_parallel_size": model_cfg.vllm.tensor_parallel_size or 1,
                "data_parallel_size": model_cfg.vllm.data_parallel_size or 1}, len(hardware.gpus)
    lay = layout(model_cfg, hardware, plan_for(model_cfg, hardware))
    log.info("%s", layout_text(lay))
    return lay, len(hardware.gpus)


@contextmanager
def checked(engine: OpenAIEngine | ChatEngine) -> Iterator[OpenAIEngine | ChatEngine]:
    """The engine once its server has been asked for the model (refused when it does not serve it); closed after."""
    try:
        engine.check_model()
        yield engine
    finally:
        engine.close()


@contextmanager
def served_engine(model_cfg, source: str, tokenizer, config, stop_at_newline: bool, longest: int, cache: Path,
                  log_name: str, what: str) -> Iterator[OpenAIEngine | ChatEngine]:
    if chat_style(model_cfg):  # messages: no tokenizer, no stop rule
        with checked(ChatEngine(plain_api(model_cfg.api), model_cfg.api.model, api_key(model_cfg.api, what),
                                what)) as engine:
            yield engine
        return
    stop = stop_rule(source, tokenizer, config, stop_at_newline)
    if model_cfg.engine == "openai":
        with checked(OpenAIEngine(plain_api(model_cfg.api), model_cfg.api.model, api_key(model_cfg.api, what),
                                  tokenizer, stop, what)) as engine:
            yield engine
        return
    python = vllm_python(model_cfg.vllm, cache)
    log_path = cache / "engines" / "logs" / f"{log_name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    lay, gpus = server_layout(model_cfg)
    server = VllmServer(python, source, model_cfg.name, str(model_cfg.precision), model_length(longest, config,
                        model_cfg.vllm), model_cfg.vllm, log_path, what, lay, gpus)
    with server as base_url:
        engine = OpenAIEngine(plain_api(model_cfg.api, base_url=base_url, concurrency=max(1, model_cfg.api.concurrency)),
                              model_cfg.name, None, tokenizer, stop, what)
        engine.server = {**server.describe(), "log": str(log_path)}
        with checked(engine):
            yield engine
