"""stage=judge: a judge model rescores the stored answers of a run (it never regenerates them).

    python -m pipeline stage=judge                                   # newest run, embedded judge
    python -m pipeline stage=judge run_id=nq-1b judge=llama70b-8bit  # a 70B judge over all GPUs of the node

Steps: read runs/<id>/generate/generations.jsonl; plan the judge's placement (plan.json, printed as a table)
and stop before loading anything if it does not fit; load the judge with exactly the plan's device map and
check every parameter landed where planned; get a verdict on each answer; write
runs/<id>/judge/<judge>/verdicts.jsonl (schema "verdict/1") and the result CSVs (report.py).

Two modes (judge.mode):
  logprob   (default) one forward pass per answer, no decoding: the prompt ends where the verdict starts, and
            P(correct) is the next-token probability of the correct words over that of all verdict words;
            the verdict is P(correct) >= judge.threshold.
  generate  the judge writes a reply (greedy); the last verdict marker in it is the verdict, anything else is
            invalid with the reason.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from contextlib import ExitStack
from pathlib import Path

import pandas as pd
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from . import report, shards
from .config import Config, check_name
from .decoding import (PrefixCache, StopRule, context_length, generated_text, greedy_batch, length_batches,
                       next_token_logprobs)
from .errors import PipelineError, plural, preview
from .files import write_json
from .hardware import GiB, detect
from .interrupts import GracefulStop
from .manifest import environment_manifest
from .models import (cache_root, load_causal_lm, load_tokenizer, model_config, resolve_model, resolve_precision,
                     source_info, use_chat_template)
from .plan import Plan, check_loaded, plan_for, recommendation_text, uses_gpus
from .runs import StageDir, resolve_run
from .verdict import PromptBuilder, VerdictTokens, parse_verdict, verdict_from_logprobs

log = logging.getLogger(__name__)

SCHEMA = "verdict/1"
FINGERPRINT_KEYS = ("model", "revision", "precision", "compute_dtype", "double_quant", "use_chat_template",
                    "max_new_tokens", "mode", "threshold", "min_verdict_mass")


def generations_of(run_dir: Path) -> list[dict]:
    """The run's answers: the finished generate stage, or all its array shards merged (and checked) in memory."""
    root = run_dir / "generate"
    if not StageDir(root, "generations.jsonl").is_complete() and not shards.shard_dirs(root):
        raise PipelineError(
            f"run {run_dir.name} has no finished generate stage ({root}/manifest.json is missing or not complete). "
            f"Finish it first: python -m pipeline stage=generate run_id={run_dir.name} (it resumes where it stopped)."
        )
    return shards.stage_records(root, "generations.jsonl")


def judge_root(run_dir: Path, judge_name: str) -> StageDir:
    check_name("judge.name", judge_name)
    return StageDir(run_dir / "judge" / judge_name, "verdicts.jsonl")


def refuse_unfit(cfg: Config, plan: Plan) -> None:
    """Stop before loading anything, saying why and what would fit."""
    raise PipelineError(
        f"judge {cfg.judge.name!r} cannot run here: {' '.join(plan.problems)} Nothing was loaded. "
        f"Its weights alone are {plan.total_weight_bytes / GiB:.1f} GiB ({plan.total_params / 1e9:.2f} B parameters "
        f"in {plan.precision}). {recommendation_text(plan.recommendations)}\n"
        "Run it on a node with enough GPUs (see slurm/ and `python -m pipeline stage=plan`), choose a precision or "
        "judge that fits, or judge on CPU with the embedded judge=smollm2-135m."
    )


def plan_or_refuse(cfg: Config, hardware, source: str | None = None, seq_len: int | None = None) -> Plan:
    plan = plan_for(cfg.judge, hardware, source, seq_len)
    if not plan.fits:
        plan = plan_for(cfg.judge, hardware, source, seq_len, recommendations=True)
        print(plan.table(), flush=True)
        refuse_unfit(cfg, plan)
    return plan


