"""(worker `baselines`) The generate comparison's baselines: plain batched `model.generate` and one prompt at a
time, and the stage's own decoding path (`greedy_batch`, as generate.py runs it) in this process, on the stage's
prompts, each making exactly `new_tokens` per answer."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .models import compose

ONE_AT_A_TIME = "one prompt at a time (model.generate)"
STAGE_PATH = "greedy_batch in-process (the stage's path)"


class Baselines:
    """The 1B loaded as stage=generate plans and loads it, its prompts, and each way of decoding them."""

    def __init__(self, params: dict):
        from pipeline.decoding import StopRule, input_device
        from pipeline.generate import Generator
        from pipeline.models import load_planned, load_tokenizer
        from pipeline.placement import verify_loaded

        self.n = params["new_tokens"]
        self.cfg = compose(["generator=llama32-1b", f"generator.model={params['folder']}",
                            "generator.stop_at_newline=false", f"generator.max_new_tokens={self.n}",
                            f"runs_dir={params['runs_dir']}"])
        self.g = self.cfg.generator
        self.gen = Generator.prepare(self.cfg)
        self.tok = load_tokenizer(self.gen.plan.source, self.g)
        self.model = load_planned(self.gen.plan)
        verify_loaded(self.model, self.gen.plan)
        self.prompts = self.encode(questions(params, self.cfg))
        self.device = input_device(self.model)
        self.cuda = self.device.type == "cuda"
        self.stop = StopRule.build(self.tok, self.model, False)

    def encode(self, qs: list[str]) -> list[list[int]]:
        from pipeline.generate import generator_messages
        from pipeline.models import encode_chat, use_chat_template
        from pipeline.verdict import special_texts

        chat = use_chat_template(self.tok, self.g.use_chat_template)
        specials = special_texts(self.tok)
        return [encode_chat(self.tok, generator_messages(self.cfg, q, specials), chat)[1] for q in qs]

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def hf(self, batch: list[list[int]]) -> int:
        """Plain `model.generate` on left-padded prompts, held to exactly `n` new tokens each."""
        import torch

        tok, width = self.tok, max(len(p) for p in batch)
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in batch], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=self.device)
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=self.n,
                                      min_new_tokens=self.n, do_sample=False, pad_token_id=tok.pad_token_id)
        return int(out.shape[0] * (out.shape[1] - width))

    def stage_path(self, ps: list[list[int]]) -> int:
        """The stage's decoding: longest first, a shared prefix cache, its length batches, greedy_batch."""
        from pipeline.decoding import PrefixCache, greedy_batch, length_batches

        order = sorted(range(len(ps)), key=lambda i: len(ps[i]), reverse=True)
        sorted_ps = [ps[i] for i in order]
        prefix = PrefixCache(sorted_ps)
        made = 0
        for lo, hi in length_batches([len(p) for p in sorted_ps], self.g.batch_size):
            made += sum(len(x.token_ids) for x in greedy_batch(self.model, sorted_ps[lo:hi], self.n, self.stop,
                                                               stage_prefix=prefix))
        return made

    def timed(self, fn) -> tuple[int, float]:
        self.sync()
        t = time.perf_counter()
        made = fn()
        self.sync()
        return made, time.perf_counter() - t

    def methods(self, one_at_a_time: int) -> dict:
        """Each method's prompts, new tokens, seconds and rates, after a warm-up of each way of decoding."""
        prompts, bs = self.prompts, self.g.batch_size
        self.hf(prompts[:2])  # warm-up: first-call allocations and kernel choices are not measured
        self.stage_path(prompts[:2])
        one = prompts[:one_at_a_time]
        methods = {}
        for name, count, fn in [
            (ONE_AT_A_TIME, len(one), lambda: sum(self.hf([p]) for p in one)),
            (f"batched model.generate (batch {bs})", len(prompts),
             lambda: sum(self.hf(prompts[s:s + bs]) for s in range(0, len(prompts), bs))),
            (STAGE_PATH, len(prompts), lambda: self.stage_path(prompts)),
        ]:
            made, seconds = self.timed(fn)
            methods[name] = {"prompts": count, "tokens": made, "seconds": round(seconds, 3),
                             "tokens_per_s": round(made / seconds, 1) if seconds else None,
                             "questions_per_s": round(count / seconds, 2) if seconds else None}
        return methods


def questions(params: dict, cfg) -> list[str]:
    """The questions stage=generate answered (its generations), else the data set's; the first `limit`."""
    if params.get("questions") and Path(params["questions"]).is_file():
        qs = [json.loads(x)["question"] for x in Path(params["questions"]).read_text().splitlines() if x.strip()]
    else:
        from pipeline.data import load_items

        qs = [it.question for it in load_items(cfg.dataset)[0]]
    return qs[:params["limit"]] if params.get("limit") else qs


def w_baselines(params: dict) -> dict:
    import torch

    b = Baselines(params)
    out = {"methods": b.methods(params["one_at_a_time"]), "batch_size": b.g.batch_size,
           "precision": b.gen.plan.precision.describe(), "device": str(b.device)}
    if b.cuda:
        out["max_memory_allocated"] = torch.cuda.max_memory_allocated()
    return out
