"""api.style=chat: a model behind a chat-completions endpoint (/v1/chat/completions), the form every hosted API
takes (OpenAI's and the services that copy it), and that vllm serve, SGLang, TGI and llama.cpp's server also answer.

The conversation goes as messages: no tokenizer of the model is needed here, and the server applies its own chat
template. Greedy (temperature 0, seed 0), one request per conversation, `api.concurrency` in flight.

The reply prefix of a judge prompt ("Verdict:") is put in the judge's mouth only with `api.prefill=true`, as a final
assistant message the server continues (`continue_final_message`: vLLM and SGLang do this; hosted APIs mostly do
not). Without it the judge writes the whole reply, and logprob mode reads the verdict where it stands in the reply:
the first token after the prompt's marker ("Verdict:"), or the reply's first token when that is a verdict word. The
probabilities there are the server's top 20 (`top_logprobs`, the most OpenAI gives): a spelling of a verdict word
outside them counts as probability 0, and the manifest says "top 20".
"""

from __future__ import annotations

import math
import re
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..errors import PipelineError
from .openai import Client, served_model_entry

TOP_K = 20
# Texts that chat templates make special tokens of ("<|im_start|>", "<|eot_id|>", "[INST]", "<start_of_turn>", ...):
# without the model's tokenizer, these are defused in every inserted value (a server that renders the template and
# then tokenizes would otherwise read them as markup).
CHAT_MARKUP = re.compile(r"<\|[^<>|\s]{1,40}\|>|</?s>|\[/?INST\]|</?(?:start|end)_of_turn>|<(?:bos|eos|pad|unk)>|"
                         r"\[/?(?:SYSTEM_PROMPT|AVAILABLE_TOOLS|TOOL_RESULTS)\]")
EDGE = " \t\r\n*_`\"'"  # what may surround a verdict word or the marker (markdown emphasis, quotes)


def markup_in(*texts: str) -> tuple[str, ...]:
    """The chat-markup texts found in `texts`, longest first: the `specials` that verdict.insert_field removes."""
    found = {m for t in texts for m in CHAT_MARKUP.findall(str(t))}
    return tuple(sorted(found, key=len, reverse=True))


def plain(token: str) -> str:
    """A reply token as compared with the verdict words: NFKC, its surrounding spaces and emphasis removed, lower."""
    return unicodedata.normalize("NFKC", token).strip(EDGE).lower()


def verdict_position(tokens: list[str], marker: str, words: set[str]) -> int | None:
    """Where the verdict stands in a reply given as its tokens: the first token after the marker ("verdict:",
    case-insensitive, emphasis around it allowed), or the first token when it is a verdict word; None otherwise."""
    marker = plain(marker)
    if tokens and plain(tokens[0]) in words:
        return 0
    text = ""
    for i, tok in enumerate(tokens):
        if i and marker and plain(text).endswith(marker) and plain(tok):
            return i
        text += tok
    return None


@dataclass
class Reply:
    """One conversation's reply: its text, why it ended, and per token its text and top log-probabilities."""

    text: str
    finish_reason: str | None
    tokens: list[str]
    top: list[dict[str, float]]  # per token: text -> log P (the top `TOP_K`; repeated texts keep the largest)
    logprobs: list[float] | None = None  # per token: log P of the token written (None: the server gave none)
    written: int | None = None  # tokens the server says it wrote (its usage.completion_tokens)


