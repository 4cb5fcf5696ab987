"""stage=judge: a judge model rescores the stored answers of a run (it never regenerates them).

    python -m pipeline stage=judge                                   # newest run, embedded judge
    python -m pipeline stage=judge run_id=nq-1b judge=llama70b-8bit  # a 70B judge over all GPUs of the node

Steps: read runs/<id>/generate/generations.jsonl; plan the judge's placement (plan.json, printed as a table)
and stop before loading anything if it does not fit; build every prompt and refuse those that would not fit the
judge's context; load the judge exactly as planned and verify every parameter's device, dtype and quantisation;
get a verdict on each answer (the modes are in judges.py); write runs/<id>/judge/<judge>/verdicts.jsonl
(rows.VerdictRow) and the result CSVs (report.py). When the judge fits on fewer GPUs than are visible, several
copies of it judge disjoint shares at once and are merged (judge.placement.replicas; replicas.py,
replica_runs.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from omegaconf import OmegaConf

from . import replica_runs, report, shards
from .binding import answer_hashes, answers_digest, bind, check_bound
from .config import Config, check_name
from .decoding import PrefixCache, context_length, length_batches
from .errors import PipelineError, plural, preview
from .files import peek_jsonl, write_json
from .hardware import GiB, allocator_setting, detect, expandable_segments
from .engines.chat import markup_in
from .engines.hf import HfEngine
from .engines.served import check_served, served_engine, served_fingerprint
from .engines.settings import chat_style
from .judges import make_chat_judge, make_judge
from .models import cache_root, load_planned, load_tokenizer, model_config, model_folder, source_info, \
    use_chat_template
from .placement import Plan, plan_for, recommendation_text, verify_loaded
from .rows import GenerationRow, VerdictRow, parse_rows
from .runner import Attempt, StageJob
from .runs import StageDir, find_run
from .verdict import PromptBuilder, VerdictTokens, judge_messages

log = logging.getLogger(__name__)

FINGERPRINT_KEYS = ("model", "revision", "precision", "compute_dtype", "double_quant", "use_chat_template", "mode",
                    "threshold", "min_verdict_mass")


def generations_of(run_dir: Path) -> list[GenerationRow]:
    """The run's answers: the finished generate stage, or all its array shards merged (and checked) in memory."""
    root = run_dir / "generate"
    if not StageDir(root, "generations.jsonl").is_complete() and not shards.shard_dirs(root):
        raise PipelineError(
            f"run {run_dir.name} has no finished generate stage ({root}/manifest.json is missing or not complete). "
            f"Finish it first: python -m pipeline stage=generate run_id={run_dir.name} (it resumes where it stopped)."
        )
    return parse_rows(GenerationRow, shards.stage_records(root, "generations.jsonl"), root / "generations.jsonl")


def judge_root(run_dir: Path, judge_name: str) -> StageDir:
    check_name("judge.name", judge_name)
    return StageDir(run_dir / "judge" / judge_name, "verdicts.jsonl")


def plan_or_refuse(cfg: Config, hardware, source: str | None = None, seq_len: int | None = None) -> Plan:
    """The judge's placement plan; when it does not fit, the table with what would fit, and a stop before loading."""
    plan = plan_for(cfg.judge, hardware, source, seq_len)
    if plan.fits:
        return plan
    plan = plan_for(cfg.judge, hardware, source, seq_len, recommendations=True)
    print(plan.table(), flush=True)
    raise PipelineError(
        f"judge {cfg.judge.name!r} cannot run here: {' '.join(plan.problems)} Nothing was loaded. "
        f"Its weights alone are {plan.total_weight_bytes / GiB:.1f} GiB ({plan.total_params / 1e9:.2f} B parameters "
        f"in {plan.precision_label}). {recommendation_text(plan.recommendations)}\n"
        "Run it on a node with enough GPUs (see slurm/ and `python -m pipeline stage=plan`), choose a precision or "
        "judge that fits, or judge on CPU with the embedded judge=smollm2-135m."
    )


