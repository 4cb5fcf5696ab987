#!/usr/bin/env python3
"""Open a page in a real headless Chromium and report what it did: DOM, console, errors, requests, screenshot.

For tests of the self-contained HTML pages the project writes (one file, everything inline, no network)::

    path = chromium_or_skip()                      # Debian's chromium, apt-get installed on first use as root
    page = load(tmp_path / "report.html", screenshot=tmp_path / "report.png")
    assert not page.errors
    assert all(u == page.url or u.startswith("data:") for u in page.requests)
    rows = elements(page.dom, "tr", data_id=True)

Each `load` starts its own browser with a fresh profile under a new temporary directory, so two tests (or two
pytest processes) can load pages at once. The browser is driven over the DevTools protocol on a pipe
(`--remote-debugging-pipe`), not with `--dump-dom`: Chromium 150 logs a web page's console messages to stderr
without their level (console.log and console.error both come out as `INFO:CONSOLE`), and neither stderr nor the
net log shows file: or data: loads (a missing `style.css` next to the page is not logged at all), so the plain
command line cannot tell a test what it needs. Virtual time is used as `--virtual-time-budget` does: once the
page is loaded, timers run for `budget_ms` of virtual time (paused while network fetches are pending), then the
DOM is read. The net log (`--log-net-log`) is kept as a second witness of network requests.

By default the browser is offline: every host name but localhost resolves to nothing
(`--host-resolver-rules`), so a page that reaches for the network fails fast and its request is still listed.

Only the standard library is used (pytest only inside `chromium_or_skip`), so the module can be run on its
own: `python tests/browser.py page.html [shot.png]` prints what `load` saw.
"""

from __future__ import annotations

import base64
import fcntl
import functools
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

PACKAGES = ("chromium",)
BINARY = "chromium"
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/bin", "/usr/bin", "/bin"])
INSTALL_LOCK = Path(tempfile.gettempdir()) / "tests-browser-install.lock"
TIMEOUT_S = 60.0
CLOSE_TIMEOUT_S = 10.0

# Flags for a quiet, reproducible browser: no first-run UI, no background traffic of its own, no crash reporter.
BASE_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-default-apps",
    "--disable-extensions", "--disable-breakpad", "--disable-domain-reliability", "--mute-audio",
    "--hide-scrollbars", "--password-store=basic", "--enable-logging=stderr", "--v=0",
)
OFFLINE_FLAG = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost"

ERROR_CONSOLE_TYPES = {"error", "warning", "assert"}
ERROR_LOG_LEVELS = {"error", "warning"}


class BrowserError(RuntimeError):
    """Chromium could not be started, did not answer, did not finish in time, or could not open the page."""


# --------------------------------------------------------------------------------------------- availability

def _which(name: str) -> str | None:
    return shutil.which(name, path=SEARCH_PATH)


def available() -> tuple[bool, str]:
    """Whether Chromium is here or can be installed: `(True, "")`, or `(False, reason)` for a test skip."""
    if _which(BINARY):
        return True, ""
    if not sys.platform.startswith("linux"):
        return False, f"no {BINARY} on PATH, and installing it needs Debian's apt-get on Linux, not {sys.platform}"
    if os.geteuid() != 0:
        return False, f"no {BINARY} on PATH, and installing it with apt-get needs root (running as uid {os.geteuid()})"
    if _which("apt-get") is None:
        return False, f"no {BINARY} on PATH and no apt-get to install it"
    return True, ""


@functools.cache
def ensure_chromium() -> str:
    """The path of `chromium`, apt-get installing Debian's package first when it is missing (as root: on failure
    the index is refreshed and the install retried once). Raises RuntimeError when it cannot be had; call
    `available()` first for a reason to skip instead."""
    found = _which(BINARY)
    if found:
        return found
    ok, why = available()
    if not ok:
        raise RuntimeError(why)
    with open(INSTALL_LOCK, "w") as lock:  # two pytest processes: one installs, the other waits and finds it
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _which(BINARY):
            install_packages()
    found = _which(BINARY)
    if not found:
        raise RuntimeError(f"apt-get installed {' '.join(PACKAGES)} but there is still no {BINARY} on PATH")
    return found


