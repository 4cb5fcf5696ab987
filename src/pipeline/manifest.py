"""What a stage records about where and how it ran: versions, git commit, hardware, SLURM context."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from .hardware import allocator_setting

PACKAGES = ("pipeline", "torch", "transformers", "accelerate", "bitsandbytes", "datasets", "pandas",
            "hydra-core", "omegaconf", "tqdm", "safetensors", "gguf", "tokenizers", "numpy")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(where: Path | None = None) -> dict:
    """Commit and dirtiness of the checkout this package runs from (None outside a git checkout)."""
    where = where or Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status), "branch": git("rev-parse", "--abbrev-ref", "HEAD")}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def total_ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def hardware_info() -> dict:
    import torch

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": p.name, "total_bytes": p.total_memory})
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_bytes": total_ram_bytes(),
        "cuda": torch.version.cuda,
        "gpus": gpus,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def slurm_info() -> dict:
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("SLURM_") and k in SLURM_KEYS}


SLURM_KEYS = {
    "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_JOB_NAME",
    "SLURM_JOB_PARTITION", "SLURM_JOB_NODELIST", "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE", "SLURM_CPUS_PER_TASK",
    "SLURM_RESTART_COUNT",
}


def gpu_memory() -> list[dict] | None:
    """Per visible CUDA device: its name, total memory, and the peak memory this process allocated and reserved
    there (bytes, since the process started); None without CUDA. Read when the stage finishes, so the peaks are
    the stage's own: what its plan is checked against. Never fails a stage."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        devices = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devices.append({"device": f"cuda:{i}", "name": p.name, "total_bytes": int(p.total_memory),
                            "max_memory_allocated": int(torch.cuda.max_memory_allocated(i)),
                            "max_memory_reserved": int(torch.cuda.max_memory_reserved(i)),
                            "allocator": allocator_setting()})
        return devices
    except Exception:  # a broken driver or runtime must not cost the stage its manifest
        return None


def environment_manifest() -> dict:
    """The part of every stage manifest that describes the environment."""
    return {
        "versions": package_versions(),
        "git": git_state(),
        "hardware": hardware_info(),
        "gpu_memory": gpu_memory(),
        "slurm": slurm_info(),
        "command": [sys.executable, *sys.argv],
        "finished": time.time(),
        "finished_iso": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
