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
from .verdict import CORRECT, INCORRECT, INVALID, VerdictTokens, parse_verdict, verdict_from_logprobs

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


ChatJudgeBatch = Callable[[list[str], list[list[dict]]], list[VerdictRow]]


def make_chat_judge(judge: JudgeConfig, prompt: JudgePromptConfig, engine) -> ChatJudgeBatch:
    """The same two modes on a chat engine (engines/chat.py), called on a batch of answers' conversations. Logprob
    mode reads P(correct) where the verdict stands in the reply (after the prefilled prefix: its first token); the
    verdict words' spellings are those of the top log-probabilities there."""
    from .engines.chat import plain, verdict_position

    base = {"judge": judge.name, "mode": judge.mode, "prompt_name": prompt.name, "prompt_version": prompt.version}
    prefix = prompt.reply_prefix or ""
    prefilled = prefix if engine.prefill else ""
    # Without the prefix in its mouth the judge also writes it: room for it ("**Verdict:**" is up to 8 tokens).
    extra = 8 if prefix and not prefilled else 0
    correct = {w.lower() for w in prompt.correct_words}
    incorrect = {w.lower() for w in prompt.incorrect_words}

    if judge.mode == "logprob":
        def judge_by_logprobs(ids: list[str], conversations: list[list[dict]]) -> list[VerdictRow]:
            rows = []
            for rid, r in zip(ids, engine.replies(conversations, prefix, 1 + extra, prompt.stop_at_newline, True)):
                at = 0 if prefilled else verdict_position(r.tokens, prompt.marker, correct | incorrect)
                if at is None or at >= len(r.top):
                    rows.append(VerdictRow(
                        id=rid, **base, verdict=INVALID, p_correct=None, verdict_mass=None, finish_reason=None,
                        invalid_reason=f"no verdict in the reply: it neither opens with a verdict word nor has "
                                       f"'{prompt.marker.strip()}' before one", reply=prefilled + r.text))
                    continue
                top = r.top[at]
                logps = [lp for t, lp in top.items() if plain(t) in correct] + \
                        [lp for t, lp in top.items() if plain(t) in incorrect]
                n_correct = sum(1 for t in top if plain(t) in correct)
                verdict, p_correct, mass = verdict_from_logprobs(logps, n_correct, judge.threshold,
                                                                 judge.min_verdict_mass)
                said = (prefilled + "".join(r.tokens[:at])).rstrip() or prefix
                rows.append(VerdictRow(id=rid, **base, verdict=verdict.label, invalid_reason=verdict.reason,
                                       p_correct=None if math.isnan(p_correct) else round(p_correct, 6),
                                       verdict_mass=round(mass, 6),
                                       reply=logprob_reply(said, prompt, verdict.label, p_correct, mass,
                                                           r.tokens[at]),
                                       finish_reason=None))
            return rows
        return judge_by_logprobs

    def judge_by_reply(ids: list[str], conversations: list[list[dict]]) -> list[VerdictRow]:
        rows = []
        replies = engine.replies(conversations, prefix, prompt.reply_tokens + extra, prompt.stop_at_newline, False)
        for rid, r in zip(ids, replies):
            reply = prefilled + r.text
            verdict = parse_verdict(reply, prompt)
            rows.append(VerdictRow(id=rid, **base, verdict=verdict.label, invalid_reason=verdict.reason,
                                   p_correct=None, verdict_mass=None, reply=reply, finish_reason=r.finish_reason))
        return rows
    return judge_by_reply
