"""Model configs and meta-device skeletons: what planning reads instead of weights.

A model's transformers config comes from its folder, from the copy shipped in `pipeline/model_configs/` for its
Hub id, or from the Hub / HF cache. `meta_model` builds the skeleton on the meta device and quantises it there as
`from_pretrained` would (bitsandbytes swaps the Linear layers, still without memory). `with_values` copies a
config node with some values changed, for the what-if plans of recommendations.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import PipelineError
from ..models import Precision, refuse_untrusted_code


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
        from ..models import model_config

        return model_config(source, cfg)
    for model_id in (source, getattr(cfg, "hub_id", None)):
        shipped = shipped_config_file(model_id)
        if shipped is not None and cfg.revision is None:
            return config_from_file(shipped)
    if source.startswith("gguf:"):
        raise PipelineError(f"{cfg.name}: planning {source!r} needs its config: convert it first (run any stage with "
                            "this model), or set judge.hub_id to the Hub id it is a copy of.")
    try:
        return AutoConfig.from_pretrained(source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        refuse_untrusted_code(source, cfg, e)
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
META_CACHE_SIZE = 8


def is_model_code(model_config) -> bool:
    """Whether a config's class is the model's own code (named by auto_map in its config.json) rather than
    transformers'. AutoConfig builds such a config only with trust_remote_code=true: its user has opted in."""
    return not type(model_config).__module__.startswith("transformers.")


def meta_model(model_config, precision: Precision, trust_remote_code: bool | None = None):
    """The model skeleton on the meta device, quantised as `from_pretrained` would (no weights, no memory).

    `trust_remote_code` is the model's setting (the plan's identity): with it, a model whose auto_map names its
    own modeling code is built from that code, as the loader will build it. None (what-if plans): trusted when
    the config itself is the model's code (`is_model_code`). Skeletons are cached by (config, precision, trust):
    recommendations plan the same model many times.
    """
    from transformers import AutoModelForCausalLM
    from transformers.quantizers import AutoHfQuantizer

    trust = is_model_code(model_config) if trust_remote_code is None else bool(trust_remote_code)
    key = (model_config.to_json_string(use_diff=False), precision, trust)
    if key not in _META_CACHE:
        with torch.device("meta"):  # keeps tied weights tied, unlike init_empty_weights
            model = AutoModelForCausalLM.from_config(model_config, dtype=precision.dtype, trust_remote_code=trust)
        quantizer = None
        if precision.quantized:
            quantizer = AutoHfQuantizer.from_config(precision.quantization_config(), pre_quantized=False)
            quantizer.preprocess_model(model=model, dtype=precision.dtype, device_map="auto", checkpoint_files=None,
                                       use_kernels=False)
        if len(_META_CACHE) >= META_CACHE_SIZE:
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