@dataclass
class Prompts:
    """Every answer's judge prompt as token ids, checked against the judge's context before anything is loaded."""

    tokenizer: object
    chat: bool
    ids: dict[str, list[int]]
    tokens: VerdictTokens | None  # the verdict words (logprob mode)
    reply_tokens: int  # positions the reply needs after the prompt (0 in logprob mode)

    @classmethod
    def build(cls, cfg: Config, source: str, answers: list[GenerationRow]) -> "Prompts":
        j, prompt = cfg.judge, cfg.judge_prompt
        tokenizer = load_tokenizer(source, j)
        chat = use_chat_template(tokenizer, j.use_chat_template)
        builder = PromptBuilder(tokenizer, prompt, chat)
        ids = {a.id: builder(a)[1] for a in answers}
        tokens = VerdictTokens.build(tokenizer, prompt) if j.mode == "logprob" else None  # checked before loading
        made = cls(tokenizer, chat, ids, tokens, 0 if tokens else prompt.reply_tokens)
        made.check_context(cfg, source)
        return made

    @property
    def longest(self) -> int:
        return max((len(p) for p in self.ids.values()), default=0) + self.reply_tokens

    def check_context(self, cfg: Config, source: str) -> None:
        """Refuse prompts that would run past the judge's context (naming ids and lengths). Every inserted value is
        capped (judge_prompt.max_*_chars), so only a small-context judge meets this."""
        limit = context_length(model_config(source, cfg.judge))
        over = {rid: len(p) + self.reply_tokens for rid, p in self.ids.items()
                if limit is not None and len(p) + self.reply_tokens > limit}
        if over:
            raise PipelineError(
                f"judge {cfg.judge.name}: {plural(len(over), 'prompt')} plus the reply would run past its context of "
                f"{limit} positions (ids and tokens: {preview([f'{k} ({v})' for k, v in over.items()], 6)}). Nothing "
                "was judged. Lower judge_prompt.max_question_chars / max_reference_chars / max_candidate_chars, or "
                "use a judge with a longer context."
            )


def memory_snapshot() -> dict:
    if not torch.cuda.is_available():
        return {}
    return {f"cuda:{i}": {"allocated_bytes": torch.cuda.memory_allocated(i),
                          "reserved_bytes": torch.cuda.memory_reserved(i)}
            for i in range(torch.cuda.device_count())}


@contextmanager
def scratch_folder(cfg: Config, run_dir: Path) -> Iterator[Path]:
    """Where weights offloaded to disk go (tens of GB for a 70B): in the cache, removed when the stage ends."""
    folder = cache_root(cfg.cache_dir) / "offload" / f"{run_dir.name}--{cfg.judge.name}--{os.getpid()}"
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def load_judge(plan: Plan, offload_folder: Path) -> tuple[object, dict]:
    """The judge loaded exactly as planned and verified against the plan; and what the manifest records of it."""
    before = memory_snapshot()
    if before and not expandable_segments():
        log.warning("the CUDA allocator runs with %r: the plan's reserves assume expandable segments; without them "
                    "an int8 judge's reserved memory reached 1.9x its allocations on the GPU check (18.9 GiB for a "
                    "plan of 18.4). Unset PYTORCH_ALLOC_CONF, or add expandable_segments:True to it",
                    allocator_setting())
    for dev, mem in before.items():
        log.info("%s before loading: %.2f GiB allocated, %.2f GiB reserved", dev, mem["allocated_bytes"] / GiB,
                 mem["reserved_bytes"] / GiB)
    t0 = time.perf_counter()
    model = load_planned(plan, offload_folder=offload_folder)
    per_device = verify_loaded(model, plan)
    load_s = time.perf_counter() - t0
    after = memory_snapshot()
    for dev, n in sorted(per_device.items()):
        mem = after.get(dev)
        extra = (f", {mem['allocated_bytes'] / GiB:.2f} GiB allocated, {mem['reserved_bytes'] / GiB:.2f} GiB "
                 "reserved") if mem else ""
        log.info("%s: %d parameters%s (as planned)", dev, n, extra)
    return model, {"params_per_device": per_device, "memory_before": before, "memory_after": after,
                   "load_s": round(load_s, 3)}


