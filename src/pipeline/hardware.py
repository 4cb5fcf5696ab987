"""The devices a plan can use: detected on this machine, or declared (for planning elsewhere)."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field

from .errors import PipelineError

GiB = 1 << 30


@dataclass
class Gpu:
    index: int
    name: str
    total_bytes: int
    free_bytes: int | None = None


@dataclass
class Hardware:
    name: str
    gpus: list[Gpu] = field(default_factory=list)
    cpu_bytes: int = 0  # memory the CPU side may use (available RAM on a detected machine)
    source: str = "detected"

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        if not self.gpus:
            return f"{self.name}: no GPU, {self.cpu_bytes / GiB:.1f} GiB RAM available"
        kinds = {}
        for g in self.gpus:
            kinds.setdefault((g.name, g.total_bytes), 0)
            kinds[(g.name, g.total_bytes)] += 1
        gpus = ", ".join(f"{n}x {name} ({total / GiB:.1f} GiB)" for (name, total), n in kinds.items())
        return f"{self.name}: {gpus}"


def available_ram_bytes() -> int:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping), else total RAM."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def detect() -> Hardware:
    """The CUDA GPUs torch can see (CUDA_VISIBLE_DEVICES and SLURM's allocation apply) and available RAM."""
    import torch

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            try:
                free, _ = torch.cuda.mem_get_info(i)
            except RuntimeError:
                free = None
            gpus.append(Gpu(i, props.name, props.total_memory, free))
    return Hardware(name="this machine", gpus=gpus, cpu_bytes=available_ram_bytes(), source="detected")


UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_bytes(value: str | int | float, what: str = "memory size") -> int:
    """'40GiB' -> 40*2**30, '40GB' -> 40*10**9, '512MiB', or a plain number of bytes."""
    if isinstance(value, (int, float)):
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B|B)?\s*", str(value), flags=re.IGNORECASE)
    if not m:
        raise PipelineError(
            f"{what}={value!r} is not a memory size: write a number with a unit, e.g. 40GiB (= 40 x 2^30 bytes), "
            "40GB (= 40 x 10^9 bytes), 512MiB, or a plain number of bytes."
        )
    return int(float(m.group(1)) * UNITS[(m.group(2) or "").lower()])