def memory_snapshot() -> dict:
    if not torch.cuda.is_available():
        return {}
    return {f"cuda:{i}": {"allocated_bytes": torch.cuda.memory_allocated(i),
                          "reserved_bytes": torch.cuda.memory_reserved(i)}
            for i in range(torch.cuda.device_count())}


RESULT_FILES = ("samples.csv", "summary.csv")


def check_context(cfg: Config, source: str, prompts: dict, reply_tokens: int) -> None:
    """Refuse, before loading the judge, prompts that would run past its context (naming the ids and lengths).
    Every inserted value is capped (judge_prompt.max_*_chars), so only a small-context judge meets this."""
    j = cfg.judge
    limit = context_length(model_config(source, j))
    if limit is None:
        return
    over = {rid: len(ids) + reply_tokens for rid, (_, ids) in prompts.items() if len(ids) + reply_tokens > limit}
    if over:
        raise PipelineError(
            f"judge {j.name}: {plural(len(over), 'prompt')} plus the reply would run past its context of {limit} "
            f"positions (ids and tokens: {preview([f'{k} ({v})' for k, v in over.items()], 6)}). Nothing was "
            "judged. Lower judge_prompt.max_question_chars / max_reference_chars / max_candidate_chars, or use a "
            "judge with a longer context."
        )


def results_present(folder: Path) -> bool:
    """Whether the result CSVs of a finished judge are there and not older than its manifest."""
    manifest = folder / "manifest.json"
    return all((folder / f).is_file() and (folder / f).stat().st_mtime_ns >= manifest.stat().st_mtime_ns
               for f in RESULT_FILES)


def write_results(cfg: Config, run_dir: Path) -> None:
    samples, summary = report.write(run_dir, cfg.judge.name, report.Settings(cfg))
    log.info("run %s: results in %s and %s", run_dir.name, samples, summary)
    print("\n" + report.digest(pd.read_csv(summary).iloc[0].to_dict()), flush=True)