def judge_answers(cfg: Config, attempt: Attempt, plan: Plan, prompts: Prompts, hashes: dict[str, str]) -> dict:
    """Load the judge and write a verdict for every answer left, each bound to the answer it judged (`hashes`);
    what the manifest records of the loading."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    with scratch_folder(cfg, attempt.job.run_dir) as offload:
        model, loaded = load_judge(plan, offload)
        todo = sorted(attempt.todo, key=lambda rid: len(prompts.ids[rid]), reverse=True)  # similar lengths together
        prefix = PrefixCache([prompts.ids[rid] for rid in todo])  # system turn, examples: once, not per batch
        engine = HfEngine(model, prompts.tokenizer, cfg.judge_prompt.stop_at_newline, prefix)
        judge_with(cfg, attempt, engine, prompts, hashes, todo)
    return loaded


def judge_with(cfg: Config, attempt: Attempt, engine, prompts: Prompts, hashes: dict[str, str],
               todo: list[str]) -> None:
    """Verdicts on `todo` (sorted longest first) in batches of similar lengths, written as each batch ends."""
    judge_batch = make_judge(cfg.judge, cfg.judge_prompt, prompts.tokenizer, engine, prompts.tokens)
    batches = (todo[lo:hi] for lo, hi in length_batches([len(prompts.ids[rid]) for rid in todo],
                                                          cfg.judge.batch_size))
    attempt.write(batches, lambda ids: bind(judge_batch(ids, [prompts.ids[rid] for rid in ids]), hashes),
                  desc=f"judge {cfg.judge.name}", unit="answer")


def judge_served(cfg: Config, attempt: Attempt, source: str, prompts: Prompts, hashes: dict[str, str]) -> dict:
    """engine=openai or vllm: the same prompts, batches and records, answered by a server; what the manifest
    records of it (server, model, tokens used, retries)."""
    j = cfg.judge
    todo = sorted(attempt.todo, key=lambda rid: len(prompts.ids[rid]), reverse=True)
    t0 = time.perf_counter()
    with served_engine(j, source, prompts.tokenizer, model_config(source, j), cfg.judge_prompt.stop_at_newline,
                       prompts.longest, cache_root(cfg.cache_dir), f"{attempt.job.run_dir.name}--{j.name}",
                       f"judge {j.name}") as engine:
        load_s = time.perf_counter() - t0
        try:
            judge_with(cfg, attempt, engine, prompts, hashes, todo)
        finally:
            described = engine.describe()
            log.info("judge %s: %s", j.name, usage_line(described.get("usage") or {}))
    return {"load_s": round(load_s, 3), "engine": described}


def usage_line(usage: dict) -> str:
    return (f"{usage.get('requests', 0)} requests, {usage.get('prompt_tokens', 0)} prompt and "
            f"{usage.get('completion_tokens', 0)} completion tokens, {usage.get('retries', 0)} retried")


def details(cfg: Config, attempt: Attempt, plan: Plan | None, prompts: Prompts, loaded: dict, answers_sha256: str,
            replica: dict | None = None, source: str | None = None) -> dict:
    """The judge stage's own manifest fields (and, in a replica, which one it is). `plan` is None for a served
    engine, whose manifest records the server instead (`engine`)."""
    j, prompt, tokens = cfg.judge, cfg.judge_prompt, prompts.tokens
    engine = loaded.get("engine") or {"engine": str(j.engine)}
    return {
        **({"replica": replica} if replica else {}),
        "answers_sha256": answers_sha256,  # binding.answers_digest of every answer of the run when it was judged
        "judge": {"name": j.name, "precision": plan.precision_label if plan else str(j.precision), "mode": j.mode,
                  "chat_template": prompts.chat, "threshold": j.threshold if j.mode == "logprob" else None,
                  "verdict_tokens": {str(k): v for k, v in tokens.spellings.items()} if tokens else None,
                  "engine": str(j.engine),
                  **(source_info(j.model, plan.source if plan else source) if plan or source else {"spec": None})},
        "engine": engine,
        "prompt": {"name": prompt.name, "version": prompt.version, "system": prompt.system,
                   "template": prompt.template, "reply_prefix": prompt.reply_prefix},
        **({"placement": {"plan_file": "plan.json", **{k: loaded.get(k, {}) for k in
                          ("params_per_device", "memory_before", "memory_after")}}} if plan else {}),
        "timings": {"load_s": loaded.get("load_s", 0.0), "judge_s": round(attempt.seconds, 3),
                    "total_s": round(time.perf_counter() - attempt.job.started, 3),
                    "answers_per_s": attempt.rate(len(attempt.todo))},
    }


def write_results(cfg: Config, run_dir: Path) -> None:
    report.write_and_print(run_dir, cfg.judge.name, report.settings(cfg))


def make_job(cfg: Config) -> tuple[StageJob, list[GenerationRow], str]:
    """The judge stage of the run (or this shard of it), the answers it covers, and the digest of all the run's
    answers (binding.answers_digest, for the manifest)."""
    if not cfg.hardware.detect:
        raise PipelineError(f"hardware={cfg.hardware.name} declares a node to plan for (stage=plan); stage=judge runs "
                            "on this machine's own devices: leave hardware=auto.")
    shard = shards.this_shard(cfg.shard, overwrite=cfg.overwrite)
    run_dir = find_run(Path(cfg.runs_dir), cfg.run_id)
    answers = generations_of(run_dir)
    fingerprint = {"judge": {k: getattr(cfg.judge, k) for k in FINGERPRINT_KEYS},
                   **served_fingerprint(cfg.judge),
                   "prompt": {k: v for k, v in OmegaConf.to_container(cfg.judge_prompt).items() if k != "modes"}}
    job = StageJob(cfg, run_dir, judge_root(run_dir, cfg.judge.name), shard, fingerprint, [a.id for a in answers])
    check_earlier_verdicts(job, answer_hashes(answers))
    return job, [a for a in answers if a.id in job.mine], answers_digest(answers)


def check_earlier_verdicts(job: StageJob, hashes: dict[str, str]) -> None:
    """Refuse to finish, resume or rerun a judge stage whose verdicts so far were given to other answers than the
    run's now (answers regenerated or edited by hand since), naming the ids; overwrite=true judges them anew."""
    if job.cfg.overwrite:
        return
    for stage in {job.stage.path: job.stage, job.root.path: job.root}.values():
        if stage.is_complete():
            records = stage.read_records()
            where = stage.records_path
        elif stage.partial_path.is_file():
            records = peek_jsonl(stage.partial_path)
            where = stage.partial_path
        else:
            continue
        check_bound(hashes, parse_rows(VerdictRow, records, where), where, job.cfg.judge.name, job.run_dir.name)


