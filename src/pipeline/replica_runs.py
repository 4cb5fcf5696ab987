"""Running judge replicas: one process per replica of a Grouping (replicas.py decides them), then the merge.

Each replica is an ordinary shard of the stage, started as

    python -m pipeline stage=judge <this command's overrides> run_id=<the run> runs_dir=<absolute> \\
        shard.index=i shard.count=N judge.placement.replicas=1 judge.placement.gpus=null threads=<t> progress=false
                                                          with CUDA_VISIBLE_DEVICES=<its group> (unset on the CPU)

so it writes judge/<name>/shards/<i>-of-<N>/ exactly as an array task would (its output also goes to replica.log
there). Its environment names the replica and a hash of the parent's config, which the replica checks against
its own before judging (`check_replica`). The parent waits for all of them, then merges them as stage=merge does
(merge.merge_stage: every id once, one set of settings) and writes the report. A replica that fails leaves its
shard unfinished: the same command again starts only the unfinished shards' replicas (finished shards are kept, as
shards are), then merges.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import PipelineError, plural, preview
from .files import read_json, write_json
from . import replicas
from .overrides import command_line_overrides, override_key, override_root
from .replicas import ENV, Grouping, replica_shards
from .runs import StageDir, diff_fingerprints
from .shards import Shard

log = logging.getLogger(__name__)

LOG_NAME = "replica.log"  # the replica's own stdout and stderr, in its shard folder
# Keys the parent sets for each replica itself: by the first part of the key, and by the whole key.
OWN_ROOTS = frozenset({"stage", "shard", "threads", "progress", "overwrite", "run_id", "runs_dir", "hydra"})
OWN_KEYS = frozenset({"judge.placement.replicas", "judge.placement.gpus"})


# --------------------------------------------------------------------------------------------- the replicas' config

def comparable(cfg, run_dir: Path) -> dict:
    """The config a replica must share with its parent: everything but what the parent sets per replica."""
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    for key in ("stage", "shard", "threads", "progress", "overwrite"):
        c.pop(key, None)
    for key in ("replicas", "gpus"):  # a replica is one copy on all the GPUs it is given
        c.get("judge", {}).get("placement", {}).pop(key, None)
    c["run_id"], c["runs_dir"] = run_dir.name, str(Path(c.get("runs_dir") or ".").expanduser().resolve())
    return c


def config_sha256(cfg, run_dir: Path) -> str:
    text = json.dumps(comparable(cfg, run_dir), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def hydra_value(text: str) -> str:
    """A value as a Hydra override can carry it: quoted unless it is plain."""
    if re.fullmatch(r"[A-Za-z0-9_./:+-]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def child_overrides(parent: list[str], run_dir: Path, runs_dir: str, shard: Shard, threads: int) -> list[str]:
    """A replica's command line: this process's own overrides (submit.command_line_overrides) less those it sets
    per replica, then the concrete run, its shard, one copy and its threads."""

    kept = [o for o in parent if override_root(o) not in OWN_ROOTS and override_key(o) not in OWN_KEYS]
    return ["stage=judge", *kept, f"run_id={run_dir.name}",
            f"runs_dir={hydra_value(str(Path(runs_dir).expanduser().resolve()))}",
            f"shard.index={shard.index}", f"shard.count={shard.count}", "judge.placement.replicas=1",
            "judge.placement.gpus=null", f"threads={threads}", "progress=false"]


def compose(overrides: list[str]):
    """The config `python -m pipeline <overrides>` composes (inside the running Hydra app, or on its own)."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from .config import conf_dir

    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config_name="config", overrides=overrides)
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def check_reproduces(cfg, run_dir: Path, overrides: list[str]) -> None:
    """Refuse before starting anything when the replicas' command line would not give them this very config (a
    stage run from Python with a config the command line does not say, or a config folder changed meanwhile)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        child = compose(overrides)
    except (HydraException, OmegaConfBaseException) as e:
        raise PipelineError(f"the replicas' command line ({' '.join(overrides)}) does not compose: "
                            f"{str(e).splitlines()[0]}. Use judge.placement.replicas=1.") from None
    changes = diff_fingerprints(comparable(cfg, run_dir), comparable(child, run_dir))
    if changes:
        raise PipelineError(
            f"the replicas would not run with this config: their command line gives other values "
            f"({preview(changes, 6)}). Run the stage from the command line (python -m pipeline stage=judge ...), "
            "whose overrides the replicas repeat, or use judge.placement.replicas=1.")


def check_replica(cfg, run_dir: Path) -> dict | None:
    """In a replica (ENV set by its parent): refuse to run with a config other than its parent's; what its
    manifest records of it. None outside a replica."""
    text = os.environ.get(ENV)
    if not text:
        return None
    info = json.loads(text)
    if info.get("config_sha256") != config_sha256(cfg, run_dir):
        raise PipelineError(f"replica {info.get('index')} of {info.get('count')}: its config is not its parent's "
                            "(the config folder or the environment changed between them); nothing was judged. Run "
                            "the parent's command again, or use judge.placement.replicas=1.")
    return {k: v for k, v in info.items() if k != "config_sha256"}


# --------------------------------------------------------------------------------------------- running them

@dataclass
class Replica:
    index: int
    shard: Shard
    stage: StageDir
    gpus: list[int]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    rc: int | None = None
    error_line: str | None = None
    pump: threading.Thread | None = None

    @property
    def log_path(self) -> Path:
        return self.stage.path / LOG_NAME

    def where(self, count: int) -> str:
        gpus = f", GPUs [{','.join(map(str, self.gpus))}]" if self.gpus else ""
        return f"replica {self.index} of {count} (shard {self.shard.name}{gpus})"


def exit_text(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    if rc > 128:
        try:
            return f"stopped by {signal.Signals(rc - 128).name} (exit status {rc})"
        except ValueError:
            pass
    return f"exit status {rc}"


def _pdeathsig():
    """A preexec_fn that makes a replica get SIGTERM (a clean stop after its batch) if the parent dies; prctl is
    looked up here, in the parent, so the forked child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def pump(replica: Replica, echo) -> None:
    """Copy a replica's output into its replica.log and, prefixed, to this process's stderr."""
    with open(replica.log_path, "a", encoding="utf-8", errors="replace") as out:
        for line in replica.proc.stdout:
            out.write(line)
            out.flush()
            if line.startswith("error:"):
                replica.error_line = line[len("error:"):].strip()
            echo(f"[replica {replica.index}] {line}")


