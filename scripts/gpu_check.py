#!/usr/bin/env python3
"""The GPU proof check: measured evidence for what the pipeline promises about GPUs, in one command.

    python3 scripts/gpu_check.py --out DIR            on the GPU machine (the kit built by `make gpu-kit` beside it)
    python3 scripts/gpu_check.py --dry --out DIR      every step on this CPU, with tiny shapes (a test runs this)

It runs the pipeline's own stages, each as `python3 -m pipeline ...` in a subprocess with its own time limit
(runs and models under a scratch folder, the Hub switched off), so that one failing step is recorded, with the end
of its stderr, and the others still run:

  kit        the kit's wheels (hydra-core, omegaconf, antlr4, datasets, transformers at the project's pins,
             bitsandbytes with only its CUDA 13 library) installed into <scratch>/site (GPU only)
  preflight  what imports, and the versions: torch, transformers, bitsandbytes, CUDA, the driver, the GPU
  doctor     stage=doctor: the GPU, bitsandbytes int8 and NF4 layers running on it
  models     random-weight models with real shapes from the shipped configs, saved as safetensors: Llama-3.2-1B
             (generator), Llama-3.1-8B (judge) and Llama-3.1-70B cut to 4 layers (its real widths), with the kit's
             SmolLM2 tokenizer (its vocabulary padded to the models' 128,256 ids, the special ids set to its own)
  run        the stored run to judge (the kit's answers), and its judge prompts' real length in tokens
  plans      stage=plan on this GPU for every judge below, planned for that exact length
  judge:*    stage=judge for each judge x precision (bf16, int8, nf4) in logprob mode, and bf16 in generate mode:
             the plan's bytes per device against the stage's own max_memory_allocated / max_memory_reserved (its
             manifest), load time and answers/s
  generate   stage=generate with the 1B (a fixed number of new tokens) against plain batched `model.generate` and
             one prompt at a time, in tokens/s
  speed:*    with --speed N only: the stored run's answers N times over as one run, each logprob judge on it (after
             a warm-up judge when none ran before), answers/s from seconds of judging rather than warm-up; the int8
             judges also under the CUDA caching allocator's own settings (expandable segments off), in the order
             A B (8B) and B A (70B-4L), for peak reserved memory and speed side by side

Results: DIR/gpu-check.json (every figure; `passed` and `failed` list the steps), DIR/gpu-check.md (the same as
tables) and DIR/gpu-check.log (the end of every step's output). Both result files are rewritten after each step, so
a check stopped by its time limit leaves what it finished.

--dry keeps every kind of step at tiny shapes, lean enough for a CI machine with 2 cores (each step is a process
that imports torch and transformers: seconds each): the judges (bf16, int8, nf4 in logprob mode, fp32 in generate
mode) on the 8B stand-in only (the 70B presets run the same code), without a kit on 40 imported answers (a full batch
of the 8B preset's 32 and a partial one), stage=plan for the nf4 judge only (every judge still plans inside its stage,
with the same code; the GPU check compares stage=plan with each of them).

This file is the entry point (the arguments, the step list, the deadline); the parts are in scripts/gpucheck/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:  # the gpucheck package beside this file (run as a script, Python puts it there itself)
    sys.path.insert(0, HERE)

from gpucheck.check import Check  # noqa: E402
from gpucheck.common import DEFAULT_KIT, MODELS, Settings, judge_name  # noqa: E402
from gpucheck.figures import plan_held  # noqa: E402

# (model, precision, mode) of each judge run. On the GPU: each model in each precision in logprob mode, and in bf16 in
# generate mode. Dry: the 8B stand-in only (the tiny models differ only in their presets), each precision in logprob
# mode, and in generate mode in fp32 (the CPU's default: the unquantised judge in both dtypes, one process each).
GPU_JUDGES = [(m, p, "logprob") for m in ("llama31-8b", "llama31-70b-4l") for p in ("bf16", "int8", "nf4")] + \
    [(m, "bf16", "generate") for m in ("llama31-8b", "llama31-70b-4l")]
DRY_JUDGES = [("llama31-8b", p, "logprob") for p in ("bf16", "int8", "nf4")] + [("llama31-8b", "fp32", "generate")]
DRY_MODELS = [m for m in MODELS if m[0] != "llama31-70b-4l"]
DRY_ANSWERS = 40  # answers imported without a kit run: the 8B judge preset's batch of 32 and a partial batch
DRY_PLANNED = [("llama31-8b", "nf4", "logprob")]  # its plan has the most parts: weights, quantisation state, reserves
PREREQUISITES = ("kit", "preflight", "run", "models", "plans")  # what --only keeps: the steps after need them


def planned(s: Settings) -> list[tuple[str, str, str]]:
    """The judges stage=plan runs for: all on the GPU; dry, one (each is a process: seconds of a small CPU)."""
    return DRY_PLANNED if s.dry else s.combos


def run_all(check: Check) -> dict:
    """The step list, in order, each under its own limit; the steps `--only` leaves out are not run."""
    s = check.s

    def step(name: str, limit: float, fn, *args):
        if s.only and not any(o in name for o in s.only) and name not in PREREQUISITES:
            return None
        return check.step(name, limit, fn, *args)

    check.results["kit"] = check.kit_info()
    if not s.dry:
        installed = step("kit", 90, check.install_kit)
        if installed:
            check.results["kit_install"] = installed
    step("preflight", 90, check.preflight)
    step("doctor", 150, check.doctor)
    step("run", 90, check.stored_run)
    step("models", 240 if not s.dry else 120, check.build_models)
    step("plans", 120, check.plans, planned(s))
    judge_limit = 150 if not s.dry else 90

    def judges(mode: str) -> None:
        for model, precision, m in s.combos:
            if m == mode:
                step(f"judge:{judge_name(model, precision, mode)}", judge_limit, check.judge, model, precision, mode)

    judges("logprob")
    step("generate", 200 if not s.dry else 120, check.generate)
    judges("generate")
    if s.speed:
        step("speed-run", 120, check.speed_run)
        if not check.results["judges"]:  # the first judge process on a fresh machine is 3-4x slower: not a speed
            first = next(c for c in s.combos if c[2] == "logprob")
            step(f"speed:warm-up {judge_name(*first)}", judge_limit, check.judge, *first)
        order = 0
        for model, precision, mode in s.combos:
            if mode != "logprob":
                continue
            allocators = ["expandable"]
            if precision == "int8":
                allocators = ["expandable", "default"] if order % 2 == 0 else ["default", "expandable"]
                order += 1
            for allocator in allocators:
                step(f"speed:{judge_name(model, precision, mode)}-{allocator}", judge_limit + 60, check.speed_judge,
                     model, precision, allocator)
    check.results["plan_held"] = plan_held(check.results["judges"])
    check.results["finished_iso"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    check.save()
    return check.results


def parse(argv: list[str] | None) -> Settings:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT"), help="where the results go (default: $OUT)")
    p.add_argument("--dry", action="store_true", help="every step on the CPU with tiny shapes")
    p.add_argument("--kit", default=str(DEFAULT_KIT), help="the kit folder `make gpu-kit` built (default gpu-kit/)")
    p.add_argument("--scratch", default=None,
                   help="models and runs (default: /tmp/gpu-check on a GPU, kept for a rerun; a temporary folder, "
                        "removed, with --dry)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole check; steps that would start later are skipped (default 450, dry 600)")
    p.add_argument("--only", default="", help="comma-separated parts of step names to run (besides the kit, "
                                              "preflight, models, run and plans they need), e.g. judge:8b,generate")
    p.add_argument("--new-tokens", type=int, default=None, help="new tokens per answer in the generate step (32; dry 4)")
    p.add_argument("--reply-tokens", type=int, default=8, help="reply tokens of the judges in generate mode")
    p.add_argument("--machine-transformers", action="store_true",
                   help="use the GPU machine's own transformers instead of the kit's pinned one")
    p.add_argument("--speed", type=int, default=0, metavar="N",
                   help="also the speed pass: every logprob judge on the stored run's answers N times over (e.g. 4)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder of a --dry check")
    a = p.parse_args(argv)
    if not a.out:
        p.error("say where the results go: --out DIR (or set OUT)")
    dry = a.dry
    scratch = Path(a.scratch) if a.scratch else (Path(tempfile.mkdtemp(prefix="gpu-check-")) if dry
                                                 else Path("/tmp/gpu-check"))
    return Settings(dry=dry, out=Path(a.out).resolve(), kit=Path(a.kit).resolve(), scratch=scratch.resolve(),
                    budget=a.budget or (600.0 if dry else 450.0), python=sys.executable,
                    only=[x for x in a.only.split(",") if x], reply_tokens=a.reply_tokens,
                    new_tokens=a.new_tokens or (4 if dry else 32), one_at_a_time=8 if dry else 32,
                    generate_limit=32 if dry else None, combos=DRY_JUDGES if dry else GPU_JUDGES,
                    machine_transformers=a.machine_transformers, models=DRY_MODELS if dry else list(MODELS),
                    answers=DRY_ANSWERS if dry else None, keep=a.keep, speed=max(0, a.speed))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        from gpucheck.workers import worker_main

        return worker_main(argv[1:])
    s = parse(argv)
    s.scratch.mkdir(parents=True, exist_ok=True)
    check = Check(s, deadline=time.monotonic() + s.budget)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, check.stop)
    if s.dry:  # the embedded model's tokenizer comes from the user's cache when there is no kit
        from_user = os.environ.get("PIPELINE_CACHE_DIR") or str(
            Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pipeline")
        check.env["GPU_CHECK_MODEL_CACHE"] = from_user
    try:
        results = run_all(check)
    finally:
        if s.dry and not s.keep:
            shutil.rmtree(s.scratch, ignore_errors=True)
    print(f"[gpu-check] {len(results['passed'])} of {len(results['steps'])} steps passed in "
          f"{results['seconds']:.0f} s; results in {s.out}/gpu-check.json and gpu-check.md", flush=True)
    return 0 if results["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