class ChatEngine:
    """The model behind `api.base_url`, asked with messages; `describe()` for the manifest."""

    name = "openai"

    def __init__(self, api, model_name: str | None, key: str | None, what: str):
        self.client = Client(api, key, what)
        self.model_name, self.prefill = model_name, bool(api.prefill)
        self.concurrency = max(1, api.concurrency)
        self.pool = ThreadPoolExecutor(max_workers=self.concurrency)
        self.server_model = None
        self.server: dict | None = None  # the vLLM server this stage started (engine=vllm)
        self.verdict_logprobs = None

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def check_model(self) -> dict:
        self.model_name, self.server_model = served_model_entry(self.client, self.model_name)
        return self.server_model

    def replies(self, conversations: list[list[dict]], prefix: str, max_tokens: int, stop_at_newline: bool,
                logprobs: bool, top: int = TOP_K, required: bool = True) -> list[Reply]:
        """Greedy replies, in order. `prefix` (with api.prefill) is the start of the reply, continued by the server;
        the replies' text and tokens are what the server wrote after it. With `logprobs` each token's log P is asked
        for, with the `top` alternatives; a server that gives none is refused when they are `required`."""
        def send(messages: list[dict]) -> Reply:
            body = {"model": self.model_name, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
                    "seed": 0}
            if self.prefill and prefix:
                body.update(messages=[*messages, {"role": "assistant", "content": prefix}],
                            continue_final_message=True, add_generation_prompt=False)
            if stop_at_newline:
                body["stop"] = ["\n"]
            if logprobs:
                body.update(logprobs=True, **({"top_logprobs": top} if top else {}))
            return self.read(self.client.request("chat/completions", body), logprobs, required)

        return list(self.pool.map(send, conversations))

    def read(self, reply: dict, logprobs: bool, required: bool = True) -> Reply:
        choices = reply.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise PipelineError(f"{self.client.what}: the server's chat reply holds no choices: it may not be a "
                                "chat-completions endpoint (api.style=completions for a plain completions server).")
        c = choices[0]
        text = str((c.get("message") or {}).get("content") or "")
        content = (c.get("logprobs") or {}).get("content")
        if logprobs and required and not isinstance(content, list):
            raise PipelineError(
                f"{self.client.what}: the server returned no log-probabilities, which judge.mode=logprob needs; use "
                "judge.mode=generate with this server (a verdict parsed from the reply).")
        tokens, top, chosen = [], [], []
        for entry in content or []:
            tokens.append(str(entry.get("token", "")))
            lp = entry.get("logprob")
            chosen.append(float(lp) if isinstance(lp, (int, float)) and math.isfinite(float(lp)) else None)
            seen: dict[str, float] = {}
            for t in entry.get("top_logprobs") or []:
                tok, lp = str(t.get("token", "")), t.get("logprob")
                if lp is not None and math.isfinite(float(lp)):
                    seen[tok] = max(seen.get(tok, -math.inf), float(lp))
            top.append(seen)
        if logprobs and required:
            self.verdict_logprobs = f"top {TOP_K}"
        usable = isinstance(content, list) and None not in chosen
        written = (reply.get("usage") or {}).get("completion_tokens")
        return Reply(text, c.get("finish_reason"), tokens, top, chosen if usable else None,
                     written if isinstance(written, int) else None)

    def describe(self) -> dict:
        return {"engine": "vllm" if self.server else self.name, **({"server": self.server} if self.server else {}),
                "style": "chat", "prefill": self.prefill, "base_url": self.client.base_url, "model": self.model_name,
                "server_model": self.server_model, "verdict_logprobs": self.verdict_logprobs,
                "usage": self.client.usage.to_dict()}


def first_line_end(tokens: list[str]) -> int | None:
    """Index of the token that ends a reply's first line under the hf engine's stop rule (a newline once non-blank
    text has been written, so blank lines before the answer do not end it); None when no token does."""
    seen_text = False
    for k, tok in enumerate(tokens):
        if "\n" in tok and (seen_text or tok.split("\n", 1)[0].strip()):
            return k
        seen_text |= bool(tok.strip())
    return None


def answer_of(reply: Reply, first_line_only: bool) -> tuple[str, str | None, int | None]:
    """A generator's reply as an answer: (text, finish reason, how many of its tokens the answer holds).

    The reply is cut here, not by a stop string sent to the server, so that the cut is the hf engine's: at the first
    newline after non-blank text. Finish reasons are the hf engine's words: "newline" (cut there), "eos" (the server
    ended the reply: "stop"), "length" (max_new_tokens); any other the server gives ("content_filter") is kept."""
    text, reason = reply.text, {"stop": "eos", "length": "length"}.get(str(reply.finish_reason),
                                                                        reply.finish_reason)
    kept = len(reply.tokens) if reply.logprobs is not None else None
    if first_line_only:
        body = text.lstrip()
        if "\n" in body:
            text, reason = body.split("\n", 1)[0], "newline"
            end = first_line_end(reply.tokens) if kept is not None else None
            kept = end + 1 if end is not None else kept
    return text.strip(), reason, kept