def records_written(stage: StageDir) -> int:
    if stage.is_complete():
        return int(stage.manifest().get("records", 0))
    if stage.partial_path.is_file():
        return stage.partial_path.read_bytes().count(b"\n")
    return 0


def start(cfg, job, grouping: Grouping, r: Replica, overrides: list[str], sha: str, preexec) -> None:
    """Start replica `r`'s child: its environment names it and its parent's config; its command line goes first
    into its replica.log."""
    r.stage.path.mkdir(parents=True, exist_ok=True)
    info = {"index": r.index, "count": grouping.count, "shard": r.shard.name, "gpus": r.gpus,
            "cuda_visible_devices": grouping.devices[r.index] if grouping.variable else None,
            "threads": grouping.threads, "of_shard": job.shard.name, "parent_pid": os.getpid(),
            "config_sha256": sha}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", ENV: json.dumps(info)}
    if grouping.variable:
        env[grouping.variable] = grouping.devices[r.index]
    cmd = [sys.executable, "-m", "pipeline",
           *child_overrides(overrides, job.run_dir, cfg.runs_dir, r.shard, grouping.threads)]
    with open(r.log_path, "a", encoding="utf-8") as f:
        f.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%S%z')} {grouping.variable or 'CPU'}"
                f"{'=' + grouping.devices[r.index] if grouping.variable else ''}: {' '.join(cmd)}\n")
    r.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              text=True, errors="replace", env=env, preexec_fn=preexec)
    r.started = time.monotonic()
    log.info("%s: pid %d judges %d answers; its log: %s", r.where(grouping.count), r.proc.pid,
             len(r.shard.select(list(job.all_ids))) - records_written(r.stage), r.log_path)


