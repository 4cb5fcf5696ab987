"""Speed benchmarks, measured in one process on the same prompts and model (run with `make bench`).

    python -m pipeline.bench generate [--n 64]   the generate stage's decoding vs one prompt at a time
    python -m pipeline.bench plan                 how long planning a 70B judge takes (no weights are read)
    python -m pipeline.bench judge [--n 64]       judge throughput: logprob mode vs generate mode
    python -m pipeline.bench page [--n 100000]    report.html of n answers in headless Chromium (benchpage.py)
    python -m pipeline.bench peers [--n 64] [--rounds 1]   the generate stage vs lm-evaluation-harness, both run now
    python -m pipeline.bench engines [--n 252] [--modes logprob,generate]   the judge stage on hf, openai, vllm

`generate` compares, on the embedded generator preset (its prompts, stop rule and max_new_tokens):
  one-at-a-time  `model.generate` per prompt, greedy, stopping at EOS or a newline token (the baseline);
  batched HF     `model.generate` on padded batches of the preset's batch size (plain batching);
  stage          the generate stage's path: prompts sorted by length, `greedy_batch` (shared prefix computed once,
                 finished rows dropped from the batch).
It prints questions/s, generated tokens/s, and each method's speed-up over one-at-a-time.

`peers` times whole commands, side by side in this run: `python -m pipeline stage=generate` and lm-evaluation-harness
(HF backend) on the same questions, model folder and greedy settings (benchpeers/lmeval.py). No peer figure is stored
here: every ratio against another tool is measured in the run that prints it. The peer lives in its own virtualenv,
which `make bench-peers` creates (<cache>/peers/lm-eval, or $PIPELINE_LM_EVAL_VENV); without it, `peers` prints one
line saying the comparison was skipped, why, and that command.
"""

from __future__ import annotations

import argparse
import time

import torch


def compose_config(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from .config import conf_dir, register

    register()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("config", overrides=overrides)


def load_cpu(cfg_model, precision_name: str | None, cache_dir):
    """(tokenizer, model) of a preset on the CPU, loaded by the stages' own path (a one-device plan)."""
    from omegaconf import OmegaConf

    from .models import cache_root, load_planned, load_tokenizer, model_folder, choose_precision
    from .placement import single_device

    source = model_folder(cfg_model.model, cache_root(cache_dir))
    if precision_name:
        cfg_model = OmegaConf.merge(cfg_model, {"precision": precision_name})
    precision = choose_precision(cfg_model, on_gpu=False)
    return load_tokenizer(source, cfg_model), load_planned(single_device(cfg_model, precision, "cpu", source))


def timed(methods: dict) -> tuple[dict, dict]:
    """Run each method once: {name: seconds, questions/s, tokens/s, tokens}, {name: its output}."""
    results, outputs = {}, {}
    for name, fn in methods.items():
        t = time.perf_counter()
        outputs[name] = fn()
        dt = time.perf_counter() - t
        tokens = sum(len(r) for r in outputs[name])
        results[name] = {"seconds": dt, "qps": len(outputs[name]) / dt, "tps": tokens / dt, "tokens": tokens}
    return results, outputs


def generate_methods(cfg, tok, model, prompts: list[list[int]]) -> dict:
    """The three ways to answer the prompts: one at a time and batched with `model.generate`, and the stage's."""
    from .decoding import PrefixCache, StopRule, greedy_batch

    g = cfg.generator
    stop = StopRule.build(tok, model, g.stop_at_newline)
    stop_ids = sorted(set(stop.is_eos.nonzero()[:, 0].tolist()) | set(stop.has_newline.nonzero()[:, 0].tolist()))

    def hf_generate(batch: list[list[int]]) -> list[list[int]]:
        width = max(len(p) for p in batch)
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=g.max_new_tokens, do_sample=False,
                                 eos_token_id=stop_ids, pad_token_id=tok.pad_token_id)
        rows = []
        for row in out[:, width:].tolist():  # generated tokens up to and including the first stop token
            cut = next((i + 1 for i, t in enumerate(row) if t in stop_ids), len(row))
            rows.append(row[:cut])
        return rows

    def stage_path() -> list[list[int]]:
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
        result: list[list[int]] = [[] for _ in prompts]
        shared = PrefixCache(prompts)
        for s in range(0, len(order), g.batch_size):
            idx = order[s:s + g.batch_size]
            batch = [prompts[i] for i in idx]
            for i, gen in zip(idx, greedy_batch(model, batch, g.max_new_tokens, stop, stage_prefix=shared)):
                result[i] = gen.token_ids
        return result

    hf_generate(prompts[:2])  # warm-up: first-call allocations are not part of any method
    return {
        "one-at-a-time": lambda: [hf_generate([p])[0] for p in prompts],
        f"batched HF generate (batch {g.batch_size})": lambda: [
            row for s in range(0, len(prompts), g.batch_size) for row in hf_generate(prompts[s:s + g.batch_size])],
        "stage (greedy_batch)": stage_path,
    }


