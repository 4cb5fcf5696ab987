"""The two judge modes, each a small factory: built once from the judge, its prompt, tokenizer and engine (the
model, however it runs: engines/), then called on a batch of answers (their ids and prompt token ids) to give their
VerdictRows.

    judge_batch = make_judge(judge_cfg, prompt_cfg, tokenizer, engine, tokens)
    rows = judge_batch(ids, prompt_ids)

logprob   one forward pass per answer, no decoding: the prompt ends where the verdict starts, and P(correct) is the
          next-token probability of the correct words over that of all verdict words; the verdict is
          P(correct) >= judge.threshold (invalid when the verdict words hold less than judge.min_verdict_mass).
generate  the judge writes a reply (greedy, up to judge_prompt.reply_tokens); the last verdict marker in it is the
          verdict, anything else is invalid with the reason.

The judge stage and the judge benchmark call the same factory, so the benchmark measures the stage's own path.
"""

from __future__ import annotations

import math
from typing import Callable

from .config import JudgeConfig, JudgePromptConfig
from .decoding import generated_text
from .engines.base import Engine
from .rows import VerdictRow
from .verdict import CORRECT, INCORRECT, VerdictTokens, parse_verdict, verdict_from_logprobs

JudgeBatch = Callable[[list[str], list[list[int]]], list[VerdictRow]]


def logprob_reply(prefix: str, prompt: JudgePromptConfig, label: str, p_correct: float, mass: float,
                  top_token: str) -> str:
    """What decided a logprob verdict, as its reply: the verdict word P(correct) implies and P(correct) itself
    ("Verdict: correct (P(correct) 0.731)"). The single most likely next token is not shown for a valid verdict: it
    can contradict the verdict, which sums every spelling of both words. An invalid verdict shows it, as what the
    judge meant to say instead."""
    if label == CORRECT:
        return f"{prefix} {prompt.correct_words[0]} (P(correct) {p_correct:.3f})"
    if label == INCORRECT:
        return f"{prefix} {prompt.incorrect_words[0]} (P(correct) {p_correct:.3f})"
    return f"{prefix} (no verdict word: they got {mass:.2g} of the probability; most likely next: {top_token!r})"


def make_judge(judge: JudgeConfig, prompt: JudgePromptConfig, tokenizer, engine: Engine,
               tokens: VerdictTokens | None) -> JudgeBatch:
    """The batch -> rows function of the judge's mode: logprob when `tokens` (the verdict words) are given."""
    base = {"judge": judge.name, "mode": judge.mode, "prompt_name": prompt.name, "prompt_version": prompt.version}
    reply_prefix = prompt.reply_prefix or ""
    if tokens is not None:
        def judge_by_logprobs(ids: list[str], prompts: list[list[int]]) -> list[VerdictRow]:
            logps, tops = engine.next_token_logprobs(prompts, list(tokens.ids))
            rows = []
            for rid, logp, top in zip(ids, logps, tops):
                verdict, p_correct, mass = verdict_from_logprobs(logp, len(tokens.correct), judge.threshold,
                                                                 judge.min_verdict_mass)
                rows.append(VerdictRow(id=rid, **base, verdict=verdict.label, invalid_reason=verdict.reason,
                                       p_correct=None if math.isnan(p_correct) else round(p_correct, 6),
                                       verdict_mass=round(mass, 6),
                                       reply=logprob_reply(reply_prefix, prompt, verdict.label, p_correct, mass,
                                                           tokenizer.decode([int(top)])),
                                       finish_reason=None))
            return rows
        return judge_by_logprobs

    def judge_by_reply(ids: list[str], prompts: list[list[int]]) -> list[VerdictRow]:
        rows = []
        for rid, gen in zip(ids, engine.generate(prompts, prompt.reply_tokens)):
            reply = reply_prefix + generated_text(tokenizer, gen, first_line_only=prompt.stop_at_newline, strip=False)
            verdict = parse_verdict(reply, prompt)
            rows.append(VerdictRow(id=rid, **base, verdict=verdict.label, invalid_reason=verdict.reason,
                                   p_correct=None, verdict_mass=None, reply=reply, finish_reason=gen.finish_reason))
        return rows
    return judge_by_reply
