"""The one interface every engine offers the stages, and what they share.

    engine.next_token_logprobs(prompts, token_ids)  -> (log P(each of token_ids | prompt) per prompt, top token id)
    engine.generate(prompts, max_new_tokens)        -> a Generation per prompt (greedy; stops as the StopRule says)
    engine.describe()                               -> what the manifest records: engine, server, tokens used

Prompts are lists of token ids made by the stage with the model's own tokenizer, so every engine sees exactly the
same input; each engine computes the same quantities (the full-vocabulary log-softmax at the first reply position;
greedy tokens cut by the same stop rule), which is what makes their verdicts and answers comparable.

A hosted API takes messages, not token ids: engines/chat.py (api.style=chat) offers `replies(conversations, ...)`
instead, and judges.make_chat_judge reads the same verdicts from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..decoding import Generation


class Engine(Protocol):
    name: str

    def next_token_logprobs(self, prompts: list[list[int]], token_ids: list[int]) -> tuple[list[list[float]],
                                                                                            list[int]]: ...

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> list[Generation]: ...

    def describe(self) -> dict: ...


@dataclass
class Usage:
    """Tokens and requests a served engine was asked for (what a judge cost), counted as replies arrive."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    retries: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # what the retried failures were, by kind

    def add_reply(self, usage: dict | None) -> None:
        self.requests += 1
        if usage:
            self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.completion_tokens += int(usage.get("completion_tokens") or 0)

    def add_retry(self, kind: str) -> None:
        self.retries += 1
        self.failures[kind] = self.failures.get(kind, 0) + 1

    def to_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "requests": self.requests, "retries": self.retries, "retried_failures": dict(self.failures)}
