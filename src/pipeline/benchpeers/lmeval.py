"""The generate stage vs lm-evaluation-harness, both run now as whole commands (`python -m pipeline.bench peers`).

    A  python -m pipeline stage=generate dataset.limit=N            (the stage's manifest gives its generation time)
    B  lm_eval run --model hf --tasks <a task over the same N questions>   (lm_eval_timed.py times `generate_until`)

Both read the same model folder (the converted embedded model under the cache, or whatever `generator.model` names),
in the same precision on the same device, with the same greedy settings: the generator preset's system prompt and
prompt template, its chat-template choice, max_new_tokens, batch size, and a stop at the first newline. lm-eval runs
offline on a task written for the run into a scratch folder: the first N questions as JSONL, `generate_until`.
Rounds alternate A B A B; the medians are printed, with the machine's load average before and after.

The peer is a virtualenv with lm-eval[hf]: $PIPELINE_LM_EVAL_VENV, else <cache>/peers/lm-eval, which
`make bench-peers` (scripts/bench_peers.sh) creates. Without it, one line says the comparison was skipped and why.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

VENV_VARIABLE = "PIPELINE_LM_EVAL_VENV"
INSTALL_COMMAND = "make bench-peers"
TASK_NAME = "pipeline_bench_questions"
TIMED_SCRIPT = Path(__file__).with_name("lm_eval_timed.py")
VERSIONS_CODE = ("import json, lm_eval, torch, transformers; print(json.dumps({'lm-eval': lm_eval.__version__, "
                 "'torch': torch.__version__, 'transformers': transformers.__version__}))")
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def peer_venv(cache_dir: str | None) -> Path:
    """Where the lm-eval virtualenv is: $PIPELINE_LM_EVAL_VENV, else <cache>/peers/lm-eval."""
    from ..models import cache_root

    if os.environ.get(VENV_VARIABLE):
        return Path(os.environ[VENV_VARIABLE]).expanduser()
    return cache_root(cache_dir) / "peers" / "lm-eval"


def peer_versions(venv: Path) -> tuple[dict | None, str]:
    """({package: version} of the peer's lm-eval, torch and transformers, ''), or (None, why it cannot run)."""
    python = venv / "bin" / "python"
    if not python.is_file():
        return None, f"no lm-eval environment at {venv} ({python} is missing)"
    done = subprocess.run([str(python), "-c", VERSIONS_CODE], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"{python} cannot import lm_eval, torch and transformers ({last})"
    return json.loads(done.stdout.strip().splitlines()[-1]), ""


def skip_line(reason: str, venv: Path) -> str:
    return (f"stage vs lm-evaluation-harness: skipped, {reason}; `{INSTALL_COMMAND}` installs it into {venv} "
            f"(or set {VENV_VARIABLE} to a virtualenv with lm-eval[hf])")


@dataclass
class Setup:
    """What both commands share: the questions, the model folder, and the generator's settings."""

    cfg: object  # the composed config (pipeline.config.Config)
    items: list  # the first N data.QAItem of the data set
    model_dir: str
    dtype: str  # torch dtype name without the "torch." prefix, as lm-eval's dtype= takes it
    device: str

    @classmethod
    def build(cls, cfg, n: int) -> "Setup":
        from ..data import load_items
        from ..generate import pick_device
        from ..models import cache_root, choose_precision, model_folder

        g = cfg.generator
        device = pick_device(g.device)
        precision = choose_precision(g, on_gpu=device.type == "cuda")
        if precision.quantized:
            raise ValueError(f"generator precision {precision.name}: lm-eval's HF backend is compared in float only")
        return cls(cfg, load_items(cfg.dataset)[0][:n], model_folder(g.model, cache_root(cfg.cache_dir)),
                   str(precision.dtype).removeprefix("torch."), str(device))

    def describe(self, chat: bool) -> str:
        g = self.cfg.generator
        stop = "stop at the first newline" if g.stop_at_newline else "stop at EOS"
        return (f"the same {len(self.items)} questions from {self.cfg.dataset.name}, model folder {self.model_dir}, "
                f"{self.dtype} on {self.device}, greedy, max_new_tokens={g.max_new_tokens}, {stop}, batch size "
                f"{g.batch_size}, {'chat template' if chat else 'plain prompt'}")


def write_task(setup: Setup, folder: Path) -> Path:
    """A local lm-eval task over the questions (generate_until, the generator's stop and token limit); its folder."""
    g = setup.cfg.generator
    folder.mkdir(parents=True, exist_ok=True)
    questions = folder / "questions.jsonl"
    with questions.open("w") as out:
        for it in setup.items:
            prompt = g.prompt_template.replace("{question}", it.question)
            out.write(json.dumps({"id": it.id, "prompt": prompt, "answer": it.references[0]}) + "\n")
    task = {  # JSON is YAML: lm-eval reads this file as a task YAML
        "task": TASK_NAME, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(questions)}},
        "test_split": "test", "output_type": "generate_until", "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": ["\n"] if g.stop_at_newline else [], "max_gen_toks": int(g.max_new_tokens),
                              "do_sample": False},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1},
    }
    (folder / f"{TASK_NAME}.yaml").write_text(json.dumps(task, indent=2) + "\n")
    return folder


