"""The check's workers: `python3 scripts/gpu_check.py _worker WHAT --params JSON --result FILE` runs one of them in
its own process (under the step's time limit, with the kit's site and the pipeline on PYTHONPATH) and writes what it
returns as JSON to FILE."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from .baselines import w_baselines
from .models import w_build

DISTRIBUTIONS = [("torch", "torch"), ("transformers", "transformers"), ("accelerate", "accelerate"),
                 ("bitsandbytes", "bitsandbytes"), ("hydra-core", "hydra"), ("omegaconf", "omegaconf"),
                 ("datasets", "datasets"), ("tokenizers", "tokenizers"), ("safetensors", "safetensors"),
                 ("huggingface_hub", "huggingface_hub"), ("numpy", "numpy"), ("pandas", "pandas"),
                 ("pyarrow", "pyarrow"), ("fsspec", "fsspec"), ("matplotlib", "matplotlib"),
                 ("regex", "regex"), ("pipeline", "pipeline")]
STAGE_MODULES = ("pipeline.judge", "pipeline.generate", "pipeline.doctor", "pipeline.placement", "pipeline.data")


def imports(dry: bool, out: dict) -> None:
    """What imports (None) or why not, each distribution's version and where it came from (the kit's site?)."""
    site = os.environ.get("PYTHONPATH", "").split(os.pathsep)[0]
    for dist, module in DISTRIBUTIONS:
        try:
            mod = importlib.import_module(module)
            where = str(Path(getattr(mod, "__file__", "") or "").resolve())
            out["versions"][dist] = {"version": getattr(mod, "__version__", None), "from": where,
                                     "from_kit": bool(site) and not dry and where.startswith(site)}
            out["imports"][dist] = None
        except Exception as e:  # what fails to import is the finding
            out["imports"][dist] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    for module in STAGE_MODULES:
        try:
            importlib.import_module(module)
            out["imports"][module] = None
        except Exception as e:
            out["imports"][module] = f"{type(e).__name__}: {e}"[:300]
    try:
        from dataclasses import fields

        from pipeline.config import PlacementConfig

        out["placement_keys"] = [f.name for f in fields(PlacementConfig)]
    except Exception:  # noqa: BLE001 - the imports above already said what is wrong
        out["placement_keys"] = []


def gpus(out: dict) -> None:
    """CUDA as torch sees it, each GPU, and the driver's version (nvidia-smi)."""
    import torch

    out["versions"]["cuda"] = torch.version.cuda
    out["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        out["gpus"] = [{"index": i, "name": torch.cuda.get_device_properties(i).name,
                        "total_bytes": torch.cuda.get_device_properties(i).total_memory,
                        "capability": ".".join(map(str, torch.cuda.get_device_capability(i)))}
                       for i in range(torch.cuda.device_count())]
        out["bf16_supported"] = torch.cuda.is_bf16_supported()
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        out["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        out["driver"] = None


def w_preflight(params: dict) -> dict:
    out: dict = {"imports": {}, "versions": {"python": {"version": platform.python_version(),
                                                        "from": sys.executable}}}
    imports(bool(params.get("dry")), out)
    gpus(out)
    out["cpu_count"] = os.cpu_count()
    return out


WORKERS = {"preflight": w_preflight, "build": w_build, "baselines": w_baselines}


def worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check.py _worker")
    parser.add_argument("what", choices=sorted(WORKERS))
    parser.add_argument("--params", required=True)
    parser.add_argument("--result", required=True)
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    result = WORKERS[args.what](json.loads(args.params))
    Path(args.result).write_text(json.dumps(result, default=str))
    return 0
