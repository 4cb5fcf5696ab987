"""Running the check's steps: each subprocess in its own process group under its time limit (and the check's
deadline), a failing step recorded with the end of its output while the others still run, and the result files
rewritten after every step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .common import ENTRY, REPO, SCHEMA, JUDGE_PROMPT, Settings, one_line, safe, write_text
from .tables import markdown


@dataclass
class Proc:
    rc: int | None
    seconds: float
    timed_out: bool
    out_file: Path
    err_file: Path

    def tail(self, n: int = 25) -> str:
        text = ""
        for f in (self.err_file, self.out_file):
            try:
                lines = f.read_text(errors="replace").splitlines()
            except OSError:
                continue
            if lines:
                text = "\n".join(lines[-n:])
                break
        return text

    def stdout(self) -> str:
        try:
            return self.out_file.read_text(errors="replace")
        except OSError:
            return ""


class StepFailed(Exception):
    def __init__(self, message: str, tail: str | None = None):
        super().__init__(message)
        self.tail = tail


def failure(p: Proc, what: str) -> str:
    if p.timed_out:
        return f"{what} ran past its time limit ({p.seconds:.0f} s) and was stopped"
    lines = [x for x in p.tail(40).splitlines() if x.strip()]
    said = next((x for x in reversed(lines) if x.startswith("error:")), None) or (lines[-1] if lines else "")
    return f"{what} exited with status {p.rc}: {one_line(said, 300)}"


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a subprocess this check started and everything it started (its own process group)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def new_results(s: Settings, started: float) -> dict:
    return {"schema": SCHEMA, "mode": "dry" if s.dry else "gpu", "started": started,
            "started_iso": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "budget_s": s.budget,
            "scratch": str(s.scratch), "kit": None, "versions": {}, "gpu": None,
            "steps": {}, "passed": [], "failed": [], "skipped": [], "doctor": None, "models": {},
            "run": None, "judges": [], "generate": None, "settings": {
                "new_tokens": s.new_tokens, "reply_tokens": s.reply_tokens,
                "one_at_a_time_prompts": s.one_at_a_time,
                "judges": [list(c) for c in s.combos], "judge_prompt": JUDGE_PROMPT}}


class Runner:
    """Subprocesses, steps and the result files; the steps themselves are in check.Check."""

    def __init__(self, s: Settings, deadline: float):
        self.s = s
        self.started = time.time()
        self.deadline = deadline  # time.monotonic() by which every step has finished
        self.logs = s.scratch / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.runs = s.scratch / "runs"
        self.models_dir = s.scratch / "models"
        self.site = s.scratch / "site"
        self.results: dict = new_results(s, self.started)
        self.log_lines: list[str] = []
        self.env = self.make_env()
        self.active: set[subprocess.Popen] = set()  # children running now, each in its own process group

    def stop(self, signum, frame) -> None:
        """Stopped from outside (`timeout`, Ctrl-C): end every child this check started, keep what it measured."""
        for proc in list(self.active):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.results["stopped_by_signal"] = signum
        try:
            self.save()
        finally:
            os._exit(128 + signum)

    # --- environment and processes

    def make_env(self, with_site: bool | None = None) -> dict:
        env = dict(os.environ)
        paths = [str(REPO / "src")]
        if with_site if with_site is not None else (not self.s.dry and self.site.is_dir()):
            paths.insert(0, str(self.site))
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env.update({"PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
                    "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
                    "TOKENIZERS_PARALLELISM": "false", "HF_HOME": str(self.s.scratch / "hf"),
                    "PIPELINE_CACHE_DIR": str(self.s.scratch / "cache"), "MPLBACKEND": "Agg"})
        return env

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def spawn(self, name: str, args: list[str], env: dict | None = None) -> tuple[subprocess.Popen, Path, Path, float]:
        out_file, err_file = self.logs / f"{safe(name)}.out", self.logs / f"{safe(name)}.err"
        with open(out_file, "w") as out, open(err_file, "w") as err:
            proc = subprocess.Popen(args, cwd=REPO, env=env or self.env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.active.add(proc)
        return proc, out_file, err_file, time.monotonic()

    def wait(self, proc: subprocess.Popen, started: float, limit: float) -> tuple[int | None, bool]:
        try:
            return proc.wait(timeout=max(1.0, limit - (time.monotonic() - started))), False
        except subprocess.TimeoutExpired:
            stop_group(proc)
            return None, True

    def run(self, name: str, args: list[str], limit: float, env: dict | None = None) -> Proc:
        """One subprocess under `limit` seconds (and the check's own deadline)."""
        limit = min(limit, max(1.0, self.remaining() - 5))
        proc, out_file, err_file, t0 = self.spawn(name, args, env)
        rc, timed_out = self.wait(proc, t0, limit)
        self.active.discard(proc)
        p = Proc(rc, round(time.monotonic() - t0, 2), timed_out, out_file, err_file)
        self.note_proc(name, args, p, limit)
        return p

    def run_many(self, jobs: list[tuple[str, list[str]]], limit: float, parallel: int) -> dict[str, Proc]:
        """Several subprocesses, at most `parallel` at once, all within `limit` seconds."""
        limit = min(limit, max(1.0, self.remaining() - 5))
        t_all = time.monotonic()
        pending, running, done = list(jobs), [], {}
        while pending or running:
            while pending and len(running) < parallel:
                name, args = pending.pop(0)
                running.append((name, args, *self.spawn(name, args)))
            time.sleep(0.2)
            over = time.monotonic() - t_all > limit
            for item in list(running):
                if item[2].poll() is not None or over:
                    done[item[0]] = self.reap(item, limit)
                    running.remove(item)
            if over:
                for name, args in pending:
                    done[name] = Proc(None, 0.0, True, self.logs / "none", self.logs / "none")
                pending = []
        return done

    def reap(self, item: tuple, limit: float) -> Proc:
        """A job of run_many that ended, or is stopped now (its time is up)."""
        name, args, proc, out_file, err_file, t0 = item
        timed_out = proc.poll() is None
        if timed_out:
            stop_group(proc)
        self.active.discard(proc)
        p = Proc(proc.returncode if not timed_out else None, round(time.monotonic() - t0, 2), timed_out,
                 out_file, err_file)
        self.note_proc(name, args, p, limit)
        return p

    def note_proc(self, name: str, args: list[str], p: Proc, limit: float) -> None:
        status = "timed out" if p.timed_out else f"rc {p.rc}"
        self.log_lines += [f"### {name}: {status} in {p.seconds:.1f} s (limit {limit:.0f} s)",
                           "$ " + " ".join(args[1:] if args and args[0] == self.s.python else args)]
        for f in (p.out_file, p.err_file):
            try:
                lines = f.read_text(errors="replace").splitlines()
            except OSError:
                continue
            if lines:
                self.log_lines.append(f"--- {f.name} (last {min(len(lines), 60)} of {len(lines)} lines)")
                self.log_lines += lines[-60:]
        self.log_lines.append("")

    def pipeline_args(self, overrides: list[str]) -> list[str]:
        return [self.s.python, "-m", "pipeline", f"runs_dir={self.runs}", f"cache_dir={self.s.scratch / 'cache'}",
                "progress=false", *overrides]

    def pipeline(self, name: str, overrides: list[str], limit: float, env: dict | None = None) -> Proc:
        return self.run(name, self.pipeline_args(overrides), limit, env)

    def worker_args(self, what: str, params: dict, result: Path) -> list[str]:
        return [self.s.python, str(ENTRY), "_worker", what, "--params", json.dumps(params), "--result", str(result)]

    def worker(self, name: str, what: str, params: dict, limit: float) -> dict:
        result = self.logs / f"{safe(name)}.result.json"
        result.unlink(missing_ok=True)
        p = self.run(name, self.worker_args(what, params, result), limit)
        data = json.loads(result.read_text()) if result.is_file() else None
        if p.rc != 0 or data is None:
            raise StepFailed(failure(p, what), p.tail())
        return data

    # --- steps and results

    def step(self, name: str, limit: float, fn, *args):
        """Run one step: its result, or None when it failed (recorded, with the end of its output)."""
        record = {"ok": False, "seconds": 0.0, "limit_s": limit, "error": None, "stderr_tail": None}
        self.results["steps"][name] = record
        if self.remaining() < 15:
            record.update(skipped=True, error="skipped: the check's time budget was spent")
            self.results["skipped"].append(name)
            self.save()
            return None
        t0 = time.monotonic()
        print(f"[gpu-check] {name} ...", flush=True)
        value = None
        try:
            value = fn(*args, limit=limit)
            record["ok"] = True
        except StepFailed as e:
            record.update(error=str(e), stderr_tail=e.tail)
        except Exception as e:  # a bug in the check itself: recorded like a failing step
            record.update(error=f"{type(e).__name__}: {e}")
        record["seconds"] = round(time.monotonic() - t0, 2)
        (self.results["passed"] if record["ok"] else self.results["failed"]).append(name)
        print(f"[gpu-check] {name}: {'ok' if record['ok'] else 'FAILED: ' + str(record['error'])} "
              f"({record['seconds']:.1f} s)", flush=True)
        self.save()
        return value

    def save(self) -> None:
        r = self.results
        r["seconds"] = round(time.time() - self.started, 2)
        r["all_passed"] = bool(r["steps"]) and not r["failed"] and not r["skipped"]
        self.s.out.mkdir(parents=True, exist_ok=True)
        write_text(self.s.out / "gpu-check.json", json.dumps(r, indent=2, default=str) + "\n")
        write_text(self.s.out / "gpu-check.md", markdown(r))
        write_text(self.s.out / "gpu-check.log", "\n".join(self.log_lines) + "\n")