def stage_command(setup: Setup, runs_dir: Path, run_id: str, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "pipeline", "stage=generate", f"runs_dir={runs_dir}", f"run_id={run_id}",
            f"dataset.limit={len(setup.items)}", f"generator.device={setup.device}", "progress=false", *overrides]


def lm_eval_command(setup: Setup, venv: Path, task_dir: Path, out: Path, chat: bool) -> list[str]:
    """The peer's command line (after the timing wrapper and its timings file)."""
    g = setup.cfg.generator
    argv = [str(venv / "bin" / "python"), str(TIMED_SCRIPT), str(out / "timings.json"), "run", "--model", "hf",
            "--model_args", f"pretrained={setup.model_dir}", f"dtype={setup.dtype}", "--tasks", TASK_NAME,
            "--include_path", str(task_dir), "--device", setup.device, "--batch_size", str(g.batch_size),
            "--output_path", str(out / "results"), "--log_samples"]
    if g.system_prompt:
        argv += ["--system_instruction", g.system_prompt]
    return argv + (["--apply_chat_template"] if chat else [])


def run_whole(argv: list[str], env: dict) -> float:
    """Wall seconds of one whole command; a failed command raises RuntimeError with its last lines."""
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"{Path(argv[0]).name} {' '.join(argv[1:4])} ... exited {done.returncode}: {tail}")
    return seconds


