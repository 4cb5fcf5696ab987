"""The devices a plan can use: detected on this machine (hardware=auto), or declared in conf/hardware/.

Detection sees what torch sees: CUDA GPUs (NVIDIA, or AMD through ROCm, which torch exposes through the same
torch.cuda API) after CUDA_VISIBLE_DEVICES / HIP_VISIBLE_DEVICES, which SLURM sets to the job's allocation, and
Apple's MPS device. It also records what SLURM says was allocated, so a mismatch can be reported.
"""

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
    backend: str = "cuda"  # cuda | rocm | mps | none
    notes: list[str] = field(default_factory=list)  # what detection found worth saying

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def gpu_kind(self) -> tuple[str, int] | None:
        """(name, memory) of the first GPU: the kind recommendations count in."""
        return (self.gpus[0].name, self.gpus[0].total_bytes) if self.gpus else None

    def describe(self) -> str:
        if not self.gpus:
            return f"{self.name}: no GPU, {self.cpu_bytes / GiB:.1f} GiB RAM available"
        kinds: dict[tuple[str, int], int] = {}
        for g in self.gpus:
            kinds[(g.name, g.total_bytes)] = kinds.get((g.name, g.total_bytes), 0) + 1
        gpus = ", ".join(f"{n}x {name} ({total / GiB:.1f} GiB)" for (name, total), n in kinds.items())
        return f"{self.name}: {gpus}"

    def first(self, n: int | None) -> "Hardware":
        """The same machine restricted to its first `n` GPUs (placement.gpus)."""
        if n is None:
            return self
        if n < 1 or n > len(self.gpus):
            raise PipelineError(f"judge.placement.gpus={n}, but {self.describe()} ({len(self.gpus)} GPU(s)). "
                                "Ask for at most that many, or run where more GPUs are allocated.")
        return Hardware(self.name, self.gpus[:n], self.cpu_bytes, self.source, self.backend, list(self.notes))


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


def allocator_setting() -> str:
    """The CUDA caching allocator's settings this process runs with ("default" when none are set)."""
    return os.environ.get("PYTORCH_ALLOC_CONF") or os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or "default"


def expandable_segments() -> bool:
    """Whether CUDA memory comes in expandable segments, which the plan's reserves assume (see __main__)."""
    return "expandable_segments:true" in allocator_setting().replace(" ", "").lower()


def slurm_gpu_allocation() -> dict[str, str]:
    keys = ("SLURM_JOB_ID", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE", "SLURM_GPUS",
            "SLURM_GPUS_PER_TASK")
    return {k: os.environ[k] for k in keys if k in os.environ}


ALLOW_CPU_TORCH = "PIPELINE_ALLOW_CPU_TORCH"  # set (to 1) where GPU jobs may run a CPU torch: a test cluster's fake GPUs


def job_gpus() -> str | None:
    """The GPUs SLURM gave this job ("SLURM_JOB_GPUS=0,1"), or None outside a job or without GPUs."""
    if not os.environ.get("SLURM_JOB_ID"):
        return None
    for key in ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES"):
        value = os.environ.get(key, "")
        if value and value != "NoDevFiles":
            return f"{key}={value}"
    return None


def check_job_torch() -> None:
    """A SLURM job given GPUs must not run on the CPU because its environment holds the CPU build of torch (`make
    setup` on a login node without a GPU installs that one): one line, before anything is read or loaded."""
    given = job_gpus()
    if not given or os.environ.get(ALLOW_CPU_TORCH):
        return
    import torch

    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        raise PipelineError(
            f"this SLURM job was given GPUs ({given}) but its torch {torch.__version__} is a CPU build and would run "
            "on the CPU: install the CUDA build into the jobs' environment (`TORCH=cuda make setup`), or point "
            f"slurm.python at one that has it, and submit again ({ALLOW_CPU_TORCH}=1 runs it on the CPU anyway).")


def detect() -> Hardware:
    """This machine's accelerators as torch sees them, and its available RAM."""
    import torch

    notes = []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        notes.append(f"CUDA_VISIBLE_DEVICES={visible!r}")
    slurm = slurm_gpu_allocation()
    if slurm:
        notes.append("SLURM allocation: " + ", ".join(f"{k}={v}" for k, v in slurm.items()))
    gpus: list[Gpu] = []
    backend = "none"
    if torch.cuda.is_available():
        backend = "rocm" if getattr(torch.version, "hip", None) else "cuda"
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            try:
                free, _ = torch.cuda.mem_get_info(i)
            except RuntimeError:
                free = None
            gpus.append(Gpu(i, props.name, props.total_memory, free))
        on_node = slurm.get("SLURM_GPUS_ON_NODE")
        if on_node and on_node.isdigit() and int(on_node) != len(gpus):
            notes.append(f"torch sees {len(gpus)} GPU(s) but SLURM allocated {on_node} on this node")
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        backend = "mps"
        total = int(torch.mps.recommended_max_memory()) if hasattr(torch.mps, "recommended_max_memory") else 0
        gpus.append(Gpu(0, "Apple MPS", total, None))
        notes.append("Apple MPS: one device sharing the system memory; bitsandbytes int8/nf4 need CUDA")
    elif torch.version.cuda is None and not getattr(torch.version, "hip", None):
        notes.append(f"torch {torch.__version__} is a CPU-only build")
    else:
        notes.append("torch was built with CUDA but finds no GPU (driver missing, or none visible)")
    return Hardware(name="this machine", gpus=gpus, cpu_bytes=available_ram_bytes(), source="detected",
                    backend=backend, notes=notes)


def from_profile(profile) -> Hardware:
    """A declared hardware profile (a conf/hardware/*.yaml node) as Hardware."""
    gpus: list[Gpu] = []
    for spec in profile.gpus:
        if spec.count < 1:
            raise PipelineError(f"hardware {profile.name}: gpu count {spec.count} must be at least 1.")
        size = parse_bytes(spec.memory, f"hardware.gpus[{spec.name}].memory")
        for _ in range(spec.count):
            gpus.append(Gpu(len(gpus), spec.name, size))
    cpu = parse_bytes(profile.cpu_memory, "hardware.cpu_memory") if profile.cpu_memory else 0
    return Hardware(name=profile.name, gpus=gpus, cpu_bytes=cpu, source="declared",
                    backend="cuda" if gpus else "none")


def for_profile(profile) -> Hardware:
    """hardware=auto detects this machine; any other profile is declared."""
    return detect() if profile.detect else from_profile(profile)


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
