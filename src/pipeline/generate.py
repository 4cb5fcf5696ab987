"""stage=generate: greedy answers from the generator over a QA data set.

    python -m pipeline stage=generate                                  # embedded model and data set
    python -m pipeline stage=generate generator=llama32-1b dataset=nq_open run_id=nq-1b

Writes runs/<run_id>/generate/generations.jsonl, one record per question (schema "generation/1"):
    id, index (position in the data set), question, references, prompt, prediction,
    finish_reason ("eos" | "newline" | "length"),
    num_generated_tokens, token_ids, tokens, token_logprobs, sequence_nll, mean_nll
plus manifest.json (resolved config, versions, git commit, hardware, timings). An interrupted run resumes
where it stopped when the same command is run again.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from .config import Config
from .data import QAItem, load_items
from .decoding import (Generation, PrefixCache, StopRule, context_length, generated_text, greedy_batch,
                       length_batches)
from . import shards
from .errors import PipelineError, plural, preview
from .interrupts import GracefulStop
from .manifest import environment_manifest
from .models import (cache_root, encode_chat, load_causal_lm, load_tokenizer, model_config, resolve_model,
                     resolve_precision, source_info, use_chat_template)
from .runs import StageDir, create_run, new_run_id

log = logging.getLogger(__name__)

SCHEMA = "generation/1"
FINGERPRINT_KEYS = ("model", "revision", "precision", "compute_dtype", "double_quant", "use_chat_template",
                    "max_new_tokens", "system_prompt", "prompt_template", "stop_at_newline")


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device("cuda:0" if setting == "cuda" else setting)
    except RuntimeError:
        raise PipelineError(f"generator.device={setting!r} is not a device; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or device.index >= torch.cuda.device_count()):
        raise PipelineError(f"generator.device={setting!r}, but torch sees {torch.cuda.device_count()} CUDA GPU(s) "
                            "here; use generator.device=auto (GPU if present, else CPU) or cpu.")
    return device


def generator_messages(cfg: Config, question: str) -> list[dict]:
    g = cfg.generator
    user = g.prompt_template.replace("{question}", question)
    return ([{"role": "system", "content": g.system_prompt}] if g.system_prompt else []) + \
        [{"role": "user", "content": user}]


def fit_to_context(cfg: Config, tokenizer, chat: bool, items: list[QAItem], prompts: dict, limit: int | None) -> dict:
    """Cut questions whose prompt plus the new tokens would run past the model's context, keeping their start, and
    say which; returns {id: tokens the full prompt had}. The records' `prompt` shows exactly what the model read."""
    if limit is None:
        return {}
    budget = limit - cfg.generator.max_new_tokens
    cut = {}
    for it in items:
        full = len(prompts[it.id][1])
        if full <= budget:
            continue
        lo, hi = 0, len(it.question)  # the longest start of the question whose prompt still fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(encode_chat(tokenizer, generator_messages(cfg, it.question[:mid] + " [...]"), chat)[1]) <= budget:
                lo = mid
            else:
                hi = mid - 1
        prompt = encode_chat(tokenizer, generator_messages(cfg, it.question[:lo] + " [...]"), chat)
        if len(prompt[1]) > budget:
            raise PipelineError(f"generator {cfg.generator.name}: even without its question, the prompt of id "
                                f"{it.id!r} is longer than the model's {limit} positions minus "
                                f"generator.max_new_tokens={cfg.generator.max_new_tokens}; shorten the prompt "
                                "template or system prompt.")
        prompts[it.id] = prompt
        cut[it.id] = full
    if cut:
        log.warning("%s longer than the model's context (%d positions, less %d new tokens) were cut to fit, keeping "
                    "their start: ids %s (prompt tokens before the cut: %s); the manifest lists them",
                    plural(len(cut), "question"), limit, cfg.generator.max_new_tokens, preview(cut, 8),
                    preview(cut.values(), 8))
    return cut


def make_record(item: QAItem, index: int, prompt: str, gen: Generation, tokenizer, first_line_only: bool) -> dict:
    nll = -sum(gen.token_logprobs)
    n = len(gen.token_ids)
    return {
        "schema": SCHEMA,
        "id": item.id,
        "index": index,
        "question": item.question,
        "references": list(item.references),
        "prompt": prompt,
        "prediction": generated_text(tokenizer, gen, first_line_only),
        "finish_reason": gen.finish_reason,
        "num_generated_tokens": n,
        "token_ids": gen.token_ids,
        "tokens": tokenizer.convert_ids_to_tokens(gen.token_ids),
        "token_logprobs": [round(x, 6) for x in gen.token_logprobs],
        "sequence_nll": round(nll, 6),
        "mean_nll": round(nll / n, 6) if n else None,
    }