def stage_round(setup: Setup, runs_dir: Path, run_id: str, overrides: list[str]) -> dict:
    """One whole `stage=generate` command: its seconds, its generation seconds, chat choice and answers by id."""
    env = {**os.environ, **OFFLINE, "PYTHONUNBUFFERED": "1"}
    whole = run_whole(stage_command(setup, runs_dir, run_id, overrides), env)
    stage_dir = runs_dir / run_id / "generate"
    manifest = json.loads((stage_dir / "manifest.json").read_text())
    answers = {}
    for line in (stage_dir / "generations.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            answers[row["id"]] = row["prediction"]
    return {"whole_s": whole, "generate_s": manifest["timings"]["generate_s"],
            "chat": manifest["generator"]["chat_template"], "answers": answers}


def lm_eval_round(setup: Setup, venv: Path, task_dir: Path, out: Path, chat: bool) -> dict:
    """One whole lm-eval command: its seconds, its generation seconds and answers by id."""
    out.mkdir(parents=True)
    env = {**os.environ, **OFFLINE, "HF_DATASETS_CACHE": str(out / "datasets-cache"), "PYTHONUNBUFFERED": "1"}
    env.pop("VIRTUAL_ENV", None)
    whole = run_whole(lm_eval_command(setup, venv, task_dir, out, chat), env)
    timings = json.loads((out / "timings.json").read_text())
    if timings["requests"] != len(setup.items):
        raise RuntimeError(f"lm-eval generated {timings['requests']} answers, not {len(setup.items)}")
    answers = {}
    for samples in (out / "results").rglob(f"samples_{TASK_NAME}_*.jsonl"):
        for line in samples.read_text().splitlines():
            if line.strip():
                sample = json.loads(line)
                answers[sample["doc"]["id"]] = sample["resps"][0][0]
    return {"whole_s": whole, "generate_s": timings["generate_s"], "answers": answers}


def report(setup: Setup, versions: dict, rounds: list[tuple[dict, dict]], load: tuple[float, float]) -> dict:
    """Print the medians of both commands and their ratios; return them."""
    n = len(setup.items)
    median = {side: {key: statistics.median(r[i][key] for r in rounds) for key in ("whole_s", "generate_s")}
              for i, side in enumerate(("stage", "lm-eval"))}
    for side in median.values():
        side["qps"] = n / side["generate_s"]
    same = sum(rounds[0][0]["answers"].get(it.id, "").strip() == rounds[0][1]["answers"].get(it.id, "").strip()
               for it in setup.items)
    print(f"{'command (whole process)':44} {'whole s':>8} {'generation s':>13} {'questions/s (generation)':>25}")
    for label, key in [("python -m pipeline stage=generate", "stage"), ("lm_eval run --model hf", "lm-eval")]:
        m = median[key]
        print(f"{label:44} {m['whole_s']:8.1f} {m['generate_s']:13.1f} {m['qps']:25.2f}")
    a, b = median["stage"], median["lm-eval"]
    generation, whole = a["qps"] / b["qps"], b["whole_s"] / a["whole_s"]
    print(f"stage vs lm-evaluation-harness {versions['lm-eval']} (both measured in this run, {len(rounds)} "
          f"round(s), load average {load[0]:.2f} before, {load[1]:.2f} after): {generation:.1f}x on the generation "
          f"phase ({a['qps']:.2f} vs {b['qps']:.2f} questions/s), {whole:.1f}x on the whole command "
          f"({a['whole_s']:.1f} vs {b['whole_s']:.1f} s); same answers for {same}/{n} questions")
    cores = os.cpu_count() or 1
    if max(load) > cores:
        print(f"note: the machine was busy (load average up to {max(load):.2f} on {cores} cores): other work shared "
              "the cores with both commands, so these are not clean figures; run again on a quiet machine")
    return {"stage": a, "lm-eval": b, "generation_ratio": generation, "whole_ratio": whole, "same_answers": same,
            "versions": versions, "load_average": load}


def compare(cfg, n: int, overrides: list[str], rounds: int = 1) -> dict | None:
    """Run the generate stage and lm-eval on the same N questions, A B A B; print the ratios, or why there are none."""
    venv = peer_venv(cfg.cache_dir)
    versions, reason = peer_versions(venv)
    if versions is None:
        print(skip_line(reason, venv))
        return None
    try:
        setup = Setup.build(cfg, n)
    except ValueError as e:
        print(skip_line(str(e), venv))
        return None
    load_before = os.getloadavg()[0]
    measured = []
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as scratch:
        scratch = Path(scratch)
        for r in range(rounds):
            stage = stage_round(setup, scratch / "runs", f"bench-{r}", overrides)
            if r == 0:
                task_dir = write_task(setup, scratch / "task")
                print(f"benchmark: the generate stage vs lm-evaluation-harness {versions['lm-eval']} (HF backend; "
                      f"torch {versions['torch']}, transformers {versions['transformers']}) as whole commands: "
                      f"{setup.describe(stage['chat'])}")
            try:
                measured.append((stage, lm_eval_round(setup, venv, task_dir, scratch / f"lm-eval-{r}",
                                                      stage["chat"])))
            except RuntimeError as e:
                print(f"stage vs lm-evaluation-harness: not measured, the peer's command failed: {e}")
                return None
    return report(setup, versions, measured, (load_before, os.getloadavg()[0]))
