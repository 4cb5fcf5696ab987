"""stage=generate: greedy answers from the generator over a QA data set.

    python -m pipeline stage=generate                                  # embedded model and data set
    python -m pipeline stage=generate generator=llama32-1b dataset=nq_open run_id=nq-1b

Writes runs/<run_id>/generate/generations.jsonl, one rows.GenerationRow per question (id, index, question,
references, prompt, prediction, finish_reason, the generated tokens with their log-probabilities and NLL), plus
manifest.json (resolved config, versions, git commit, hardware, timings). An interrupted run resumes
where it stopped when the same command is run again.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import shards
from .config import Config
from .data import QAItem, load_items
from .decoding import Generation, PrefixCache, context_length, generated_text, length_batches
from .engines.chat import answer_of, markup_in
from .engines.hf import HfEngine
from .engines.served import check_served, served_engine, served_fingerprint
from .engines.settings import chat_style
from .errors import PipelineError, plural, preview
from .models import (cache_root, encode_chat, load_planned, load_tokenizer, model_config, model_folder,
                     choose_precision, source_info, use_chat_template)
from .placement import Plan, single_device, verify_loaded
from .rows import GenerationRow
from .verdict import defuse_special, special_texts
from .runner import Attempt, StageJob
from .runs import StageDir, make_run, new_run_id

log = logging.getLogger(__name__)

FINGERPRINT_KEYS = ("model", "revision", "precision", "compute_dtype", "double_quant", "use_chat_template",
                    "max_new_tokens", "system_prompt", "prompt_template", "stop_at_newline")
# A hosted model (api.style=chat): what of the generator's settings reaches it (the served model is the engine's).
CHAT_FINGERPRINT_KEYS = ("max_new_tokens", "system_prompt", "prompt_template", "stop_at_newline")


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


def generator_messages(cfg: Config, question: str, specials: tuple[str, ...] = ()) -> list[dict]:
    """The chat turns the generator reads. `specials`: the tokenizer's special-token texts (verdict.special_texts),
    replaced by spaces in the question, so that a question cannot open or close a turn of the template."""
    g = cfg.generator
    user = g.prompt_template.replace("{question}", defuse_special(question, specials))
    return ([{"role": "system", "content": g.system_prompt}] if g.system_prompt else []) + \
        [{"role": "user", "content": user}]


def fit_to_context(cfg: Config, tokenizer, chat: bool, items: list[QAItem], prompts: dict, limit: int | None) -> dict:
    """Cut questions whose prompt plus the new tokens would run past the model's context, keeping their start, and
    say which; returns {id: tokens the full prompt had}. The records' `prompt` shows exactly what the model read."""
    if limit is None:
        return {}
    specials = special_texts(tokenizer)
    budget = limit - cfg.generator.max_new_tokens
    cut = {}
    for it in items:
        full = len(prompts[it.id][1])
        if full <= budget:
            continue
        lo, hi = 0, len(it.question)  # the longest start of the question whose prompt still fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            shorter = generator_messages(cfg, it.question[:mid] + " [...]", specials)
            if len(encode_chat(tokenizer, shorter, chat)[1]) <= budget:
                lo = mid
            else:
                hi = mid - 1
        prompt = encode_chat(tokenizer, generator_messages(cfg, it.question[:lo] + " [...]", specials), chat)
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


def answer_row(item: QAItem, index: int, prompt: str, gen: Generation, tokenizer, first_line_only: bool
               ) -> GenerationRow:
    nll = -sum(gen.token_logprobs)
    n = len(gen.token_ids)
    return GenerationRow(
        id=item.id, index=index, question=item.question, references=list(item.references), prompt=prompt,
        prediction=generated_text(tokenizer, gen, first_line_only), finish_reason=gen.finish_reason,
        num_generated_tokens=n, token_ids=gen.token_ids, tokens=tokenizer.convert_ids_to_tokens(gen.token_ids),
        token_logprobs=[round(x, 6) for x in gen.token_logprobs], sequence_nll=round(nll, 6),
        mean_nll=round(nll / n, 6) if n else None, meta=item.meta or None,
    )


@dataclass
class Generator:
    """Everything resolved before the run folder is made: a device, precision or model folder that cannot be had
    fails before anything is written."""

    plan: Plan | None  # one device: what the loader applies and verifies (None: a served engine places the model)
    limit: int | None  # the model's context length
    source: str  # the model's folder: its tokenizer and config (and, for hf and vllm, its weights)

    @classmethod
    def prepare(cls, cfg: Config) -> "Generator":
        g = cfg.generator
        if g.engine != "hf":
            check_served(g, f"generator {g.name}")
            if chat_style(g):  # a hosted model: nothing of it is here, not even its tokenizer
                return cls(None, None, "")
            source = model_folder(g.model, cache_root(cfg.cache_dir))
            return cls(None, context_length(model_config(source, g)), source)
        device = pick_device(g.device)
        precision = choose_precision(g, on_gpu=device.type == "cuda")
        source = model_folder(g.model, cache_root(cfg.cache_dir))
        return cls(single_device(g, precision, str(device), source), context_length(model_config(source, g)), source)


