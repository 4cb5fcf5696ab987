"""engine=openai: a model behind an OpenAI-compatible server (vllm serve, SGLang, ...), asked over HTTP.

Prompts go to /v1/completions as token ids of the model's own tokenizer: the same ids the hf engine runs, the chat
template already applied. Greedy (temperature 0, seed 0).
  logprob   one token; the log-probabilities of exactly the verdict spellings' ids (vLLM's `logprob_token_ids`),
            or, from a server without it, its top 20 (a spelling outside them counts as probability 0; the
            manifest says which); a server that returns none is refused before judging, advising generate mode
  generate  the reply's token ids (`return_token_ids`), cut by the same stop rule as the hf engine's decoding

Faults: 429, 5xx, timeouts, refused connections and replies that are not the expected JSON are retried with
exponential backoff and jitter, obeying Retry-After; other HTTP errors (a wrong model name, a bad key) stop at once.
When the tries run out the stage stops with one line, keeping every record written so far. The API key is read
from the environment variable api.key_env names, sent only in the Authorization header, and masked in every message.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from ..decoding import Generation, StopRule
from ..errors import PipelineError
from .base import Usage

log = logging.getLogger(__name__)

RETRIED_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
TOP_K = 20  # top log-probabilities asked of a server that cannot return chosen token ids
LONGEST_WAIT_S = 3600.0  # a Retry-After beyond this is not waited for


class Transient(Exception):
    """A failure worth another try: its kind ('HTTP 429', 'timeout', ...) and the wait the server asked for."""

    def __init__(self, kind: str, retry_after: float | None = None):
        super().__init__(kind)
        self.kind, self.retry_after = kind, retry_after


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header: seconds, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class Client:
    """POSTs JSON to an OpenAI-compatible server with retries; counts tokens and failures in `usage`."""

    def __init__(self, api, key: str | None, what: str):
        if not api.base_url:
            raise PipelineError(f"{what}: engine=openai needs the server's address: set api.base_url "
                                "(e.g. http://localhost:8000/v1).")
        self.base_url = api.base_url.rstrip("/")
        self.api, self.key, self.what = api, key, what
        self.usage = Usage()
        self._lock = threading.Lock()

    def mask(self, text: str) -> str:
        return text.replace(self.key, "***") if self.key else text

    def request(self, path: str, body: dict | None = None) -> dict:
        """The decoded JSON reply to one request (POST with a body, else GET), after as many tries as allowed."""
        url = f"{self.base_url}/{path.lstrip('/')}"
        last, tries = "no try", 0
        for attempt in range(self.api.retries + 1):
            tries = attempt + 1
            try:
                reply = self._once(url, body)
                with self._lock:
                    self.usage.add_reply(reply.get("usage"))
                return reply
            except Transient as e:
                last = e.kind
                if attempt == self.api.retries:
                    break
                wait = min(self.api.max_backoff_s, self.api.backoff_s * 2 ** attempt) * random.uniform(0.5, 1.0)
                if e.retry_after is not None:
                    if e.retry_after > LONGEST_WAIT_S:
                        last = f"{e.kind}, asking to wait {e.retry_after:.0f} s (more than {LONGEST_WAIT_S:.0f})"
                        break
                    wait = max(wait, e.retry_after)
                with self._lock:
                    self.usage.add_retry(e.kind)
                log.warning("%s: %s from %s; try %d of %d in %.1f s", self.what, e.kind, url, attempt + 2,
                            self.api.retries + 1, wait)
                time.sleep(wait)
        raise PipelineError(
            f"{self.what}: {tries} tries of {url} failed, the last with {last}. Every record written "
            "so far is kept: run the same command again to resume, or raise api.retries / api.timeout_s.")

    def _once(self, url: str, body: dict | None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        req = urllib.request.Request(url, data=data, headers=headers, method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(req, timeout=self.api.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            if e.code in RETRIED_STATUS:
                raise Transient(f"HTTP {e.code}", retry_after_seconds(e.headers.get("Retry-After"))) from None
            raise PipelineError(f"{self.what}: the server at {self.base_url} refused the request: HTTP {e.code} "
                                f"{e.reason}: {self.mask(error_message(e))}") from None
        except (TimeoutError, socket.timeout):
            raise Transient("a timeout") from None
        except http.client.HTTPException:  # a reply cut off mid-body, a broken status line
            raise Transient("a broken reply") from None
        except (urllib.error.URLError, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            kind = "a timeout" if isinstance(reason, (TimeoutError, socket.timeout)) else "no connection"
            raise Transient(kind) from None
        try:
            reply = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise Transient("a reply that is not JSON") from None
        if not isinstance(reply, dict):
            raise Transient("a reply that is not a JSON object")
        return reply


def error_message(e: urllib.error.HTTPError) -> str:
    """The server's own words about an error (its JSON `error.message` or `message`), on one line."""
    try:
        body = e.read().decode("utf-8", "replace")
    except OSError:
        return ""
    try:
        data = json.loads(body)
        err = data.get("error", data) if isinstance(data, dict) else data
        text = err.get("message", body) if isinstance(err, dict) else str(err)
    except (json.JSONDecodeError, AttributeError):
        text = body
    return " ".join(str(text).split())[:300]


