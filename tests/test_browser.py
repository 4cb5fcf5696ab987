"""Tests of the headless-browser helper (tests/browser.py) on small pages written for each test.

They need Chromium (Debian's package, apt-get installed on first use as root) and skip with the reason where it
cannot be had. Each load starts a fresh browser, about a second each.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from browser import elements, load, net_log_urls, page_url, read_net_log

pytestmark = pytest.mark.integration

CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"
OUTSIDE = "http://example.invalid/x.png"
PIXEL = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"


@pytest.fixture(scope="module")
def chromium():
    from browser import chromium_or_skip

    return chromium_or_skip()


needs_browser = pytest.mark.usefixtures("chromium")


def page(tmp_path: Path, body: str, head: str = "", name: str = "page.html") -> Path:
    path = tmp_path / name
    path.write_text(f"<!doctype html><html><head><meta charset=utf-8>{head}</head><body>{body}</body></html>")
    return path


@needs_browser
def test_scripts_change_the_dom_unless_turned_off(tmp_path):
    path = page(tmp_path, "<p id=x>before</p><script>document.getElementById('x').textContent = 'after';"
                          "setTimeout(() => document.body.dataset.late = 'yes', 1000);</script>")
    ran = load(path, budget_ms=2000)
    assert [p["text"] for p in elements(ran.dom, "p", id="x")] == ["after"]
    assert elements(ran.dom, "body", data_late="yes"), "a timer within the virtual-time budget ran"
    assert ran.errors == [] and ran.seconds > 0
    off = load(path, scripts=False)
    assert [p["text"] for p in elements(off.dom, "p", id="x")] == ["before"]
    assert not elements(off.dom, "body", data_late=True)


@needs_browser
def test_console_errors_and_uncaught_exceptions_are_errors(tmp_path):
    path = page(tmp_path, "<script>console.log('just saying', 1); console.warn('careful');"
                          "console.error('bad thing'); nosuch();</script>")
    seen = load(path)
    assert "log: just saying 1" in [c.split(" (file:")[0] for c in seen.console]
    assert not any("just saying" in e for e in seen.errors)
    assert any(e.startswith("error: bad thing") for e in seen.errors)
    assert any(e.startswith("warning: careful") for e in seen.errors)
    assert any(e.startswith("uncaught:") and "ReferenceError: nosuch is not defined" in e for e in seen.errors)


@needs_browser
def test_csp_violation_is_an_error_and_an_outside_request_is_listed(tmp_path):
    image = f'<img src="{OUTSIDE}"><img src="{PIXEL}">'
    strict = load(page(tmp_path, image, f'<meta http-equiv="Content-Security-Policy" content="{CSP}">', "csp.html"))
    assert any("violates the following Content Security Policy" in e and OUTSIDE in e for e in strict.errors)
    assert f"{OUTSIDE}: blocked (csp)" in strict.failed

    loose = load(page(tmp_path, image, name="loose.html"))
    assert OUTSIDE in loose.requests
    assert not any("Content Security Policy" in e for e in loose.errors)
    assert any(f.startswith(f"{OUTSIDE}: net::ERR_") for f in loose.failed), "offline: the name does not resolve"


@needs_browser
def test_clean_page_requests_only_itself_and_data_urls(tmp_path):
    path = page(tmp_path, f"<h1>report</h1><img src='{PIXEL}'><script>fetch('data:text/plain,hi')"
                          ".then(r => r.text()).then(t => document.title = t);</script>",
                "<style>h1 { color: #333 }</style>")
    clean = load(path)
    assert clean.errors == [] and clean.failed == []
    assert clean.requests[0] == path.resolve().as_uri() == clean.url
    assert set(clean.requests) == {clean.url, PIXEL, "data:text/plain,hi"}
    assert elements(clean.dom, "title")[0]["text"] == "hi"


@needs_browser
def test_a_file_next_to_the_page_is_a_request_and_a_missing_one_an_error(tmp_path):
    (tmp_path / "side.css").write_text("p { color: red }")
    links = '<link rel=stylesheet href="side.css"><link rel=stylesheet href="gone.css">'
    seen = load(page(tmp_path, "<p>x</p>", links))
    assert (tmp_path / "side.css").as_uri() in seen.requests
    assert any("ERR_FILE_NOT_FOUND" in e and "gone.css" in e for e in seen.errors)


@needs_browser
def test_screenshot_is_a_png_of_the_window_size(tmp_path):
    shot = tmp_path / "shots" / "page.png"
    seen = load(page(tmp_path, "<div style='height:3000px;background:#eef'>tall</div>"), window=(640, 360),
                screenshot=shot)
    assert seen.screenshot == shot
    head = shot.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    assert struct.unpack(">II", head[16:24]) == (640, 360)


@needs_browser
def test_missing_page_is_a_clear_error(tmp_path):
    from browser import BrowserError

    with pytest.raises(BrowserError, match="ERR_FILE_NOT_FOUND"):
        load(tmp_path / "nothing.html")


# ------------------------------------------------------------------ no browser needed (but cheap, so kept here)

def test_elements_reads_rows_and_cells_of_nested_markup():
    dom = """<table><tr data-id="a1"><td data-stat="acc_judge" data-value="0.3135"> 0.31 <b>[0.2,
             0.4]</b></td><td data-stat="n">79</td></tr><tr data-id="b2" class="x y"><td data-stat="acc_judge"
             data-value="0.5">0.50<br>!</td></tr><tr><td>no id</td></tr></table><input disabled><img src=x />"""
    rows = elements(dom, "tr", data_id=True)
    assert [r["data-id"] for r in rows] == ["a1", "b2"]
    assert rows[0]["text"] == "0.31 [0.2, 0.4] 79"
    cells = elements(dom, "td", data_stat="acc_judge")
    assert [(c["data-value"], c["text"]) for c in cells] == [("0.3135", "0.31 [0.2, 0.4]"), ("0.5", "0.50 !")]
    assert elements(dom, "td", data_stat="acc_judge", data_value=0.5)[0]["text"] == "0.50 !"
    assert elements(dom, "tr", class_="x y")[0]["data-id"] == "b2"
    assert elements(dom, "input", disabled=True) == [{"disabled": "", "text": ""}]
    assert elements(dom, "img") == [{"src": "x", "text": ""}]
    assert elements(dom, "td", data_stat="nope") == []


def test_net_log_is_read_even_when_cut_short(tmp_path):
    constants = {"logSourceType": {"NONE": 0, "URL_REQUEST": 2}, "logEventTypes": {"REQUEST_ALIVE": 1}}
    own, theirs = "http://clients2.google.com/t", "http://example.invalid/x.png"
    events = [  # the browser's own request, one the page made, and something that is not a URL_REQUEST
        {"source": {"id": 1, "type": 2}, "type": 1, "params": {"url": own}},
        {"source": {"id": 1, "type": 2}, "type": 2, "params": {"initiator": "not an origin", "url": own}},
        {"source": {"id": 5, "type": 2}, "type": 1, "params": {"url": theirs}},
        {"source": {"id": 5, "type": 2}, "type": 2, "params": {"initiator": "null", "url": theirs}},
        {"source": {"id": 6, "type": 0}, "type": 3, "params": {"url": "http://not.a.request/"}},
    ]
    lines = [json.dumps(e) for e in events]
    whole = ('{"constants":' + json.dumps(constants) + ',\n"events": [\n' + ",\n".join(lines)
             + '],\n"polledData": {}\n}\n')
    (tmp_path / "whole.json").write_text(whole)
    cut = whole[:whole.index(lines[4]) + len(lines[4]) // 2]  # killed half-way through the last event
    (tmp_path / "cut.json").write_text(cut)
    assert net_log_urls(tmp_path / "whole.json") == [theirs]
    assert net_log_urls(tmp_path / "whole.json", page_only=False) == [own, theirs]
    assert len(read_net_log(tmp_path / "cut.json")[1]) == 4
    assert net_log_urls(tmp_path / "cut.json") == [theirs]
    assert net_log_urls(tmp_path / "absent.json") == []


def test_page_url_takes_urls_and_paths(tmp_path):
    assert page_url("file:///tmp/x.html") == "file:///tmp/x.html"
    assert page_url("http://localhost:8000/") == "http://localhost:8000/"
    assert page_url(tmp_path / "r.html") == (tmp_path / "r.html").resolve().as_uri()
    assert page_url(str(tmp_path / "r.html")) == (tmp_path / "r.html").resolve().as_uri()