def run(cfg: Config) -> Path:
    """Judge every stored answer of this shard not yet judged by this judge; returns the stage directory."""
    job, answers, digest = make_job(cfg)
    replica = replica_runs.check_replica(cfg, job.run_dir)  # a replica runs its parent's config, or nothing
    if job.finished():
        if not job.sharded and not report.results_present(job.stage.path):  # e.g. killed, or out of disk, while reporting
            log.info("run %s: the result files of %s are not all there; writing them again", job.run_dir.name,
                     job.stage.path)
            write_results(cfg, job.run_dir)
        return job.stage.path
    if cfg.judge.engine != "hf":
        return run_served(cfg, job, answers, digest)
    hardware = detect()
    for note in hardware.notes:
        log.info("hardware: %s", note)
    plan = plan_or_refuse(cfg, hardware)  # from the config alone: a misfit stops before any download or load
    source = model_folder(cfg.judge.model, cache_root(cfg.cache_dir))
    prompts = Prompts.build(cfg, source, answers)
    seq_len = None
    if prompts.longest > cfg.judge.placement.max_seq_len:  # the plan assumed shorter rows: plan for the real length
        log.warning("the longest judge prompt plus reply is %d tokens > judge.placement.max_seq_len=%d; planning "
                    "again for %d", prompts.longest, cfg.judge.placement.max_seq_len, prompts.longest)
        seq_len = prompts.longest
        plan = plan_or_refuse(cfg, hardware, source, seq_len)
    plan = plan.with_source(source)
    grouping = replica_runs.choose(cfg, job, hardware, plan, source, seq_len)
    if grouping is not None:  # several copies, one process each, on disjoint shares; merged when all are done
        return replica_runs.run_replicas(cfg, job, grouping)
    print(plan.table(), flush=True)

    with job.attempt() as attempt:
        if attempt is None:  # finished by another process since the check above
            return job.stage.path
        write_json(job.stage.path / "plan.json", plan.to_dict())
        log.info("run %s: judging %d answers with %s%s", job.run_dir.name, len(attempt.todo), cfg.judge.name,
                 job.label)
        if plan.offloaded:
            log.warning("OFFLOAD: part of the judge is on %s (judge.placement.allow_offload=true); every forward pass "
                        "copies those layers to the GPU, which is many times slower than a plan that fits.",
                        "/".join(r.device for r in plan.rows if r.device in ("cpu", "disk")))
        # an attempt stopped after its last batch has nothing left to judge, and loads no model
        loaded = judge_answers(cfg, attempt, plan, prompts, answer_hashes(answers)) if attempt.todo else {}
        attempt.finish("judge", VerdictRow.SCHEMA, details(cfg, attempt, plan, prompts, loaded, digest, replica))
        if replica:
            log.info("run %s: replica %s of %s (shard %s) of judge %s done", job.run_dir.name, replica.get("index"),
                     replica.get("count"), job.shard.name, cfg.judge.name)
        elif job.sharded:
            log.info("run %s: shard %s of judge %s done; stage=report merges the shards and writes the CSVs",
                     job.run_dir.name, job.shard.name, cfg.judge.name)
    if not replica and not job.sharded:  # after the attempt: a report that fails never touches the finished stage
        write_results(cfg, job.run_dir)
    return job.stage.path