def install_packages() -> None:
    """apt-get install chromium (no recommends); on failure refresh the index and retry once."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wait = ["-o", "DPkg::Lock::Timeout=900"]  # another apt-get at work (the local SLURM's install): wait for it
    install = ["apt-get", *wait, "install", "-y", "--no-install-recommends", *PACKAGES]
    result = subprocess.run(install, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        subprocess.run(["apt-get", *wait, "update"], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        result = subprocess.run(install, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0 or not _which(BINARY):
        raise RuntimeError(f"could not install {' '.join(PACKAGES)} (apt-get status {result.returncode}):\n"
                           f"{_last_lines(result.stdout + chr(10) + result.stderr)}")


def chromium_or_skip() -> str:
    """The path of `chromium` (installed if need be), or `pytest.skip` with the reason it cannot be had here."""
    import pytest

    ok, why = available()
    if not ok:
        pytest.skip(why)
    return ensure_chromium()


# ------------------------------------------------------------------------------------------------ the page

@dataclass
class Page:
    """What the browser saw. `console` holds every console message as "level: text" (console API calls, the
    browser's own messages such as CSP violations and failed loads, and uncaught exceptions as
    "uncaught: ..."); `errors` the errors and warnings among them. `requests` lists every URL the page asked
    for, once each in order: the page itself, file: and data: URLs and network URLs, including those that CSP
    blocked or that failed; `failed` says which failed and why ("URL: net::ERR_FILE_NOT_FOUND",
    "URL: blocked (csp)"). `seconds` is the wall time from starting the browser to having the DOM."""

    url: str
    dom: str
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    screenshot: Path | None = None


def page_url(url_or_path: str | Path) -> str:
    """A URL as it is; a path (str or Path) as an absolute file:// URL."""
    if isinstance(url_or_path, str) and re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", url_or_path) and len(
            url_or_path.split(":", 1)[0]) > 1:  # not a Windows drive letter
        return url_or_path
    return Path(url_or_path).resolve().as_uri()