def run(cfg: Config) -> Path:
    """Judge every stored answer of this shard not yet judged by this judge; returns the stage directory."""
    started = time.perf_counter()
    j, prompt = cfg.judge, cfg.judge_prompt
    reply_tokens = prompt.reply_tokens or j.max_new_tokens
    if not cfg.hardware.detect:
        raise PipelineError(f"hardware={cfg.hardware.name} declares a node to plan for (stage=plan); stage=judge runs "
                            "on this machine's own devices: leave hardware=auto.")
    shard = shards.resolve(cfg.shard, overwrite=cfg.overwrite)
    run_dir = resolve_run(Path(cfg.runs_dir), cfg.run_id)
    records = generations_of(run_dir)
    assigned = shard.select([r["id"] for r in records])
    mine = set(assigned)
    records = [r for r in records if r["id"] in mine]
    root = judge_root(run_dir, j.name)
    stage = shard.stage(root.path, root.records_name)
    fingerprint = {"judge": {k: getattr(j, k) for k in FINGERPRINT_KEYS}, "prompt": OmegaConf.to_container(prompt)}
    already = not cfg.overwrite and ((shard.count > 1 and root.finished_with(fingerprint, run_dir))
                                     or stage.finished_with(fingerprint, run_dir))
    shards.refuse_other_settings(root.path, fingerprint, root.records_name)
    if already:  # a finished stage with other settings was refused just above
        if shard.count == 1 and not results_present(stage.path):  # e.g. killed, or out of disk, while reporting
            log.info("run %s: %s is complete but its result files are not all there; writing them again",
                     run_dir.name, stage.path)
            write_results(cfg, run_dir)
            return stage.path
        log.info("run %s: %s is already complete with these settings; nothing to do (overwrite=true redoes it)",
                 run_dir.name, stage.path)
        return stage.path

    hardware = detect()
    for note in hardware.notes:
        log.info("hardware: %s", note)
    plan = plan_or_refuse(cfg, hardware)  # from the config alone: a misfit stops before any download or load
    source = resolve_model(j.model, cache_root(cfg.cache_dir))
    precision = resolve_precision(j, on_gpu=uses_gpus(j.placement, hardware))
    tokenizer = load_tokenizer(source, j)
    chat = use_chat_template(tokenizer, j.use_chat_template)
    build = PromptBuilder(tokenizer, prompt, chat)
    prompts = {r["id"]: build(r) for r in records}
    tokens = VerdictTokens.build(tokenizer, prompt) if j.mode == "logprob" else None  # checked before loading
    longest = max(len(ids) for _, ids in prompts.values()) + (0 if tokens else reply_tokens)
    check_context(cfg, source, prompts, 0 if tokens else reply_tokens)
    if longest > j.placement.max_seq_len:  # the plan assumed shorter rows: plan again for the real length
        log.warning("the longest judge prompt plus reply is %d tokens > judge.placement.max_seq_len=%d; "
                    "planning again for %d", longest, j.placement.max_seq_len, longest)
        plan = plan_or_refuse(cfg, hardware, source, longest)
    print(plan.table(), flush=True)

    with ExitStack() as stack:
        stack.enter_context(stage.lock())  # exclusive for the stage's whole life: a second process stops here
        done = stage.begin(fingerprint, cfg.overwrite, OmegaConf.to_yaml(cfg, resolve=True), run_dir)
        if done is None:  # finished by another process since the check above
            return stage.path
        stack.push(stage.undo_if_empty)  # a failure before the first record leaves nothing that blocks a rerun
        stack.enter_context(stage.log_to_file())
        stopper = stack.enter_context(GracefulStop())
        write_json(stage.path / "plan.json", plan.to_dict())
        done_ids = {r["id"] for r in done}
        strays = sorted(done_ids - mine)
        if strays:
            raise PipelineError(f"{stage.partial_path}: holds verdicts for ids this stage does not cover "
                                f"({preview(strays, 5)}); it was edited or belongs to other answers. Pass "
                                "overwrite=true to start the stage again (the partial outputs are moved aside).")
        todo = [r for r in records if r["id"] not in done_ids]
        log.info("run %s: judging %d answers with %s%s", run_dir.name, len(todo), j.name,
                 f" (shard {shard.name})" if shard.count > 1 else "")
        if done:
            log.info("resuming an interrupted attempt: %d verdicts already written", len(done))
        if plan.offloaded:
            log.warning("OFFLOAD: part of the judge is on %s (judge.placement.allow_offload=true); every forward pass "
                        "copies those layers to the GPU, which is many times slower than a plan that fits.",
                        "/".join(r.device for r in plan.rows if r.device in ("cpu", "disk")))

        params_per_device, memory_before, memory_after, load_s, judge_s = {}, {}, {}, 0.0, 0.0
        written = len(done)
        if todo:  # an attempt stopped after its last batch has nothing left to judge, and loads no model
            if cfg.threads:
                torch.set_num_threads(cfg.threads)
            memory_before = memory_snapshot()
            for dev, mem in memory_before.items():
                log.info("%s before loading: %.2f GiB allocated, %.2f GiB reserved", dev, mem["allocated_bytes"] / GiB,
                         mem["reserved_bytes"] / GiB)
            t0 = time.perf_counter()
            # weights offloaded to disk go to a scratch folder in the cache (tens of GB for a 70B), removed at the end
            offload_dir = cache_root(cfg.cache_dir) / "offload" / f"{run_dir.name}--{j.name}--{os.getpid()}"
            stack.callback(shutil.rmtree, offload_dir, ignore_errors=True)
            model = load_causal_lm(source, j, precision, plan.device_map, offload_folder=offload_dir)
            params_per_device = check_loaded(model, plan)
            load_s = time.perf_counter() - t0
            memory_after = memory_snapshot()
            for dev, n in sorted(params_per_device.items()):
                mem = memory_after.get(dev)
                extra = (f", {mem['allocated_bytes'] / GiB:.2f} GiB allocated, {mem['reserved_bytes'] / GiB:.2f} GiB "
                         "reserved") if mem else ""
                log.info("%s: %d parameters%s (as planned)", dev, n, extra)

            stop = StopRule.build(tokenizer, model, prompt.stop_at_newline)
            todo.sort(key=lambda r: len(prompts[r["id"]][1]), reverse=True)
            shared = PrefixCache([prompts[r["id"]][1] for r in todo])  # system turn, examples: once, not per batch
            t1 = time.perf_counter()
            base = {"schema": SCHEMA, "judge": j.name, "mode": j.mode, "prompt_name": prompt.name,
                    "prompt_version": prompt.version}
            with stage.appender() as out, tqdm(total=len(records), initial=len(done), desc=f"judge {j.name}",
                                               unit="answer", disable=not cfg.progress) as bar:
                for lo, hi in length_batches([len(prompts[r["id"]][1]) for r in todo], j.batch_size):
                    stopper.check(written, len(records))
                    batch = todo[lo:hi]
                    batch_prompts = [prompts[r["id"]][1] for r in batch]
                    rows = []
                    if tokens is not None:  # one forward pass: P(correct) from the next token
                        logps, tops = next_token_logprobs(model, batch_prompts, tokens.ids, stage_prefix=shared)
                        for r, logp, top in zip(batch, logps, tops):
                            verdict, p_correct, mass = verdict_from_logprobs(logp, len(tokens.correct), j.threshold,
                                                                             j.min_verdict_mass)
                            rows.append({**base, "id": r["id"], "verdict": verdict.label,
                                         "invalid_reason": verdict.reason,
                                         "p_correct": None if math.isnan(p_correct) else round(p_correct, 6),
                                         "verdict_mass": round(mass, 6),
                                         "reply": (prompt.reply_prefix or "") + tokenizer.decode([int(top)]),
                                         "finish_reason": None})
                    else:  # the judge writes its reply; the last verdict marker counts
                        for r, gen in zip(batch, greedy_batch(model, batch_prompts, reply_tokens, stop,
                                                                     stage_prefix=shared)):
                            text = generated_text(tokenizer, gen, first_line_only=prompt.stop_at_newline, strip=False)
                            reply = (prompt.reply_prefix or "") + text
                            verdict = parse_verdict(reply, prompt)
                            rows.append({**base, "id": r["id"], "verdict": verdict.label,
                                         "invalid_reason": verdict.reason,
                                         "p_correct": None, "verdict_mass": None, "reply": reply,
                                         "finish_reason": gen.finish_reason})
                    out.append(rows)
                    written += len(batch)
                    bar.update(len(batch))
            judge_s = time.perf_counter() - t1

        stage.finish({
            "stage": "judge",
            "run_id": run_dir.name,
            "schema": SCHEMA,
            "records": len(records),
            "resumed_with": len(done),
            "shard": {"index": shard.index, "count": shard.count, "name": shard.name},
            "assigned_ids": assigned if shard.count > 1 else None,
            "judge": {"name": j.name, "precision": precision.describe(), "mode": j.mode, "chat_template": chat,
                      "threshold": j.threshold if tokens else None,
                      "verdict_tokens": {str(k): v for k, v in tokens.spellings.items()} if tokens else None,
                      **source_info(j.model, source)},
            "prompt": {"name": prompt.name, "version": prompt.version, "system": prompt.system,
                       "template": prompt.template, "reply_prefix": prompt.reply_prefix},
            "placement": {"plan_file": "plan.json", "params_per_device": params_per_device,
                          "memory_before": memory_before, "memory_after": memory_after},
            "timings": {"load_s": round(load_s, 3), "judge_s": round(judge_s, 3),
                        "total_s": round(time.perf_counter() - started, 3),
                        "answers_per_s": round(len(todo) / judge_s, 3) if judge_s else None},
            "config": OmegaConf.to_container(cfg, resolve=True),
            **environment_manifest(),
        })
        if shard.count == 1:
            write_results(cfg, run_dir)
        else:
            log.info("run %s: shard %s of judge %s done; stage=report merges the shards and writes the CSVs",
                     run_dir.name, shard.name, j.name)
    return stage.path