def run_served(cfg: Config, job: StageJob, answers: list[GenerationRow], digest: str) -> Path:
    """stage=judge with engine=openai or vllm: no placement plan (the server places the model); the same prompts,
    records, resume, shards and reports as engine=hf."""
    check_served(cfg.judge, f"judge {cfg.judge.name}")
    if chat_style(cfg.judge):
        return run_chat(cfg, job, answers, digest)
    source = model_folder(cfg.judge.model, cache_root(cfg.cache_dir))  # its tokenizer (and for vllm its weights)
    prompts = Prompts.build(cfg, source, answers)
    with job.attempt() as attempt:
        if attempt is None:
            return job.stage.path
        log.info("run %s: judging %d answers with %s (engine=%s)%s", job.run_dir.name, len(attempt.todo),
                 cfg.judge.name, cfg.judge.engine, job.label)
        loaded = judge_served(cfg, attempt, source, prompts, answer_hashes(answers)) if attempt.todo else {}
        attempt.finish("judge", VerdictRow.SCHEMA, details(cfg, attempt, None, prompts, loaded, digest, source=source))
        if job.sharded:
            log.info("run %s: shard %s of judge %s done; stage=report merges the shards and writes the CSVs",
                     job.run_dir.name, job.shard.name, cfg.judge.name)
    if not job.sharded:
        write_results(cfg, job.run_dir)
    return job.stage.path


@dataclass
class ChatPrompts:
    """api.style=chat: every answer's judge conversation as messages; the server applies its own template."""

    messages: dict[str, list[dict]]
    chat = "server"  # whose chat template made the prompt (the manifest's judge.chat_template)
    tokens = None  # no verdict token ids: the words are read from the reply's tokens as text

    @classmethod
    def build(cls, cfg: Config, answers: list[GenerationRow]) -> "ChatPrompts":
        p = cfg.judge_prompt
        return cls({a.id: judge_messages(p, a.question, a.references, a.prediction,
                                         markup_in(a.question, *a.references, a.prediction)) for a in answers})


def run_chat(cfg: Config, job: StageJob, answers: list[GenerationRow], digest: str) -> Path:
    """stage=judge with engine=openai api.style=chat: conversations instead of token ids, no tokenizer; the same
    batches of records, resume, shards and reports."""
    j, prompts, hashes = cfg.judge, ChatPrompts.build(cfg, answers), answer_hashes(answers)
    with job.attempt() as attempt:
        if attempt is None:
            return job.stage.path
        log.info("run %s: judging %d answers with %s (engine=openai, chat)%s", job.run_dir.name, len(attempt.todo),
                 j.name, job.label)
        loaded: dict = {}
        if attempt.todo:
            t0 = time.perf_counter()
            with served_engine(j, "", None, None, cfg.judge_prompt.stop_at_newline, 0, cache_root(cfg.cache_dir),
                               f"{job.run_dir.name}--{j.name}", f"judge {j.name}") as engine:
                loaded["load_s"] = round(time.perf_counter() - t0, 3)
                try:
                    judge_batch = make_chat_judge(j, cfg.judge_prompt, engine)
                    todo = list(attempt.todo)
                    batches = (todo[i:i + j.batch_size] for i in range(0, len(todo), j.batch_size))
                    attempt.write(batches, lambda ids: bind(judge_batch(ids, [prompts.messages[r] for r in ids]),
                                                            hashes), desc=f"judge {j.name}", unit="answer")
                finally:
                    loaded["engine"] = engine.describe()
                    log.info("judge %s: %s", j.name, usage_line(loaded["engine"].get("usage") or {}))
        attempt.finish("judge", VerdictRow.SCHEMA, details(cfg, attempt, None, prompts, loaded, digest))
        if job.sharded:
            log.info("run %s: shard %s of judge %s done; stage=report merges the shards and writes the CSVs",
                     job.run_dir.name, job.shard.name, j.name)
    if not job.sharded:
        write_results(cfg, job.run_dir)
    return job.stage.path