def bench_generate(n: int, overrides: list[str]) -> dict:
    from .data import load_items
    from .generate import generator_messages
    from .verdict import special_texts
    from .models import encode_chat

    cfg = compose_config(overrides)
    g = cfg.generator
    items = load_items(cfg.dataset)[0][:n]
    tok, model = load_cpu(g, None, cfg.cache_dir)
    specials = special_texts(tok)
    prompts = [encode_chat(tok, generator_messages(cfg, it.question, specials), True)[1] for it in items]
    print(f"benchmark: {len(prompts)} questions from {cfg.dataset.name}, {g.name} (fp32, CPU, "
          f"{torch.get_num_threads()} threads), greedy, max_new_tokens={g.max_new_tokens}, batch size {g.batch_size}")
    results, outputs = timed(generate_methods(cfg, tok, model, prompts))
    base = results["one-at-a-time"]["qps"]
    print(f"{'method':38} {'questions/s':>12} {'tokens/s':>10} {'seconds':>8} {'vs one-at-a-time':>17}")
    for name, r in results.items():
        print(f"{name:38} {r['qps']:12.2f} {r['tps']:10.1f} {r['seconds']:8.1f} {r['qps'] / base:16.1f}x")
    stage = results["stage (greedy_batch)"]["qps"]
    same = sum(a == b for a, b in zip(outputs["one-at-a-time"], outputs["stage (greedy_batch)"]))
    print(f"stage vs one-at-a-time: {stage / base:.1f}x (target >= 8x); same tokens for {same}/{len(prompts)} "
          "questions (differences come from float rounding in batched matmuls, or from a newline before any text, "
          "which the stage does not count as the end of the answer)")
    return results


def bench_plan(overrides: list[str]) -> dict:
    """Wall time of planning the 70B presets on declared hardware: one plan, and a plan with recommendations."""
    from .hardware import from_profile
    from .placement import _META_CACHE, plan_for

    results = {}
    print("benchmark: planning Llama-3.1-70B (meta device, all reserves counted)")
    print(f"{'judge':15} {'hardware':14} {'plan (cold)':>12} {'plan (warm)':>12} {'+ recommendations':>18}  verdict")
    for judge, profile in [("llama70b", "4xA100-40GB"), ("llama70b-8bit", "4xA100-40GB"),
                           ("llama70b-4bit", "1xA100-80GB"), ("llama70b", "8xH100-80GB")]:
        cfg = compose_config([f"judge={judge}", f"hardware={profile}", *overrides])
        hw = from_profile(cfg.hardware)
        _META_CACHE.clear()
        t = time.perf_counter()
        plan_for(cfg.judge, hw)
        cold = time.perf_counter() - t
        t = time.perf_counter()
        plan_for(cfg.judge, hw)
        warm = time.perf_counter() - t
        t = time.perf_counter()
        plan = plan_for(cfg.judge, hw, recommendations=True)
        full = time.perf_counter() - t
        results[(judge, profile)] = {"cold_s": cold, "warm_s": warm, "with_recommendations_s": full}
        print(f"{judge:15} {profile:14} {cold:11.2f}s {warm:11.2f}s {full:17.2f}s  {'fits' if plan.fits else 'no'}")
    return results


def judge_work(base, overrides: list[str], tok, n: int) -> dict:
    """{(mode, prompt name): (prompt config, prompt ids longest first)} on the same answers, half of them wrong."""
    from .data import load_items
    from .rows import GenerationRow
    from .verdict import PromptBuilder

    items = load_items(base.dataset)[0][:n]
    answers = [GenerationRow.answer(it.id, it.question, it.references,
                                    it.references[0] if i % 2 == 0 else items[(i + 7) % len(items)].references[0])
               for i, it in enumerate(items)]
    work = {}
    for mode, prompt_name in [("logprob", "verdict-v2"), ("generate", "reasoned-v2"), ("generate", "verdict-v2")]:
        prompt = compose_config([f"judge_prompt={prompt_name}", *overrides]).judge_prompt
        build = PromptBuilder(tok, prompt, True)
        work[(mode, prompt_name)] = (prompt, sorted((build(a)[1] for a in answers), key=len, reverse=True))
    return work