def answer_by_chat(cfg: Config, attempt: Attempt, todo: list[QAItem], position: dict) -> dict:
    """generator.api.style=chat: each question's turns as messages to the server, which applies its own chat
    template; the reply cut to its first line here as the hf engine cuts it (engines/chat.answer_of). The questions
    cannot be fitted to a context this side does not know: one the server refuses stops the stage in one line."""
    g = cfg.generator
    info = {"chat_template": "server", "truncated": {}, "load_s": 0.0, "new_tokens": 0}
    if not todo:
        return info
    messages = {it.id: generator_messages(cfg, it.question, markup_in(it.question)) for it in todo}
    t0 = time.perf_counter()
    with served_engine(g, "", None, None, g.stop_at_newline, 0, cache_root(cfg.cache_dir),
                       f"{attempt.job.run_dir.name}--{g.name}", f"generator {g.name}") as engine:
        info["load_s"] = round(time.perf_counter() - t0, 3)

        def rows_of(batch: list[QAItem]) -> list[GenerationRow]:
            replies = engine.replies([messages[it.id] for it in batch], "", g.max_new_tokens, False, True, top=0,
                                     required=False)
            return [chat_row(it, position[it.id], messages[it.id], reply, g.stop_at_newline, info)
                    for it, reply in zip(batch, replies)]

        size = max(g.batch_size, engine.concurrency)  # a batch keeps every request slot busy
        try:
            attempt.write((todo[i:i + size] for i in range(0, len(todo), size)), rows_of,
                          desc=f"generate {g.name}", unit="q")
        finally:
            info["engine"] = engine.describe()
    return info


def chat_row(item: QAItem, index: int, messages: list[dict], reply, first_line_only: bool, info: dict
             ) -> GenerationRow:
    """One answer from a chat reply: the prompt is the messages sent (JSON); tokens and log-probabilities are the
    server's, as far as the answer goes (none when it gives none); no token ids (no tokenizer here)."""
    text, reason, kept = answer_of(reply, first_line_only)
    logprobs = [round(x, 6) for x in reply.logprobs[:kept]] if kept is not None else None
    nll = -sum(logprobs) if logprobs is not None else None
    info["new_tokens"] += reply.written if reply.written is not None else len(reply.tokens)
    return GenerationRow(
        id=item.id, index=index, question=item.question, references=list(item.references),
        prompt=json.dumps(messages, ensure_ascii=False), prediction=text, finish_reason=reason,
        num_generated_tokens=kept, token_ids=None, tokens=reply.tokens[:kept] if kept is not None else None,
        token_logprobs=logprobs, sequence_nll=round(nll, 6) if nll is not None else None,
        mean_nll=round(nll / kept, 6) if nll is not None and kept else None, meta=item.meta or None)


def answer_questions(cfg: Config, attempt: Attempt, gen: Generator, items: list[QAItem]) -> dict:
    """Prompt, load and answer every question left; what the manifest records of it."""
    g = cfg.generator
    position = {it.id: i for i, it in enumerate(items)}
    todo = [items[position[rid]] for rid in attempt.todo]
    if chat_style(g):
        return answer_by_chat(cfg, attempt, todo, position)
    t0 = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tokenizer = load_tokenizer(gen.source, g)
    chat = use_chat_template(tokenizer, g.use_chat_template)
    specials = special_texts(tokenizer)
    prompts = {it.id: encode_chat(tokenizer, generator_messages(cfg, it.question, specials), chat) for it in todo}
    info = {"chat_template": chat, "truncated": fit_to_context(cfg, tokenizer, chat, todo, prompts, gen.limit),
            "load_s": 0.0, "new_tokens": 0}
    if not todo:  # an attempt stopped after its last batch has nothing left to answer, and loads no model
        return info
    todo.sort(key=lambda it: len(prompts[it.id][1]), reverse=True)  # similar lengths share a batch; peaks come first
    if g.engine != "hf":
        longest = len(prompts[todo[0].id][1]) + g.max_new_tokens
        with served_engine(g, gen.source, tokenizer, model_config(gen.source, g), g.stop_at_newline, longest,
                           cache_root(cfg.cache_dir), f"{attempt.job.run_dir.name}--{g.name}",
                           f"generator {g.name}") as engine:
            info["load_s"] = round(time.perf_counter() - t0, 3)
            try:
                write_answers(cfg, attempt, engine, tokenizer, todo, prompts, position, info)
            finally:
                info["engine"] = engine.describe()
        return info
    model = load_planned(gen.plan)
    verify_loaded(model, gen.plan)
    info["load_s"] = round(time.perf_counter() - t0, 3)
    prefix = PrefixCache([prompts[it.id][1] for it in todo])  # the system turn: run once, not per batch
    engine = HfEngine(model, tokenizer, g.stop_at_newline, prefix)
    write_answers(cfg, attempt, engine, tokenizer, todo, prompts, position, info)
    return info