def stop_all(todo: list[Replica]) -> None:
    """Ask every replica still running to stop after its batch."""
    for r in todo:
        if r.proc.poll() is None:
            r.proc.send_signal(signal.SIGTERM)


def say_ended(r: Replica, count: int, forwarded: bool) -> None:
    """One line for a replica that has ended: finished, stopped as asked (a forwarded signal), or failed."""
    r.pump.join(timeout=10)
    took = time.monotonic() - r.started
    if r.rc == 0:
        log.info("%s finished: %d verdicts in %.0f s", r.where(count), records_written(r.stage), took)
    elif forwarded and r.rc == 128 + signal.SIGTERM:
        log.info("%s stopped as asked after %.0f s, %d verdicts written; its log: %s", r.where(count),
                 took, records_written(r.stage), r.log_path)
    else:
        log.warning("%s failed after %.0f s: %s%s; its log: %s", r.where(count), took, exit_text(r.rc),
                    f" ({r.error_line})" if r.error_line else "", r.log_path)


def wait_all(todo: list[Replica], count: int) -> int | None:
    """Wait for every started replica, saying one line as each ends; forward SIGTERM/SIGUSR1 (and Ctrl-C) to them
    as SIGTERM. Returns the signal that stopped this process, if one did."""
    from .interrupts import GracefulStop

    forwarded = False
    with GracefulStop() as stopper:
        try:
            while any(r.rc is None for r in todo):
                for r in todo:
                    if r.rc is None and r.proc.poll() is not None:
                        r.rc = r.proc.returncode
                        say_ended(r, count, forwarded)
                if stopper.signum is not None and not forwarded:
                    log.warning("forwarding %s to the replicas as SIGTERM: each stops after its batch",
                                signal.Signals(stopper.signum).name)
                    stop_all(todo)
                    forwarded = True
                time.sleep(0.1)
        except KeyboardInterrupt:
            stop_all(todo)
            for r in todo:
                r.proc.wait()
            raise
    return stopper.signum


def launch(cfg, job, grouping: Grouping, todo: list[Replica], overrides: list[str]) -> int | None:
    """Start a child per replica in `todo`, say one line as each ends, and wait for all; forward SIGTERM/SIGUSR1
    (and Ctrl-C) to them as SIGTERM (each stops after its batch). Returns the signal that stopped this process, if
    one did."""
    sha = config_sha256(cfg, job.run_dir)
    echo_lock = threading.Lock()

    def echo(text: str) -> None:
        with echo_lock:
            sys.stderr.write(text)
            sys.stderr.flush()

    preexec = _pdeathsig()
    for r in todo:
        start(cfg, job, grouping, r, overrides, sha, preexec)
    for r in todo:  # after every fork, so that no child is forked while a pump thread runs
        r.pump = threading.Thread(target=pump, args=(r, echo), daemon=True)
        r.pump.start()
    return wait_all(todo, grouping.count)


