"""The GPU proof kit and check (scripts/gpu_kit.py, scripts/gpu_check.py with its parts in scripts/gpucheck/) and the
GPU memory every manifest records.

The check itself runs on a GPU machine only now and then; here its dry mode runs every step end to end on the CPU
(tiny shapes, the same stages and code paths), the figures it computes from a GPU stage's manifest are checked on a
manifest as a GPU run writes it, and the kit's size guard and its trimming of the real bitsandbytes wheel are
checked for real.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20
GiB = 1 << 30


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


gpu_kit = load_script("gpu_kit")
gpu_check = load_script("gpu_check")  # puts scripts/ on sys.path: its package imports as `gpucheck`

from gpucheck import figures, tables  # noqa: E402


def script(name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(REPO / "scripts" / f"{name}.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------ the manifest

def test_manifest_records_no_gpu_memory_without_cuda():
    from pipeline.manifest import environment_manifest, gpu_memory

    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert gpu_memory() is None
    assert environment_manifest()["gpu_memory"] is None


def test_manifest_records_each_devices_peak_memory(monkeypatch):
    import torch

    from pipeline import manifest

    props = [SimpleNamespace(name="NVIDIA H200", total_memory=150_000_000_000),
             SimpleNamespace(name="NVIDIA H200", total_memory=150_000_000_001)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props[i])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda i: 1000 + i)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda i: 2000 + i)
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    assert manifest.gpu_memory() == [
        {"device": "cuda:0", "name": "NVIDIA H200", "total_bytes": 150_000_000_000, "max_memory_allocated": 1000,
         "max_memory_reserved": 2000, "allocator": "expandable_segments:True"},
        {"device": "cuda:1", "name": "NVIDIA H200", "total_bytes": 150_000_000_001, "max_memory_allocated": 1001,
         "max_memory_reserved": 2001, "allocator": "expandable_segments:True"},
    ]

    def broken(i):
        raise RuntimeError("CUDA driver gone")

    monkeypatch.setattr(torch.cuda, "max_memory_reserved", broken)
    assert manifest.gpu_memory() is None  # never fails the stage that writes the manifest


@pytest.mark.parametrize("user, expected", [
    ({}, ("expandable_segments:True", "expandable_segments:True")),
    ({"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"}, (None, "max_split_size_mb:128")),
    ({"PYTORCH_ALLOC_CONF": "backend:cudaMallocAsync"}, ("backend:cudaMallocAsync", None)),
])
def test_stages_use_expandable_segments_unless_the_user_chose_an_allocator(user, expected):
    """The GPU check measured an int8 judge reserving 1.75x what it allocated with the default allocator; every
    stage process sets expandable segments before torch is imported, and leaves a user's own setting alone."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")}
    code = ("import os, sys; import pipeline.__main__; "
            "print(os.environ.get('PYTORCH_ALLOC_CONF'), os.environ.get('PYTORCH_CUDA_ALLOC_CONF'), sep='|')")
    out = subprocess.run([sys.executable, "-c", code], env={**env, **user}, capture_output=True, text=True, check=True)
    got = tuple(None if v == "None" else v for v in out.stdout.strip().split("|"))
    assert got == expected