def write_answers(cfg: Config, attempt: Attempt, engine, tokenizer, todo: list[QAItem], prompts: dict,
                  position: dict, info: dict) -> None:
    """Answers to `todo` (sorted longest first) in batches of similar lengths from `engine`, written as each ends."""
    g = cfg.generator

    def rows_of(batch: list[QAItem]) -> list[GenerationRow]:
        gens = engine.generate([prompts[it.id][1] for it in batch], g.max_new_tokens)
        info["new_tokens"] += sum(len(x.token_ids) for x in gens)
        return [answer_row(it, position[it.id], prompts[it.id][0], x, tokenizer, g.stop_at_newline)
                for it, x in zip(batch, gens)]

    batches = (todo[lo:hi] for lo, hi in length_batches([len(prompts[it.id][1]) for it in todo], g.batch_size))
    attempt.write(batches, rows_of, desc=f"generate {g.name}", unit="q")


def details(cfg: Config, attempt: Attempt, gen: Generator, data_info: dict, info: dict, total: int) -> dict:
    """The generate stage's own manifest fields."""
    g = cfg.generator
    return {
        "expected_total": total,
        "dataset": data_info,
        "generator": {"name": g.name, "engine": str(g.engine),
                      "precision": gen.plan.precision.describe() if gen.plan else
                      str(g.precision) if gen.source else "server's",
                      "device": gen.plan.device_map[""] if gen.plan else "server",
                      "chat_template": info["chat_template"], "context_length": gen.limit,
                      **(source_info(g.model, gen.source) if gen.source else  # a hosted model: the name it answered to
                         {"spec": (info.get("engine") or {}).get("model") or g.api.model, "resolved": None})},
        **({"engine": info["engine"]} if info.get("engine") else {}),
        "truncated_questions": info["truncated"],
        "timings": {"load_s": info["load_s"], "generate_s": round(attempt.seconds, 3),
                    "total_s": round(time.perf_counter() - attempt.job.started, 3),
                    "questions_per_s": attempt.rate(len(attempt.todo)), "tokens_per_s": attempt.rate(info["new_tokens"]),
                    "generated_tokens": info["new_tokens"]},
    }


def run(cfg: Config) -> Path:
    """Generate answers for every question of this shard not yet answered; returns the stage directory."""
    g = cfg.generator
    shard = shards.this_shard(cfg.shard, overwrite=cfg.overwrite)
    gen = Generator.prepare(cfg)
    items, data_info = load_items(cfg.dataset)
    run_dir, new_run = make_run(Path(cfg.runs_dir), cfg.run_id or new_run_id(g.name, cfg.dataset.name))
    keys = CHAT_FINGERPRINT_KEYS if chat_style(g) else FINGERPRINT_KEYS
    fingerprint = {"generator": {k: getattr(g, k) for k in keys}, **served_fingerprint(g),
                   "dataset": {"name": cfg.dataset.name, "content_sha256": data_info["content_sha256"],
                               **({"keep": list(cfg.dataset.fields.keep)} if cfg.dataset.fields.keep else {})}}
    job = StageJob(cfg, run_dir, StageDir(run_dir / "generate", "generations.jsonl"), shard, fingerprint,
                   [it.id for it in items], also_replace=(run_dir / "judge", run_dir / "metrics.csv"), new_run=new_run, points_latest=True)
    if job.finished():
        return job.root.path if job.sharded else job.stage.path
    with job.attempt() as attempt:
        if attempt is None:
            return job.stage.path
        log.info("run %s: generating answers with %s for %d questions from %s%s", run_dir.name, g.name,
                 len(job.assigned), data_info["source"], job.label)
        info = answer_questions(cfg, attempt, gen, items)
        attempt.finish("generate", GenerationRow.SCHEMA, details(cfg, attempt, gen, data_info, info, len(items)))
        log.info("run %s: %d answers in %s (%.1f s generating, %s questions/s)", run_dir.name, len(job.assigned),
                 job.stage.records_path, attempt.seconds, attempt.rate(len(attempt.todo)))
    return job.stage.path
