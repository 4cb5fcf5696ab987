"""A judge whose model is custom code (config.json's auto_map names Python files in its folder): with
judge.trust_remote_code=true it plans and loads, on the real command line; without it, one line says how to opt in.
The model is a tiny random Llama under a model type transformers does not know, with the embedded model's tokenizer:
its verdicts mean nothing, and the tests check only that the stages finish and every parameter is placed as planned."""

import json
import os
import shutil

import pytest

from pipeline.models import COMPLETE_MARKER
from pipeline.rows import GenerationRow

from conftest import SMALL, one_error_line, read_jsonl, run_cli, write_run

CONFIGURATION = '''from transformers import LlamaConfig


class TinyCustomConfig(LlamaConfig):
    model_type = "tiny-custom"
'''
MODELING = '''from transformers import LlamaForCausalLM

from .configuration_tiny_custom import TinyCustomConfig


class TinyCustomForCausalLM(LlamaForCausalLM):
    config_class = TinyCustomConfig
'''


@pytest.fixture(scope="module")
def custom_model(tmp_path_factory, model_dir):
    """A model folder whose config and model classes are its own code: random tiny weights saved by
    save_pretrained as a Llama, then relabelled with a model type only the folder's code defines."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-custom")
    base = json.loads((model_dir / "config.json").read_text())
    config = LlamaConfig(vocab_size=base["vocab_size"], hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                         bos_token_id=base.get("bos_token_id"), eos_token_id=base.get("eos_token_id"),
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    values = json.loads((folder / "config.json").read_text())
    values.update(model_type="tiny-custom", architectures=["TinyCustomForCausalLM"],
                  auto_map={"AutoConfig": "configuration_tiny_custom.TinyCustomConfig",
                            "AutoModelForCausalLM": "modeling_tiny_custom.TinyCustomForCausalLM"})
    (folder / "config.json").write_text(json.dumps(values, indent=2))
    (folder / "configuration_tiny_custom.py").write_text(CONFIGURATION)
    (folder / "modeling_tiny_custom.py").write_text(MODELING)
    for file in model_dir.iterdir():
        if file.name.startswith("tokenizer") or file.name in ("special_tokens_map.json", "chat_template.jinja"):
            shutil.copy(file, folder / file.name)
    assert not (folder / COMPLETE_MARKER).exists()
    return folder


@pytest.fixture
def small_run(tmp_path):
    answers = [GenerationRow.answer(f"q{i}", "What is the capital of France?", ["Paris"], answer)
               for i, answer in enumerate(["Paris", "Lyon", "Paris, France"])]
    write_run(tmp_path / "runs", "rc", answers)
    return tmp_path / "runs"


def custom_judge(custom_model, runs, trust: bool) -> list[str]:
    return [f"runs_dir={runs}", "run_id=rc", "judge.name=tiny-custom", f"judge.model={custom_model}",
            f"judge.trust_remote_code={str(trust).lower()}", *SMALL]


def env_with_modules(tmp_path) -> dict:
    """transformers copies a model's code into HF_MODULES_CACHE before running it: here, the test's folder."""
    return {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}


@pytest.mark.slow
def test_a_custom_code_judge_plans_and_judges_when_trusted(custom_model, small_run, tmp_path):
    env = env_with_modules(tmp_path)
    out = run_cli("stage=plan", *custom_judge(custom_model, small_run, True), cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    saved = json.loads(next((small_run / "plans").glob("tiny-custom--*.json")).read_text())
    assert saved["fits"] and 0 < saved["total_params"] < 1_000_000

    out = run_cli("stage=judge", *custom_judge(custom_model, small_run, True), cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    stage = small_run / "rc/judge/tiny-custom"
    assert sorted(v["id"] for v in read_jsonl(stage / "verdicts.jsonl")) == ["q0", "q1", "q2"]
    plan = json.loads((stage / "plan.json").read_text())
    placed = json.loads((stage / "manifest.json").read_text())["placement"]["params_per_device"]
    assert plan["total_params"] == saved["total_params"] and sum(placed.values()) == plan["total_params"]
    assert set(placed) == set(plan["device_map"].values())  # every parameter on the device the plan gave it


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["plan", "judge"])
def test_a_custom_code_judge_is_refused_in_one_line_unless_trusted(custom_model, small_run, tmp_path, stage):
    out = run_cli(f"stage={stage}", *custom_judge(custom_model, small_run, False), cwd=tmp_path,
                  env=env_with_modules(tmp_path))
    line = one_error_line(out)
    assert str(custom_model) in line and "judge.trust_remote_code=true" in line and "trust" in line, line
    assert not (small_run / "rc/judge/tiny-custom").exists() and not (tmp_path / "modules").exists()