def run_replicas(cfg, job, grouping: Grouping) -> Path:
    """Judge with the replicas of `grouping`: start those whose shard is not finished, wait, then merge the stage
    and write the report (an unsharded stage), or leave the merge to stage=report (inside an array task)."""
    from contextlib import ExitStack

    from .interrupts import StageStopped
    from .runs import move_aside

    root, count = job.root, grouping.count
    overrides = grouping.overrides
    if overrides is None:  # not checked by `choose`
        overrides = command_line_overrides()
        check_reproduces(cfg, job.run_dir, child_overrides(overrides, job.run_dir, cfg.runs_dir, Shard(0, 2), 1))
    targets = replica_shards(job.shard, count)
    with ExitStack() as stack:
        if not job.sharded:  # one parent at a time on the stage; re-entrant for the merge
            stack.enter_context(root.lock())
            if cfg.overwrite:  # once, here: no replica may move what the others write
                move_aside(job.run_dir, [root.path])
            root.path.mkdir(parents=True, exist_ok=True)
            stack.enter_context(root.log_to_file())
            write_json(root.path / "plan.json", {**grouping.plan.to_dict(), "replicas": grouping.record()})
        print(grouping.plan.table(), flush=True)
        print(f"judge {cfg.judge.name}: {grouping.describe()}", flush=True)
        log.info("run %s: judging %d answers with %s%s in %s", job.run_dir.name, len(job.assigned), cfg.judge.name,
                 job.label, grouping.describe())
        replicas = [Replica(r, s, s.stage(root.path, root.records_name), grouping.groups[r])
                    for r, s in enumerate(targets)]
        todo = []
        for r in replicas:
            if r.stage.finished_with(job.fingerprint, job.run_dir):
                log.info("%s: already finished (%d verdicts), kept", r.where(count), records_written(r.stage))
            else:
                todo.append(r)
        stopped = launch(cfg, job, grouping, todo, overrides) if todo else None
        failed = [r for r in todo if r.rc != 0]
        if stopped is not None:
            raise StageStopped(stopped, sum(records_written(r.stage) for r in replicas), len(job.assigned))
        if failed:
            raise failure(cfg, replicas, failed)
        if job.sharded:
            log.info("run %s: shard %s of judge %s done by %s (shards %s); stage=report merges the shards and "
                     "writes the CSVs", job.run_dir.name, job.shard.name, cfg.judge.name, plural(count, "replica"),
                     preview([t.name for t in targets], 4))
            return root.path
        return merge_and_report(cfg, job, grouping)


def failure(cfg, replicas: list[Replica], failed: list[Replica]) -> PipelineError:
    """The error for replicas that failed: each one's exit and log, the shards kept, and how to resume."""
    count = len(replicas)
    again = " (without overwrite=true)" if cfg.overwrite else ""
    kept = [r.shard.name for r in replicas if r not in failed]
    said = "; ".join(f"{r.where(count)}: {exit_text(r.rc)}"
                     f"{' (' + r.error_line[:300] + ')' if r.error_line else ''}, log {r.log_path}"
                     for r in failed)
    return PipelineError(
        f"{plural(len(failed), 'replica')} of {count} failed: {said}. The finished replicas' verdicts are "
        f"kept ({preview(kept, 8) if kept else 'none'}); running the same command again{again} resumes "
        f"only the unfinished share ({'replica' if len(failed) == 1 else 'replicas'} "
        f"{', '.join(str(r.index) for r in failed)}), then merges.")


def merge_and_report(cfg, job, grouping: Grouping) -> Path:
    """Merge the replicas' shards exactly as stage=merge merges array shards, record the grouping, and write the
    result files as the unsharded judge does."""
    from . import merge, report

    root = job.root
    merge.merge_stage(root.path, root.records_name, list(job.all_ids))
    manifest = read_json(root.manifest_path)
    manifest["replicas"] = grouping.record()
    write_json(root.manifest_path, manifest)
    log.info("run %s: merged the %s of judge %s", job.run_dir.name, plural(grouping.count, "replica"),
             cfg.judge.name)
    report.write_and_print(job.run_dir, cfg.judge.name, report.settings(cfg))
    return root.path


def choose(cfg, job, hardware, plan, source: str | None = None, seq_len: int | None = None) -> Grouping | None:
    """`decide`, and the check that the replicas' command line gives them this process's config; where it would
    not (a stage run from Python with values the command line does not say), auto is one copy, N is refused."""
    grouping = replicas.decide(cfg, job, hardware, plan, source, seq_len)
    if grouping is None:
        return None
    overrides = command_line_overrides()
    try:
        check_reproduces(cfg, job.run_dir, child_overrides(overrides, job.run_dir, cfg.runs_dir, Shard(0, 2), 1))
    except PipelineError as e:
        if replicas.parse_requested(cfg.judge.placement.replicas) != replicas.AUTO:
            raise
        log.info("judge.placement.replicas=auto: one copy of the judge, because %s", e)
        return None
    grouping.overrides = overrides
    return grouping
