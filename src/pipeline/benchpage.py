"""How report.html holds up at scale (`python -m pipeline.bench page --n 100000`): a hand-made run of n answers,
its report written, then the page opened in headless Chromium (Debian's `chromium`).

Printed: the time to write the report (statistics, figures and page), the page's size; then, measured by the page
itself, the time from opening it to the first page of answers drawn (`data-interactive-ms`: reading the file,
parsing the HTML and the embedded JSON, drawing), the share of that its script took (`data-ready-ms`), and the time
one filter takes over all n answers (no filter, a disagreement filter, a text search: each filters, sorts and draws
a page, `data-render-ms`); and the wall time of the whole headless run (starting Chromium included).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from . import report
from .rows import GenerationRow, VerdictRow
from .runs import StageDir, create_run


def hand_made_run(root: Path, n: int, seed: int = 0) -> Path:
    """n answers to one question type, 60% right, a judge right 90% of the time, human labels on 500."""
    rng = np.random.default_rng(seed)
    run = create_run(root, "page-bench")
    right = rng.random(n) < 0.6
    answers = [GenerationRow.answer(f"q{i:06d}", f"Question {i}: what is the capital of country number {i}?",
                                    [f"City {i}", f"The city {i}"],
                                    f"City {i}" if right[i] and i % 3 else f"I think it is the town of {i + 1}",
                                    i, bool(right[i]) if i < 500 else None) for i in range(n)]
    p = np.clip(np.where(right, 0.8, 0.25) + rng.normal(0, 0.15, n), 0, 1)
    verdicts = [VerdictRow(id=a.id, judge="bench", mode="logprob", prompt_name="bench", prompt_version=1,
                           verdict="correct" if p[i] >= 0.5 else "incorrect", invalid_reason=None,
                           p_correct=float(p[i]), verdict_mass=0.9, reply="correct" if p[i] >= 0.5 else "incorrect",
                           finish_reason=None) for i, a in enumerate(answers)]
    StageDir(run / "generate", "generations.jsonl").publish(
        [a.to_json() for a in answers], {"stage": "generate", "run_id": run.name, "records": n,
                                         "dataset": {"name": "bench"}, "generator": {"name": "bench"}})
    StageDir(run / "judge/bench", "verdicts.jsonl").publish(
        [v.to_json() for v in verdicts], {"stage": "judge", "run_id": run.name, "records": n,
                                          "judge": {"name": "bench", "mode": "logprob"}})
    return run


def open_page(chromium: str, url: str) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as profile:
        t0 = time.perf_counter()
        out = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                              f"--user-data-dir={profile}", "--dump-dom", url],
                             capture_output=True, text=True, timeout=600)
        return time.perf_counter() - t0, out.stdout


def attribute(dom: str, name: str) -> float:
    found = re.search(rf'{name}="([\d.]+)"', dom)
    return float(found.group(1)) if found else float("nan")


def bench_page(n: int) -> dict:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with tempfile.TemporaryDirectory() as tmp:
        run = hand_made_run(Path(tmp) / "runs", n)
        t0 = time.perf_counter()
        report.write(run, "bench")
        written = time.perf_counter() - t0
        page = run / "judge/bench/report.html"
        size = page.stat().st_size
        print(f"report.html of {n:,} answers: {size / 2**20:.1f} MiB, written (with the statistics and figures) "
              f"in {written:.1f} s")
        result = {"n": n, "write_s": written, "bytes": size}
        if chromium is None:
            print("no chromium here (apt-get install chromium): the page was not opened")
            return result
        for name, fragment in (("first load", ""), ("disagreement judge vs exact match", "#a=judge&b=exact_match"),
                               ("text search", "#q=town+of+9")):
            wall, dom = open_page(chromium, page.as_uri() + fragment)
            ready, render = attribute(dom, "data-ready-ms"), attribute(dom, "data-render-ms")
            interactive, shown = attribute(dom, "data-interactive-ms"), attribute(dom, "data-shown")
            print(f"  {name:34s} interactive {interactive / 1000:5.2f} s after opening (its script: {ready:5.0f} "
                  f"ms); one filter + sort + draw over all answers {render:6.1f} ms ({shown:,.0f} shown); "
                  f"headless run {wall:4.1f} s")
            result[name] = {"wall_s": wall, "interactive_ms": interactive, "ready_ms": ready, "render_ms": render}
    return result