def run(cfg: Config) -> Path:
    """Generate answers for every question of this shard not yet answered; returns the stage directory."""
    started = time.perf_counter()
    g = cfg.generator
    shard = shards.resolve(cfg.shard, overwrite=cfg.overwrite)
    device = pick_device(g.device)  # a device or precision that cannot be had fails before anything is written
    precision = resolve_precision(g, on_gpu=device.type == "cuda")
    source = resolve_model(g.model, cache_root(cfg.cache_dir))  # likewise a model folder without a config
    limit = context_length(model_config(source, g))
    items, data_info = load_items(cfg.dataset)
    assigned = shard.select([it.id for it in items])
    mine = set(assigned)
    items_here = [it for it in items if it.id in mine]

    run_id = cfg.run_id or new_run_id(g.name, cfg.dataset.name)
    run_dir = create_run(Path(cfg.runs_dir), run_id)
    root = StageDir(run_dir / "generate", "generations.jsonl")
    stage = shard.stage(root.path, root.records_name)
    fingerprint = {"generator": {k: getattr(g, k) for k in FINGERPRINT_KEYS},
                   "dataset": {"name": cfg.dataset.name, "content_sha256": data_info["content_sha256"]}}
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    if shard.count > 1 and root.finished_with(fingerprint, run_dir):
        log.info("run %s: generate is already complete (merged) with these settings; nothing to do", run_id)
        return root.path
    shards.refuse_other_settings(root.path, fingerprint, root.records_name)
    with ExitStack() as stack:
        stack.enter_context(stage.lock())  # exclusive for the stage's whole life: a second process stops here
        done = stage.begin(fingerprint, cfg.overwrite, config_yaml, run_dir, also_replace=(run_dir / "judge",))
        if done is None:
            log.info("run %s: %s is already complete with these settings; nothing to do (overwrite=true redoes it)",
                     run_id, stage.path)
            return stage.path
        stack.push(stage.undo_if_empty)  # a failure before the first record leaves nothing that blocks a rerun
        stack.enter_context(stage.log_to_file())
        stopper = stack.enter_context(GracefulStop())
        position = {it.id: i for i, it in enumerate(items)}
        log.info("run %s: generating answers with %s for %d questions from %s%s", run_id, g.name, len(items_here),
                 data_info["source"], f" (shard {shard.name})" if shard.count > 1 else "")
        done_ids = {r["id"] for r in done}
        strays = sorted(done_ids - mine)
        if strays:
            raise PipelineError(f"{stage.partial_path}: holds answers for ids this stage does not cover "
                                f"({preview(strays, 5)}); it was edited or belongs to other data. Pass overwrite=true "
                                "to start the stage again (the partial outputs are moved aside).")
        todo = [it for it in items_here if it.id not in done_ids]
        if done:
            log.info("resuming an interrupted attempt: %d answers already written, %d to go", len(done), len(todo))

        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        t0 = time.perf_counter()
        tokenizer = load_tokenizer(source, g)
        chat = use_chat_template(tokenizer, g.use_chat_template)
        prompts = {it.id: encode_chat(tokenizer, generator_messages(cfg, it.question), chat) for it in todo}
        truncated = fit_to_context(cfg, tokenizer, chat, todo, prompts, limit)
        new_tokens, written, load_s, gen_s = 0, len(done), 0.0, 0.0
        if todo:  # an attempt stopped after its last batch has nothing left to answer, and loads no model
            model = load_causal_lm(source, g, precision, {"": str(device)})
            load_s = time.perf_counter() - t0
            stop = StopRule.build(tokenizer, model, g.stop_at_newline)
            # Longest first: similar lengths share a batch (little padding), and memory peaks show up at once.
            todo.sort(key=lambda it: len(prompts[it.id][1]), reverse=True)
            shared = PrefixCache([prompts[it.id][1] for it in todo])  # the system turn: run once, not per batch
            t1 = time.perf_counter()
            with stage.appender() as out, tqdm(total=len(items_here), initial=len(done), desc=f"generate {g.name}",
                                               unit="q", disable=not cfg.progress) as bar:
                for lo, hi in length_batches([len(prompts[it.id][1]) for it in todo], g.batch_size):
                    stopper.check(written, len(items_here))
                    batch = todo[lo:hi]
                    gens = greedy_batch(model, [prompts[it.id][1] for it in batch], g.max_new_tokens, stop,
                                        stage_prefix=shared)
                    out.append(make_record(it, position[it.id], prompts[it.id][0], gen, tokenizer,
                                           g.stop_at_newline) for it, gen in zip(batch, gens))
                    new_tokens += sum(len(gen.token_ids) for gen in gens)
                    written += len(batch)
                    bar.update(len(batch))
            gen_s = time.perf_counter() - t1

        stage.finish({
            "stage": "generate",
            "run_id": run_id,
            "schema": SCHEMA,
            "records": len(items_here),
            "resumed_with": len(done),
            "shard": {"index": shard.index, "count": shard.count, "name": shard.name},
            "assigned_ids": assigned if shard.count > 1 else None,
            "expected_total": len(items),
            "dataset": data_info,
            "generator": {"name": g.name, "precision": precision.describe(), "device": str(device),
                          "chat_template": chat, "context_length": limit, **source_info(g.model, source)},
            "truncated_questions": truncated,
            "timings": {"load_s": round(load_s, 3), "generate_s": round(gen_s, 3),
                        "total_s": round(time.perf_counter() - started, 3),
                        "questions_per_s": round(len(todo) / gen_s, 3) if gen_s else None,
                        "tokens_per_s": round(new_tokens / gen_s, 3) if gen_s else None,
                        "generated_tokens": new_tokens},
            "config": OmegaConf.to_container(cfg, resolve=True),
            **environment_manifest(),
        })
        log.info("run %s: %d answers in %s (%.1f s generating, %.2f questions/s)", run_id, len(items_here),
                 stage.records_path, gen_s, len(todo) / gen_s if gen_s else float("nan"))
    return stage.path
