"""A small HTTP proxy in front of a real OpenAI-compatible server that fails some requests on purpose, for the faults a
real server will not produce on demand: 429 (with Retry-After), 500, a reply slower than the client waits for, and a
JSON body cut short. Everything else is forwarded as is.

    with FaultProxy(upstream="http://127.0.0.1:8000", rate=0.3, seed=1) as proxy:
        proxy.url       # http://127.0.0.1:<port>, to use instead of the upstream
        proxy.counts    # {"forwarded": n, "429": n, "500": n, "slow": n, "cut": n}
        proxy.auth      # the Authorization headers it saw
        proxy.prompts   # prompts forwarded in completion requests

fail_after=N: after N forwarded completion requests every later one is a 500 (a server that went down);
reject_with=401: every request refused with that status, the message echoing the key it was sent (as some APIs do).
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("429", "500", "slow", "cut")


class FaultProxy:
    def __init__(self, upstream: str, rate: float, seed: int = 0, slow_s: float = 3.0, faults=FAULTS,
                 delay_s: float = 0.0, fail_after: int | None = None, reject_with: int | None = None):
        self.upstream, self.rate, self.slow_s, self.faults = upstream.rstrip("/"), rate, slow_s, faults
        self.delay_s, self.fail_after, self.reject_with = delay_s, fail_after, reject_with
        self.prompts = 0
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.counts = {"forwarded": 0, **{f: 0 for f in FAULTS}}
        self.auth: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                proxy.handle(self, None)

            def do_POST(self):
                proxy.handle(self, self.rfile.read(int(self.headers.get("Content-Length") or 0)))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FaultProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def pick(self) -> str | None:
        with self.lock:
            fault = self.random.choice(self.faults) if self.random.random() < self.rate else None
            self.counts[fault or "forwarded"] += 1
            return fault

    def handle(self, h: BaseHTTPRequestHandler, body: bytes | None) -> None:
        auth = h.headers.get("Authorization") or ""
        with self.lock:
            self.auth.append(auth)
        if self.reject_with:
            message = json.dumps({"error": {"message": f"Incorrect API key provided: {auth.removeprefix('Bearer ')}"}})
            return self.reply(h, self.reject_with, message.encode())
        completion = h.path.endswith("/completions")
        if completion and self.fail_after is not None and self.counts["forwarded"] >= self.fail_after:
            return self.reply(h, 500, b'{"error": {"message": "the server went down"}}')
        fault = self.pick() if completion else None
        if fault == "429":
            return self.reply(h, 429, b'{"error": {"message": "rate limited"}}', {"Retry-After": "0"})
        if fault == "500":
            return self.reply(h, 500, b'{"error": {"message": "internal error"}}')
        if fault == "slow":
            time.sleep(self.slow_s)  # the client has given up by now; whatever follows is not read
        if self.delay_s:
            time.sleep(self.delay_s)
        if completion and fault is None:
            with self.lock:
                self.prompts += len(json.loads(body).get("prompt") or [])
        req = urllib.request.Request(self.upstream + h.path, data=body, method=h.command,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                status, data = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, data = e.code, e.read()
        if fault == "cut":
            data = data[: max(1, len(data) // 2)]
        self.reply(h, status, data)

    @staticmethod
    def reply(h: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict | None = None) -> None:
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
