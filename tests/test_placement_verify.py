"""verify_loaded on tiny random Llama models saved to disk and loaded for real (fp32, bf16, int8, nf4 on CPU):
what the loaded model must be for each plan, and that every kind of difference is caught and named."""

from dataclasses import replace

import pytest
import torch
from conftest import make_cfg

from pipeline.errors import PipelineError
from pipeline.models import Precision, load_planned
from pipeline.placement import single_device, verify_loaded
from pipeline.placement.verify import left_unquantised, module_problems, named_by, normal_device

BF16 = Precision("bf16", torch.bfloat16)
FP32 = Precision("fp32", torch.float32)
INT8 = Precision("int8", torch.bfloat16)
NF4 = Precision("nf4", torch.bfloat16, double_quant=True)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny Llama with its own lm_head (untied), so bitsandbytes has an output layer to leave out."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, tie_word_embeddings=False)
    folder = tmp_path_factory.mktemp("tiny") / "llama"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def tiny_plan(tmp_path, folder, precision):
    return single_device(make_cfg(tmp_path).judge, precision, "cpu", str(folder))


def test_device_spellings_and_module_lists():
    assert [normal_device(d) for d in (0, "cuda", "cuda:1", torch.device("cuda", 2), "mps:0", "cpu", "disk")] == \
        ["cuda:0", "cuda:0", "cuda:1", "cuda:2", "mps", "cpu", "disk"]
    assert named_by("lm_head", "lm_head") and named_by("model.layers.1.mlp", "model.layers.1")
    assert not named_by("model.layers.11.mlp", "model.layers.1") and named_by("anything", "")


@pytest.mark.parametrize("precision", [FP32, BF16])
def test_unquantised_loads_match_their_plan(tmp_path, tiny_dir, precision):
    plan = tiny_plan(tmp_path, tiny_dir, precision)
    model = load_planned(plan)
    assert verify_loaded(model, plan) == {"cpu": sum(p.numel() for p in model.parameters())}
    other = BF16 if precision == FP32 else FP32
    with pytest.raises(PipelineError, match=f"model.embed_tokens.weight in {str(precision.dtype)[6:]}, planned "
                                            f"{str(other.dtype)[6:]}"):
        verify_loaded(model, replace(plan, precision=other))
    with pytest.raises(PipelineError, match=r"q_proj is Linear, planned bitsandbytes Linear4bit \(nf4\)"):
        verify_loaded(model, replace(plan, precision=replace(NF4, dtype=precision.dtype)))
    with pytest.raises(PipelineError, match="lm_head.weight on cpu, planned cuda:1"):
        verify_loaded(model, replace(plan, device_map={"lm_head": 1, "": "cpu"}))
    model.model.layers[1].input_layernorm.weight.data = model.model.layers[1].input_layernorm.weight.data.half()
    with pytest.raises(PipelineError, match=f"model.layers.1.input_layernorm.weight in float16, planned "
                                            f"{str(precision.dtype)[6:]}"):
        verify_loaded(model, plan)


@pytest.mark.parametrize("precision", [INT8, NF4])
def test_quantised_loads_leave_out_lm_head_and_keep_norms_in_the_plan_dtype(tmp_path, tiny_dir, precision):
    plan = tiny_plan(tmp_path, tiny_dir, precision)
    model = load_planned(plan)
    assert left_unquantised(model, plan) == ["lm_head"]  # output embeddings, and the module of the last parameter
    assert type(model.lm_head) is torch.nn.Linear and model.lm_head.weight.dtype == torch.bfloat16
    assert model.model.norm.weight.dtype == torch.bfloat16
    assert set(verify_loaded(model, plan)) == {"cpu"}
    with pytest.raises(PipelineError, match="planned an unquantised Linear"):
        verify_loaded(model, replace(plan, precision=BF16))
    model.lm_head.weight.data = model.lm_head.weight.data.float()
    with pytest.raises(PipelineError, match="lm_head.weight in float32, planned bfloat16"):
        verify_loaded(model, plan)


def test_int8_next_to_other_devices_expects_the_cpu_modules_unquantised(tmp_path, tiny_dir):
    """A map that mixes cpu with a GPU (no GPU here: the expectation alone): the cpu modules stay torch Linear."""
    plan = tiny_plan(tmp_path, tiny_dir, INT8)
    model = load_planned(plan)  # everything on the CPU, so everything quantised
    mixed = replace(plan, device_map={"model.layers.1": "cpu", "": 0})
    assert left_unquantised(model, mixed) == ["lm_head", "model.layers.1"]
    problems = module_problems(model, mixed)
    layer1 = [n for n, m in model.named_modules() if n.startswith("model.layers.1.") and hasattr(m, "weight")
              and type(m).__name__ == "Linear8bitLt"]
    assert len(layer1) == 7
    assert problems == [f"{n} is bitsandbytes Linear8bitLt (int8), planned an unquantised Linear" for n in layer1]
