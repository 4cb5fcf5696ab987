"""`python -m pipeline.bench engines [--n 252] [--modes logprob,generate]`: the judge stage on each engine, side by
side in one run, on the same answers (the embedded generator's, made first with the hf engine).

For each judge mode, whole `python -m pipeline stage=judge` commands, one after another on one run:
  hf      the model loaded in the stage's process (fp32 on a CPU)
  openai  through a vLLM server started beforehand (its start is timed apart, as a lab's server is already up)
  vllm    the stage starts vLLM's server itself, judges and stops it (the whole command includes the start)
Each line gives the whole command, the judging phase the stage timed itself (its manifest), answers/s of that phase,
the ratio to hf, and how far the verdicts and P(correct) are from hf's. The server runs in the hf engine's dtype on
this machine (`precision=auto`), so the numbers are comparable; vLLM lives in its own environment (`make vllm`):
without it this prints one line saying it skipped, and why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .errors import PipelineError


def stage(runs: Path, *args: str) -> float:
    """Seconds of one whole `python -m pipeline` command (it must succeed)."""
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pipeline", f"runs_dir={runs}", "run_id=bench", "progress=false",
                          *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}): {out.stderr[-1500:]}")
    return time.perf_counter() - t


def judged(runs: Path, name: str) -> tuple[dict, dict]:
    folder = runs / "bench" / "judge" / name
    rows = {}
    for line in (folder / "verdicts.jsonl").read_text().splitlines():
        r = json.loads(line)
        rows[r["id"]] = r
    return rows, json.loads((folder / "manifest.json").read_text())


def against(rows: dict, hf: dict, mode: str) -> str:
    same = sum(rows[k]["verdict"] == hf[k]["verdict"] for k in hf) / len(hf)
    if mode == "logprob":
        worst = max(abs((rows[k]["p_correct"] or 0) - (hf[k]["p_correct"] or 0)) for k in hf)
        return f"verdicts {same:.1%} as hf's, P(correct) within {worst:.2g}"
    replies = sum(rows[k]["reply"] == hf[k]["reply"] for k in hf) / len(hf)
    return f"verdicts {same:.1%} as hf's, replies {replies:.1%} identical"


def bench_engines(n: int, modes: list[str], cfg) -> dict:
    from .engines.settings import VllmConfig
    from .engines.vllm import VllmServer, vllm_python
    from .hardware import detect
    from .models import cache_root, model_folder

    try:
        python = vllm_python(cfg.judge.vllm, cache_root(cfg.cache_dir))
    except PipelineError as e:
        print(f"benchmark engines: skipped: {e}")
        return {}
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        runs = Path(tmp)
        gen_s = stage(runs, "stage=generate", f"dataset.limit={n}")
        print(f"benchmark: the judge stage on hf, openai (a vLLM server) and vllm (the stage's own server), "
              f"{n} answers of the embedded generator (made in {gen_s:.0f} s), {os.cpu_count()} CPUs")
        folder = model_folder(cfg.judge.model, cache_root(cfg.cache_dir))
        server = VllmServer(python, str(folder), cfg.judge.name, "auto", 2048, VllmConfig(start_timeout_s=1800),
                            runs / "server.log", "benchmark", gpus=len(detect().gpus))  # auto: as the hf engine
        t = time.perf_counter()
        with server as base_url:
            start_s = time.perf_counter() - t
            for mode in modes:
                for engine, extra in (("hf", []), ("openai", ["judge.engine=openai", f"judge.api.base_url={base_url}"])):
                    whole = stage(runs, "stage=judge", f"judge.mode={mode}", f"judge.name={engine}-{mode}", *extra)
                    results[(mode, engine)] = (whole, *judged(runs, f"{engine}-{mode}"))
        print(f"the openai engine's server started in {start_s:.0f} s (not in its figures below)")
        for mode in modes:
            whole = stage(runs, "stage=judge", f"judge.mode={mode}", f"judge.name=vllm-{mode}", "judge.engine=vllm",
                          "judge.vllm.start_timeout_s=1800")
            results[(mode, "vllm")] = (whole, *judged(runs, f"vllm-{mode}"))
    print(f"{'mode':9} {'engine':7} {'command s':>9} {'judging s':>9} {'answers/s':>9} {'vs hf':>6}  agreement")
    for mode in modes:
        hf_rows, hf_manifest = results[(mode, "hf")][1:]
        hf_rate = hf_manifest["timings"]["answers_per_s"]
        for engine in ("hf", "openai", "vllm"):
            whole, rows, manifest = results[(mode, engine)]
            t = manifest["timings"]
            print(f"{mode:9} {engine:7} {whole:9.1f} {t['judge_s']:9.1f} {t['answers_per_s']:9.2f} "
                  f"{t['answers_per_s'] / hf_rate:5.2f}x  {against(rows, hf_rows, mode) if engine != 'hf' else ''}")
    return results