def load(url_or_path: str | Path, *, scripts: bool = True, budget_ms: int = 5000,
         window: tuple[int, int] = (1280, 2000), screenshot: Path | None = None, offline: bool = True,
         timeout: float = TIMEOUT_S) -> Page:
    """Open a page in a fresh headless Chromium, let it run for `budget_ms` of virtual time, and return what it
    did. `scripts=False` opens it with JavaScript off. `window` is the viewport (width, height) in CSS pixels;
    `screenshot`, when given, is written there as a PNG of exactly that size. Raises BrowserError when the page
    cannot be opened or the whole load takes longer than `timeout` seconds."""
    binary = ensure_chromium()
    url = page_url(url_or_path)
    width, height = window
    work = Path(tempfile.mkdtemp(prefix="chromium-"))
    net_log, stderr_path = work / "netlog.json", work / "stderr.txt"
    flags = [*BASE_FLAGS, f"--user-data-dir={work / 'profile'}", f"--log-net-log={net_log}",
             f"--window-size={width},{height}", "--remote-debugging-pipe"]
    if offline:
        flags.append(OFFLINE_FLAG)
    if not scripts:
        flags.append("--blink-settings=scriptEnabled=false")
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    try:
        with _Browser([binary, *flags, "about:blank"], stderr_path, deadline, f"loading {url}") as browser:
            try:
                dom, events = _visit(browser, url, scripts, budget_ms, width, height)
                seconds = time.monotonic() - started
                if screenshot is not None:
                    shot = browser.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False},
                                        browser.session)
                    screenshot = Path(screenshot)
                    screenshot.parent.mkdir(parents=True, exist_ok=True)
                    screenshot.write_bytes(base64.b64decode(shot["data"]))
                events += browser.drain()
            except BrowserError as e:
                raise BrowserError(f"{e}\n--- chromium stderr (last lines) ---\n{_chromium_log(stderr_path)}") from None
        page = _page(url, dom, events, seconds, screenshot)
        for extra in net_log_urls(net_log):
            if extra not in page.requests:
                page.requests.append(extra)
        return page
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _visit(browser: _Browser, url: str, scripts: bool, budget_ms: int, width: int, height: int) -> tuple[str, list]:
    target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
        "sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network", "Inspector"):
        browser.call(f"{domain}.enable", {}, session)
    browser.call("Emulation.setDeviceMetricsOverride",
                 {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
    if not scripts:
        browser.call("Emulation.setScriptExecutionDisabled", {"value": True}, session)
    browser.call("Emulation.setVirtualTimePolicy", {"policy": "pause"}, session)
    nav = browser.call("Page.navigate", {"url": url}, session)
    if nav.get("errorText"):
        raise BrowserError(f"chromium could not open {url}: {nav['errorText']}")
    browser.call("Emulation.setVirtualTimePolicy",
                 {"policy": "pauseIfNetworkFetchesPending", "budget": budget_ms}, session)
    browser.wait_for("Emulation.virtualTimeBudgetExpired", session)
    root = browser.call("DOM.getDocument", {"depth": 0}, session)["root"]["nodeId"]
    dom = browser.call("DOM.getOuterHTML", {"nodeId": root}, session)["outerHTML"]
    return dom, browser.drain()


def _page(url: str, dom: str, events: list[dict], seconds: float, screenshot: Path | None) -> Page:
    page = Page(url=url, dom=dom, seconds=seconds, screenshot=screenshot)
    ids = {e["params"].get("requestId"): e["params"].get("request", {}).get("url") for e in events
           if e.get("method") == "Network.requestWillBeSent" and "params" in e}

    def say(text: str, is_error: bool) -> None:
        page.console.append(text)
        if is_error:
            page.errors.append(text)

    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled":
            kind = params.get("type", "log")
            text = " ".join(_remote_text(arg) for arg in params.get("args", []))
            say(f"{kind}: {text}{_where(params.get('stackTrace'))}", kind in ERROR_CONSOLE_TYPES)
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            level, text, where = entry.get("level", "info"), entry.get("text", ""), entry.get("url", "")
            if entry.get("source") == "network" and where and where not in text:
                text = f"{text} ({where})"
            say(f"{level}: {text}", level in ERROR_LOG_LEVELS)
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "exception")
            where = f" ({details['url']}:{details.get('lineNumber', 0) + 1})" if details.get("url") else ""
            where = "" if details.get("url", "") in text else where
            say(f"uncaught: {text}{where}", True)
        elif method in ("Inspector.targetCrashed", "Target.targetCrashed"):
            say("error: the page crashed", True)
        elif method == "Network.requestWillBeSent":
            request_url = params.get("request", {}).get("url", "")
            if request_url and request_url not in page.requests:
                page.requests.append(request_url)
        elif method == "Network.loadingFailed":
            reason = params.get("errorText") or ""
            if params.get("blockedReason"):
                reason = f"blocked ({params['blockedReason']})"
            page.failed.append(f"{ids.get(params.get('requestId'), params.get('requestId'))}: {reason}")
    return page


def _remote_text(arg: dict) -> str:
    """A console argument (a DevTools RemoteObject) as console.log would print it, roughly."""
    if "value" in arg:
        value = arg["value"]
        return value if isinstance(value, str) else json.dumps(value)
    if "unserializableValue" in arg:
        return arg["unserializableValue"]
    if arg.get("type") == "undefined":
        return "undefined"
    return arg.get("description", arg.get("type", "?"))


def _where(stack: dict | None) -> str:
    frames = (stack or {}).get("callFrames") or []
    if not frames or not frames[0].get("url"):
        return ""
    return f" ({frames[0]['url']}:{frames[0].get('lineNumber', 0) + 1})"


# --------------------------------------------------------------------------------- the DevTools pipe

class _Browser:
    """A Chromium process and its DevTools pipe: messages are JSON, each ended by a NUL byte; the browser reads
    commands on its fd 3 and writes answers and events on its fd 4."""

    def __init__(self, argv: list[str], stderr_path: Path, deadline: float, doing: str = "its work"):
        self.argv, self.stderr_path, self.deadline, self.doing = argv, stderr_path, deadline, doing
        self.timeout = deadline - time.monotonic()
        self.next_id, self.buffer, self.pending, self.session = 0, b"", [], None

    def __enter__(self) -> _Browser:
        to_browser, self.commands = os.pipe()
        self.answers, from_browser = os.pipe()
        # bash (not dash, which stops at fd 9) moves the two ends onto the fds 3 and 4 the browser expects.
        high_in, high_out = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_browser, from_browser))
        os.close(to_browser)
        os.close(from_browser)
        shell = f'exec "$@" 3<&{high_in} 4>&{high_out} {high_in}<&- {high_out}>&-'
        bash = shutil.which("bash") or "/bin/bash"
        try:
            with open(self.stderr_path, "wb") as err:
                self.process = subprocess.Popen([bash, "-c", shell, "bash", *self.argv], pass_fds=(high_in, high_out),
                                                stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                                start_new_session=True)
        except OSError as e:
            self._close_fds()
            raise BrowserError(f"could not start {self.argv[0]}: {e}") from None
        finally:
            os.close(high_in)
            os.close(high_out)
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.process.poll() is None:
                self._close_browser()
        finally:
            try:  # the browser's own process group (start_new_session): its renderers and zygotes, nothing else
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.process.wait()
            self._close_fds()

    def _close_browser(self) -> None:
        """Browser.close, reading (and dropping) what it still sends until it closes the pipe, so that it never
        blocks on a full pipe and gets to finish its net log; then wait for it to exit."""
        try:
            self.send("Browser.close")
        except OSError:
            return
        end = time.monotonic() + CLOSE_TIMEOUT_S
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([self.answers], [], [], left)
            if ready and not os.read(self.answers, 1 << 16):
                break
        try:
            self.process.wait(max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass

    def _close_fds(self) -> None:
        for fd in (self.commands, self.answers):
            try:
                os.close(fd)
            except OSError:
                pass

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self.commands, data):]
        return self.next_id

    def receive(self) -> dict:
        while b"\0" not in self.buffer:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"chromium timed out after {self.timeout:.0f} s {self.doing} (a page whose "
                                   f"scripts or fetches never settle, or a stuck browser)")
            ready, _, _ = select.select([self.answers], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.answers, 1 << 16)
            if not chunk:
                raise BrowserError(f"chromium exited (status {self.process.poll()}) before answering")
            self.buffer += chunk
        message, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        wanted = self.send(method, params, session)
        while True:
            message = self.receive()
            if message.get("id") == wanted:
                if "error" in message:
                    raise BrowserError(f"chromium refused {method}: {message['error'].get('message', message)}")
                return message.get("result", {})
            if "method" in message:
                self.pending.append(message)

    def wait_for(self, method: str, session: str | None = None) -> dict:
        for i, message in enumerate(self.pending):
            if message.get("method") == method and message.get("sessionId") == session:
                return self.pending.pop(i)
        while True:
            message = self.receive()
            if message.get("method") == method and message.get("sessionId") == session:
                return message
            if "method" in message:
                self.pending.append(message)

    def drain(self) -> list[dict]:
        """The events received so far (in order), and no longer kept."""
        events, self.pending = self.pending, []
        return events