def judge_rate(judge_cfg, prompt, tok, model, prompts: list[list[int]]) -> float:
    """Answers/s of the judge stage's own batch function (judges.make_judge) over `prompts`, after a warm-up."""
    from .decoding import PrefixCache
    from .engines.hf import HfEngine
    from .judges import make_judge
    from .verdict import VerdictTokens

    tokens = VerdictTokens.build(tok, prompt) if judge_cfg.mode == "logprob" else None

    def judge_all(batch_prompts: list[list[int]]) -> float:
        """Seconds to judge `batch_prompts` in batches; the judge is built (stop rule, prefix) before the clock."""
        engine = HfEngine(model, tok, prompt.stop_at_newline, PrefixCache(batch_prompts))
        judge_batch = make_judge(judge_cfg, prompt, tok, engine, tokens)
        t = time.perf_counter()
        for s in range(0, len(batch_prompts), judge_cfg.batch_size):
            batch = batch_prompts[s:s + judge_cfg.batch_size]
            judge_batch([str(i) for i in range(len(batch))], batch)
        return time.perf_counter() - t

    judge_all(prompts[-min(8, len(prompts)):])  # warm-up: first-call allocations are not measured
    return len(prompts) / judge_all(prompts)


def bench_judge(n: int, overrides: list[str]) -> dict:
    """Answers judged per second by the embedded judge on the same answers: logprob vs generate mode.

    The answers are the embedded questions' reference answers, every other one swapped for another question's
    answer (so half are wrong). logprob uses judge_prompt=verdict-v2 (one forward pass, no decoding); generate
    uses judge_prompt=reasoned-v2 (a one-sentence reasoning and a verdict, greedy, up to its reply_tokens), and
    verdict-v2 (the verdict word only). Every mode runs the judge stage's path (judges.make_judge): prompts sorted
    by length, batches of judge.batch_size, the stage-wide prompt prefix run once. Measured in fp32 (precision=auto
    on CPU) and, on a CPU with native bf16 units, in bf16 too; one warm-up batch per mode comes first.
    """
    from omegaconf import OmegaConf

    from .models import cpu_native

    base = compose_config(overrides)
    j = base.judge
    precisions = ["fp32"] + (["bf16"] if cpu_native("bf16") else [])
    results, work = {}, None
    for precision_name in precisions:
        tok, model = load_cpu(j, precision_name, base.cache_dir)
        work = work or judge_work(base, overrides, tok, n)
        if precision_name == precisions[0]:
            print(f"benchmark: judging {len(next(iter(work.values()))[1])} answers with {j.name} on CPU "
                  f"({torch.get_num_threads()} threads), batch size {j.batch_size}, in {' and '.join(precisions)}"
                  + ("" if "bf16" in precisions else " (this CPU has no native bf16 units)"))
        for (mode, prompt_name), (prompt, prompts) in work.items():
            results[(precision_name, mode, prompt_name)] = judge_rate(OmegaConf.merge(j, {"mode": mode}), prompt,
                                                                      tok, model, prompts)
        del model
    print(f"{'precision':10} {'mode':10} {'prompt':12} {'answers/s':>10}")
    for (precision_name, mode, prompt_name), rate in results.items():
        print(f"{precision_name:10} {mode:10} {prompt_name:12} {rate:10.2f}")
    for precision_name in precisions:
        ratio = (results[(precision_name, "logprob", "verdict-v2")]
                 / results[(precision_name, "generate", "reasoned-v2")])
        print(f"{precision_name}: logprob vs generate (a short reasoning, then the verdict): {ratio:.1f}x "
              "(target >= 5x)")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="?", default="all",
                        choices=["all", "generate", "plan", "judge", "page", "peers", "engines"])
    parser.add_argument("--n", type=int, default=None,
                        help="questions in the generate/judge benchmarks (default 64), answers on the page (100,000)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="peers: whole-command rounds of each tool, alternating (default 1); medians are printed")
    parser.add_argument("--modes", default="logprob",
                        help="engines: judge modes, comma-separated (default logprob; logprob,generate for both)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. generator.batch_size=32")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: give at least 1 round")
    n = args.n or 64
    if args.which in ("all", "plan"):
        bench_plan(args.overrides)
        print()
    if args.which in ("all", "generate"):
        bench_generate(n, args.overrides)
        print()
    if args.which in ("all", "peers"):
        from .benchpeers.lmeval import compare

        compare(compose_config(args.overrides), n, args.overrides, args.rounds)
        print()
    if args.which in ("all", "judge"):
        bench_judge(n, args.overrides)
        print()
    if args.which in ("all", "engines"):
        from .benchengines import bench_engines

        bench_engines(args.n or 252, [m for m in args.modes.split(",") if m], compose_config(args.overrides))
        print()
    if args.which in ("all", "page"):
        from .benchpage import bench_page

        bench_page(args.n or 100_000)


if __name__ == "__main__":
    main()
