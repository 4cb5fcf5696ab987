"""engine=hf: the model loaded in this process through transformers (placed by the plan, verified as loaded), and
decoded by decoding.py: the stage-wide prompt prefix run once, finished rows dropped from the batch at once."""

from __future__ import annotations

from ..decoding import Generation, PrefixCache, StopRule, greedy_batch, next_token_logprobs


class HfEngine:
    name = "hf"

    def __init__(self, model, tokenizer, stop_at_newline: bool, prefix: PrefixCache | None = None):
        self.model = model
        self.prefix = prefix
        self.stop = StopRule.build(tokenizer, model, stop_at_newline)

    def next_token_logprobs(self, prompts: list[list[int]], token_ids: list[int]):
        return next_token_logprobs(self.model, prompts, token_ids, stage_prefix=self.prefix)

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> list[Generation]:
        return greedy_batch(self.model, prompts, max_new_tokens, self.stop, stage_prefix=self.prefix)

    def describe(self) -> dict:
        return {"engine": self.name, "prefix_runs": self.prefix.runs if self.prefix else 0}