# ------------------------------------------------------------------------------------------------ net log

def read_net_log(path: Path) -> tuple[dict, list[dict]]:
    """(constants, events) of a Chromium net log. Tolerates a log cut short (the browser killed before it wrote
    the closing brackets): whatever complete events precede the cut are returned. ({}, []) for no file."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return {}, []
    try:
        data = json.loads(text)
        return data.get("constants", {}), data.get("events", [])
    except json.JSONDecodeError:
        pass
    decoder = json.JSONDecoder()
    constants: dict = {}
    start = text.find('"constants"')
    if start >= 0:
        pos = text.find(":", start) + 1
        try:
            constants = decoder.raw_decode(text, pos + _spaces(text, pos))[0]
        except json.JSONDecodeError:
            constants = {}
    events: list[dict] = []
    start = text.find('"events"')
    if start < 0:
        return constants, events
    pos = text.find("[", start) + 1
    while pos > 0:
        pos += _spaces(text, pos)
        try:
            event, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            break
        if isinstance(event, dict):
            events.append(event)
        pos += _spaces(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos += 1
        else:
            break
    return constants, events


def _spaces(text: str, pos: int) -> int:
    return len(text[pos:]) - len(text[pos:].lstrip())


def net_log_urls(path: Path, page_only: bool = True) -> list[str]:
    """The URLs of the URL_REQUEST sources in a net log, once each in order. With `page_only`, requests the
    browser made for itself (initiator "not an origin": update checks, account lookups) are left out."""
    constants, events = read_net_log(path)
    source_type = (constants.get("logSourceType") or {}).get("URL_REQUEST")
    if source_type is None:
        return []
    urls: dict[int, str] = {}
    browser_own: set[int] = set()
    for event in events:
        source = event.get("source") or {}
        if source.get("type") != source_type:
            continue
        params = event.get("params") or {}
        if params.get("url"):
            urls.setdefault(source.get("id"), params["url"])
        if params.get("initiator") == "not an origin":
            browser_own.add(source.get("id"))
    found: list[str] = []
    for sid, url in urls.items():
        if (not page_only or sid not in browser_own) and url not in found:
            found.append(url)
    return found


# -------------------------------------------------------------------------------------------- reading a DOM

VOID_ELEMENTS = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
                           "source", "track", "wbr"})
# Elements whose edges separate words in the text read out (so a row reads "0.31 79", not "0.3179").
BREAKING = frozenset({"address", "article", "aside", "blockquote", "br", "caption", "dd", "details", "div", "dl",
                      "dt", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header",
                      "hr", "li", "main", "nav", "ol", "p", "pre", "section", "summary", "table", "tbody", "td",
                      "tfoot", "th", "thead", "tr", "ul"})


class _Collector(HTMLParser):
    def __init__(self, tag: str, attrs: dict[str, str | bool]):
        super().__init__(convert_charrefs=True)
        self.tag, self.want = tag.lower(), attrs
        self.open: list[tuple[str, dict | None]] = []  # every open element; the dict for those collected
        self.found: list[dict] = []

    def _matches(self, attrs: dict[str, str]) -> bool:
        for name, value in self.want.items():
            if name not in attrs:
                return False
            if value is not True and attrs[name] != str(value):
                return False
        return True

    def handle_starttag(self, tag, attr_list):
        if tag in BREAKING:
            self.handle_data(" ")
        attrs = {name: value if value is not None else "" for name, value in attr_list}
        item = None
        if tag == self.tag and self._matches(attrs):
            item = {**attrs, "text": []}
            self.found.append(item)
        if tag in VOID_ELEMENTS:
            if item is not None:
                item["text"] = ""
            return
        self.open.append((tag, item))

    def handle_startendtag(self, tag, attr_list):
        self.handle_starttag(tag, attr_list)
        if tag not in VOID_ELEMENTS:
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if tag in BREAKING:
            self.handle_data(" ")
        for i in range(len(self.open) - 1, -1, -1):  # close it and anything left open inside it
            if self.open[i][0] == tag:
                for _, item in self.open[i:]:
                    if item is not None:
                        item["text"] = " ".join("".join(item["text"]).split())
                del self.open[i:]
                return

    def handle_data(self, data):
        for _, item in self.open:
            if item is not None:
                item["text"].append(data)

    def close(self):
        super().close()
        for _, item in self.open:
            if item is not None:
                item["text"] = " ".join("".join(item["text"]).split())
        self.open = []


def elements(dom: str, tag: str, **attrs: str | bool) -> list[dict]:
    """Every `tag` element of `dom` whose attributes include `attrs`, in document order, each as a dict of its
    attributes plus "text" (its text content, whitespace collapsed, with a space where table cells, rows and other
    block elements meet). Keyword names map to attribute names with
    "_" as "-" and a trailing "_" dropped (`data_id=` is data-id, `class_=` is class); a value of True only asks
    that the attribute be there. An attribute called "text" is overwritten by the text."""
    wanted = {name.rstrip("_").replace("_", "-").lower(): value for name, value in attrs.items()}
    parser = _Collector(tag, wanted)
    parser.feed(dom)
    parser.close()
    return parser.found


# ------------------------------------------------------------------------------------------------- helpers

def _last_lines(text: str, count: int = 25) -> str:
    lines = text.rstrip().splitlines()
    return "\n".join(lines[-count:]) if lines else "(empty)"


NOISE = re.compile(r"dbus|D-Bus|bluez|vaapi|drmGetDevices|InitializeSandbox|idle_linux|unexpected operator")


def _chromium_log(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if not NOISE.search(line)]
    except OSError:
        return "(none)"
    return _last_lines("\n".join(lines))


def main(argv: list[str]) -> int:
    if not argv or len(argv) > 2:
        print("usage: python tests/browser.py PAGE_OR_URL [SCREENSHOT.png]", file=sys.stderr)
        return 2
    page = load(argv[0], screenshot=Path(argv[1]) if len(argv) > 1 else None)
    print(f"url: {page.url}\nseconds: {page.seconds:.2f}\nrequests:", *page.requests, sep="\n  ")
    print("failed:", *page.failed, sep="\n  ")
    print("console:", *page.console, sep="\n  ")
    print("errors:", *page.errors, sep="\n  ")
    print(f"dom: {len(page.dom)} characters")
    return 1 if page.errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