@pytest.mark.parametrize("alloc, cuda_alloc, setting, expandable", [
    (None, None, "default", False),
    ("expandable_segments:True", None, "expandable_segments:True", True),
    (None, "max_split_size_mb:128, expandable_segments: true", "max_split_size_mb:128, expandable_segments: true", True),
    ("expandable_segments:False", "expandable_segments:True", "expandable_segments:False", False),  # torch reads the first
    ("backend:cudaMallocAsync", None, "backend:cudaMallocAsync", False),
])
def test_the_allocator_setting_the_judge_warns_about(monkeypatch, alloc, cuda_alloc, setting, expandable):
    """A judge on a GPU warns when CUDA memory is not in expandable segments: the second GPU check measured the int8
    judges past their plans without them (18.9 GiB reserved for 9.9 allocated) and within them with."""
    from pipeline import hardware

    for name, value in (("PYTORCH_ALLOC_CONF", alloc), ("PYTORCH_CUDA_ALLOC_CONF", cuda_alloc)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert hardware.allocator_setting() == setting
    assert hardware.expandable_segments() is expandable


# ---------------------------------------------------------------------------- figures from a GPU judge stage

def gpu_stage(max_allocated: int, max_reserved: int):
    """plan.json and manifest.json as a judge stage on one GPU writes them."""
    reserves = {"quant_state": 0, "kv_cache": 1 * GiB, "activations": 2 * GiB, "logits": 0, "qmm_workspace": 0,
                "cuda_context": GiB // 2}
    row = {"device": "cuda:0", "label": "NVIDIA H200", "modules": ["model"], "summary": "whole model",
           "params": 8_030_261_248, "weight_bytes": 15 * GiB, "reserves": reserves, "margin_bytes": 7 * GiB,
           "budget_bytes": None, "capacity_bytes": 140 * GiB, "total_bytes": 15 * GiB + 3 * GiB + GiB // 2 + 7 * GiB}
    plan = {"rows": [row], "workload": {"batch_size": 32, "seq_len": 174}}
    manifest = {"records": 252, "timings": {"load_s": 4.5, "judge_s": 2.0, "total_s": 9.0, "answers_per_s": 126.0},
                "judge": {"precision": "bfloat16"},
                "placement": {"memory_after": {"cuda:0": {"allocated_bytes": 15 * GiB + 10, "reserved_bytes": 16 * GiB}}},
                "gpu_memory": [{"device": "cuda:0", "name": "NVIDIA H200", "total_bytes": 140 * GiB,
                                "max_memory_allocated": max_allocated, "max_memory_reserved": max_reserved}]}
    return plan, manifest


def test_judge_figures_compare_the_plan_with_what_the_stage_measured():
    plan, manifest = gpu_stage(max_allocated=17 * GiB, max_reserved=18 * GiB)
    result = figures.judge_figures(manifest, plan, plan)
    [d] = result["devices"]
    assert d["planned_without_margin"] == 15 * GiB + 3 * GiB + GiB // 2
    assert d["planned_allocations"] == 18 * GiB  # what torch allocates: the CUDA context is not among it
    assert d["allocated_within_plan"] and d["reserved_within_plan"]
    assert d["headroom_bytes"] == GiB // 2
    assert d["allocated_after_load"] == 15 * GiB + 10 and d["weights_and_qstate_planned"] == 15 * GiB
    assert d["plan_stage_matches"] is True
    assert (result["load_s"], result["answers_per_s"], result["seq_len"], result["batch_size"]) == (4.5, 126.0, 174, 32)
    assert figures.plan_held([result]) is True

    plan, manifest = gpu_stage(max_allocated=18 * GiB + 1, max_reserved=18 * GiB + 1)
    over = figures.judge_figures(manifest, plan, None)
    assert over["devices"][0]["allocated_within_plan"] is False
    assert figures.plan_held([result, over]) is False
    results = {"mode": "gpu", "versions": {}, "steps": {"judge:8b-bf16-logprob": {"ok": True, "seconds": 9.0}},
               "passed": ["judge:8b-bf16-logprob"], "judges": [
                   {"judge": "8b-bf16-logprob", "precision": "bf16", "mode": "logprob", **over}]}
    table = tables.markdown(results)
    assert "| 8b-bf16-logprob | bf16 | logprob | 32 x 174 | cuda:0 | 25.50 | 18.50 | 15.00 | 15.00 | 18.00 | 18.00 | **NO** |" in table
    assert figures.plan_held([{"devices": [{"device": "cpu"}]}]) is None  # nothing measured on a CPU


# --------------------------------------------------------------------------------------------- the kit

def test_the_device_call_carries_the_kit_and_runs_the_check():
    call = gpu_kit.device_call(REPO / "gpu-kit")
    assert call["carry"] == ["gpu-kit"]
    assert call["command"] == "PYTHONUNBUFFERED=1 timeout 480 python3 scripts/gpu_check.py --out $OUT"
    assert call["timeout_s"] > 480


def test_kit_size_guard(tmp_path):
    small = tmp_path / "small"
    (small / "wheels").mkdir(parents=True)
    (small / "wheels" / "x.whl").write_bytes(b"0" * 1000)
    out = script("gpu_kit", "--kit", str(small), "--check-only")
    assert out.returncode == 0, out.stderr
    assert "MiB (limit 60 MiB)" in out.stdout
    assert f'carry: ["{small}"]' in out.stdout
    assert "command: PYTHONUNBUFFERED=1 timeout 480 python3 scripts/gpu_check.py" in out.stdout
    assert "outside the repository" in out.stdout  # only a kit inside the checkout travels

    big = tmp_path / "big"
    big.mkdir()
    with open(big / "blob", "wb") as f:  # sparse: 61 MiB by its size, nothing written
        f.truncate(61 * MiB)
    out = script("gpu_kit", "--kit", str(big), "--check-only")
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error:") and "61.0 MiB" in errors[0] and "60 MiB" in errors[0]
    assert "carry" not in out.stdout


def test_kit_and_working_tree_must_fit_what_travels(tmp_path, monkeypatch, capsys):
    kit = tmp_path / "kit"
    kit.mkdir()
    with open(kit / "blob", "wb") as f:
        f.truncate(59 * MiB)
    monkeypatch.setattr(gpu_kit, "tree_bytes", lambda repo=None: 6 * MiB)
    assert gpu_kit.report(kit, None) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "over the 64 MiB" in err[0]
    monkeypatch.setattr(gpu_kit, "tree_bytes", lambda repo=None: 1 * MiB)
    assert gpu_kit.report(kit, None) == 0


@pytest.fixture(scope="module")
def bitsandbytes_wheel() -> Path:
    """The pinned bitsandbytes wheel for the GPU machine, downloaded once into ~/.cache/pipeline/wheels."""
    version = gpu_kit.pins()["bitsandbytes"]
    return gpu_kit.download("bitsandbytes", version, gpu_kit.wheel_cache(None))


@pytest.mark.slow
def test_bitsandbytes_keeps_only_its_cuda_13_library(bitsandbytes_wheel, tmp_path):
    info = gpu_kit.trim_bitsandbytes(bitsandbytes_wheel, tmp_path / "wheels")
    trimmed = tmp_path / "wheels" / bitsandbytes_wheel.name
    assert info["kept"] == "libbitsandbytes_cuda130.so"
    with zipfile.ZipFile(bitsandbytes_wheel) as z:
        before = set(z.namelist())
    with zipfile.ZipFile(trimmed) as z:
        after = set(z.namelist())
        record = next(n for n in after if n.endswith(".dist-info/RECORD"))
        listed = {line.split(",", 1)[0] for line in z.read(record).decode().splitlines() if line.strip()}
    libraries = {Path(n).name for n in after if gpu_kit.BNB_LIBRARY.fullmatch(n)}
    assert libraries == {"libbitsandbytes_cuda130.so"}
    dropped = {Path(n).name for n in before - after}
    assert dropped == set(info["dropped"]) and {"libbitsandbytes_cpu.so", "libbitsandbytes_cuda128.so",
                                                 "libbitsandbytes_cuda132.so"} <= dropped
    assert all(gpu_kit.BNB_LIBRARY.fullmatch(n) for n in before - after)  # only libraries left out
    assert listed == after  # RECORD lists exactly what the wheel holds
    assert info["bytes_after"] < 8 * MiB < info["bytes_before"]
    target = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                                "--no-compile", "--target", str(target), str(trimmed)], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    assert sorted(p.name for p in (target / "bitsandbytes").glob("libbitsandbytes_*")) == ["libbitsandbytes_cuda130.so"]
    with pytest.raises(gpu_kit.KitError, match="no libbitsandbytes_cuda999.so"):
        gpu_kit.trim_bitsandbytes(bitsandbytes_wheel, tmp_path / "other", cuda="999")


@pytest.mark.slow
@pytest.mark.integration
def test_kit_build_without_a_run(tmp_path, model_dir):
    kit = tmp_path / "kit"
    out = script("gpu_kit", "--kit", str(kit), "--no-run", timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads((kit / "kit.json").read_text())
    names = {gpu_kit.normal(w["name"]) for w in info["wheels"]}
    assert {"hydra-core", "omegaconf", "antlr4-python3-runtime", "datasets", "transformers", "bitsandbytes"} <= names
    pinned = gpu_kit.pins()
    assert all(w["version"] == pinned[gpu_kit.normal(w["name"])] for w in info["wheels"])
    assert len(list((kit / "wheels").glob("*.whl"))) == len(info["wheels"])
    assert (kit / "tokenizer" / "tokenizer.json").is_file()
    assert sorted(p.name for p in (kit / "model_configs").iterdir()) == sorted(gpu_kit.MODEL_CONFIGS)
    assert info["run"] is None and not (kit / "runs").exists()
    assert gpu_kit.folder_bytes(kit) < 60 * MiB
    assert "MiB (limit 60 MiB)" in out.stdout and "bitsandbytes: kept libbitsandbytes_cuda130.so" in out.stdout
    assert f'carry: ["{kit}"]' in out.stdout and "scripts/gpu_check.py --kit" in out.stdout


# ------------------------------------------------------------------------------------------ the dry check

DRY_STEPS = ["preflight", "doctor", "run", "models", "plans", "judge:8b-bf16-logprob", "judge:8b-int8-logprob",
             "judge:8b-nf4-logprob", "generate", "judge:8b-fp32-generate"]


def test_the_check_keeps_to_the_size_rules():
    """No module of the check over 400 lines, no function over 60."""
    files = [REPO / "scripts" / "gpu_check.py", *sorted((REPO / "scripts" / "gpucheck").glob("*.py"))]
    assert len(files) > 5
    for f in files:
        text = f.read_text()
        assert len(text.splitlines()) <= 400, f
        long = [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(text))
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60]
        assert long == [], f


def test_the_gpu_steps_and_the_lean_dry_ones(tmp_path):
    gpu = gpu_check.parse(["--out", str(tmp_path / "out"), "--scratch", str(tmp_path / "s")])
    assert [m[0] for m in gpu.models] == ["llama32-1b", "llama31-8b", "llama31-70b-4l"] and gpu.answers is None
    assert sorted(gpu.combos) == sorted([(m, p, "logprob") for m in ("llama31-8b", "llama31-70b-4l")
                                         for p in ("bf16", "int8", "nf4")]
                                        + [(m, "bf16", "generate") for m in ("llama31-8b", "llama31-70b-4l")])
    assert gpu_check.planned(gpu) == gpu.combos and gpu.budget == 450 and not gpu.dry
    dry = gpu_check.parse(["--dry", "--out", str(tmp_path / "out"), "--scratch", str(tmp_path / "s")])
    assert [m[0] for m in dry.models] == ["llama32-1b", "llama31-8b"]
    assert {c[0] for c in dry.combos} == {"llama31-8b"}  # one tiny judge model: the 70B presets run the same code
    assert sorted(dry.combos) == [("llama31-8b", "bf16", "logprob"), ("llama31-8b", "fp32", "generate"),
                                  ("llama31-8b", "int8", "logprob"), ("llama31-8b", "nf4", "logprob")]
    assert gpu_check.planned(dry) == [("llama31-8b", "nf4", "logprob")]
    assert dry.answers == 40 > 32  # more than one batch of the 8B preset (conf/judge/llama8b.yaml: batch_size 32)
    assert "batch_size: 32" in (REPO / "conf" / "judge" / "llama8b.yaml").read_text()


def check_dry_results(out_dir: Path) -> None:
    """What the dry check (`make gpu-check DRY=1`, run by tests/test_readme.py::test_make_gpu_check_dry) must have
    written: every step passed, with the figures each step promises."""
    r = json.loads((out_dir / "gpu-check.json").read_text())
    assert r["schema"] == "gpu-check/1" and r["mode"] == "dry"
    assert r["passed"] == DRY_STEPS and r["failed"] == [] and r["skipped"] == [] and r["all_passed"] is True
    assert all(r["steps"][s]["ok"] for s in DRY_STEPS)
    for key in ("torch", "transformers", "bitsandbytes", "hydra-core", "datasets"):
        assert r["versions"][key]["version"]
    assert {s: b["usable"] for s, b in r["doctor"]["bitsandbytes"].items()} == {"int8": True, "nf4": True}
    assert set(r["models"]) == {"llama32-1b", "llama31-8b"}
    assert all(m["hidden_size"] == 64 and m["vocab_size"] > m["tokenizer"]["own_ids"] for m in r["models"].values())
    assert r["run"]["answers"] > 0 and r["run"]["longest_prompt"] > r["run"]["median_prompt"] > 0  # the kit's run, or 40
    judges = {j["judge"]: j for j in r["judges"]}
    assert sorted(judges) == sorted(s.removeprefix("judge:") for s in DRY_STEPS if s.startswith("judge:"))
    for j in judges.values():
        assert j["ok"] and j["answers"] == r["run"]["answers"] and j["answers_per_s"] > 0 and j["load_s"] is not None
        [d] = j["devices"]
        assert d["device"] == "cpu" and d["total_bytes"] > d["planned_without_margin"] >= d["weight_bytes"] > 0
        expected = r["run"]["longest_prompt"] + (r["settings"]["reply_tokens"] if j["mode"] == "generate" else 0)
        assert j["seq_len"] == expected  # planned for the real prompts' length
    assert judges["8b-nf4-logprob"]["devices"][0]["plan_stage_matches"] is True  # stage=plan planned as the judge did
    assert all("plan_stage_matches" not in j["devices"][0] for n, j in judges.items() if n != "8b-nf4-logprob")
    assert r["plan_held"] is None  # nothing is measured on the CPU
    methods = r["generate"]["methods"]
    assert set(methods) == {"stage=generate (greedy_batch)", "one prompt at a time (model.generate)",
                            "batched model.generate (batch 64)", "greedy_batch in-process (the stage's path)"}
    for name, m in methods.items():
        assert m["prompts"] > 0 and m["tokens_per_s"] > 0, name
        made = m["prompts"] * r["generate"]["new_tokens"]
        # model.generate is held to the fixed length (min_new_tokens); the stage's decoding stops at EOS as ever
        assert m["tokens"] == made if "model.generate" in name else 0 < m["tokens"] <= made, name

    table = (out_dir / "gpu-check.md").read_text()
    for s in DRY_STEPS:
        assert f"| {s} | ok |" in table
    for heading in ("## stage=doctor: bitsandbytes", "## Models (random weights, tiny shapes: a dry check)",
                    "## stage=judge: planned vs measured memory per device", "## Generate: llama32-1b"):
        assert heading in table
    for name in methods:
        assert f"| {name} | " in table
    assert (out_dir / "gpu-check.log").stat().st_size > 0