def token_id(key: str) -> int | None:
    """'token_id:1234' (return_tokens_as_token_ids) -> 1234."""
    return int(key.split(":", 1)[1]) if isinstance(key, str) and key.startswith("token_id:") else None


def served_model_entry(client: Client, model_name: str | None) -> tuple[str, dict]:
    """The model's name and its entry in the server's /v1/models; a server that does not serve `model_name` is
    refused. Without a name, the server's only model (a server with several is asked which)."""
    reply = client.request("models")
    served = [m for m in reply.get("data") or [] if isinstance(m, dict)]
    ids = [m.get("id") for m in served]
    if model_name is None and len(ids) == 1:
        model_name = ids[0]
    elif model_name is None:
        raise PipelineError(f"{client.what}: the server at {client.base_url} serves {ids or 'no model'}: say which "
                            "with api.model.")
    if model_name not in ids:
        raise PipelineError(f"{client.what}: the server at {client.base_url} serves {ids or 'no model'}, not "
                            f"{model_name!r}: set api.model to one of them.")
    return model_name, {k: v for k, v in served[ids.index(model_name)].items()
                        if k in ("id", "root", "owned_by", "max_model_len", "created")}


class OpenAIEngine:
    """The model behind `api.base_url`, asked with token-id prompts; `describe()` for the manifest."""

    name = "openai"

    def __init__(self, api, model_name: str | None, key: str | None, tokenizer, stop: StopRule, what: str):
        self.client = Client(api, key, what)
        self.model_name, self.tokenizer, self.stop = model_name, tokenizer, stop
        self.pool = ThreadPoolExecutor(max_workers=max(1, api.concurrency))
        self.concurrency = max(1, api.concurrency)
        self.verdict_logprobs = None  # 'exact' or f'top {TOP_K}', once seen
        self.server_model = None
        self.server: dict | None = None  # the vLLM server this stage started (engine=vllm)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def check_model(self) -> dict:
        self.model_name, self.server_model = served_model_entry(self.client, self.model_name)
        return self.server_model

    def _complete(self, prompts: list[list[int]], body: dict) -> list[dict]:
        """Choices for `prompts` in their order: split into up to `concurrency` requests sent at once."""
        if not prompts:
            return []
        size = -(-len(prompts) // self.concurrency)
        parts = [prompts[i:i + size] for i in range(0, len(prompts), size)]

        def send(part: list[list[int]]) -> list[dict]:
            reply = self.client.request("completions", {"model": self.model_name, "prompt": part, "temperature": 0,
                                                        "seed": 0, **body})
            choices = reply.get("choices")
            if not isinstance(choices, list) or len(choices) != len(part):
                raise PipelineError(f"{self.client.what}: the server answered {len(choices or [])} of {len(part)} "
                                    "prompts in one request; it may not take a list of token-id prompts.")
            return sorted(choices, key=lambda c: c.get("index", 0))

        return [c for chunk in self.pool.map(send, parts) for c in chunk]

    def next_token_logprobs(self, prompts: list[list[int]], token_ids: list[int]):
        choices = self._complete(prompts, {"max_tokens": 1, "logprobs": TOP_K, "logprob_token_ids": token_ids,
                                           "return_tokens_as_token_ids": True})
        logps, tops = [], []
        for c in choices:
            lp = c.get("logprobs") or {}
            tops_seen = (lp.get("top_logprobs") or [None])[0]
            if not isinstance(tops_seen, dict):
                raise PipelineError(
                    f"{self.client.what}: the server returned no log-probabilities, which judge.mode=logprob needs; "
                    "use judge.mode=generate with this server (a verdict parsed from the reply).")
            by_id = {token_id(k): v for k, v in tops_seen.items()}
            exact = all(t in by_id for t in token_ids)
            self.verdict_logprobs = self.verdict_logprobs or ("exact" if exact else f"top {TOP_K}")
            logps.append([float(by_id.get(t, float("-inf"))) for t in token_ids])
            top = token_id((lp.get("tokens") or [None])[0])
            tops.append(top if top is not None else max(by_id, key=by_id.get))
        return logps, tops

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> list[Generation]:
        choices = self._complete(prompts, {"max_tokens": max_new_tokens, "logprobs": 0, "return_token_ids": True,
                                           "return_tokens_as_token_ids": True, "skip_special_tokens": False})
        out = []
        for c in choices:
            lp = c.get("logprobs") or {}
            ids = c.get("token_ids")
            if ids is None:
                ids = [token_id(t) for t in lp.get("tokens") or []]
            if ids is None or any(i is None for i in ids):
                ids = self.tokenizer.encode(c.get("text") or "", add_special_tokens=False)
            logprobs = [float(x) if x is not None else 0.0 for x in (lp.get("token_logprobs") or [])]
            logprobs = (logprobs + [0.0] * len(ids))[:len(ids)]
            out.append(self.stop.cut(list(ids), logprobs, stopped=c.get("finish_reason") == "stop"))
        return out

    def describe(self) -> dict:
        return {"engine": "vllm" if self.server else self.name, **({"server": self.server} if self.server else {}),
                "base_url": self.client.base_url, "model": self.model_name,
                "server_model": self.server_model, "verdict_logprobs": self.verdict_logprobs,
                "usage": self.client.usage.to_dict()}
