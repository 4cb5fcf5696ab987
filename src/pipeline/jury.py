"""stage=jury: judges already run on a run, combined into a judge of their own (a panel of judges, Verga et al. 2024).

    python -m pipeline stage=jury run_id=<id> jury.judges=[a,b,c]                       # judge jury-a_b_c, mean
    python -m pipeline stage=jury run_id=<id> jury.judges=[a,b,c] jury.name=panel jury.method=majority
    python -m pipeline stage=report run_id=<id>                                         # reported like any judge

The jury is written as runs/<id>/judge/<name>/verdicts.jsonl (rows.VerdictRow, mode "jury") with a manifest, exactly
like a judge stage, so the report, the leaderboard and everything after treat it as one more judge (a jury may
itself sit on a jury). Per answer, only the members' valid verdicts count (an invalid one is left out):

    mean      the mean of the members' P(correct) (a member's vote as 1/0 where it has none); correct when the mean
              is at least jury.threshold
    majority  correct when more members say correct than incorrect; a tie is an invalid verdict; P(correct) is
              the share of correct votes

With no valid member verdict the jury's verdict is invalid too. Each record's `reply` lists the members' votes
("a=correct(0.91) b=incorrect c=invalid"). The manifest holds the panel's agreement statistics (panel.py). The
stage's settings are the method, the threshold (mean only) and each member with the sha256 of its verdicts file:
the same command again does nothing, and a member judged again since makes the jury "finished with other
settings" (refused unless overwrite=true).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path


from . import panel, report
from .binding import answer_hashes, bind, check_bound
from .config import check_name
from .errors import PipelineError, plural, preview
from .files import read_json, sha256_file
from .rows import GenerationRow, VerdictRow, parse_rows
from .runner import StageJob
from .runs import StageDir, find_run
from .shards import Shard, shard_dirs
from .verdict import CORRECT, INCORRECT, INVALID

log = logging.getLogger(__name__)

VOTES = {CORRECT: 1.0, INCORRECT: 0.0}


# ------------------------------------------------------------------------------------------ checking inputs

def members_of(cfg) -> list[str]:
    """jury.judges, checked: at least two judge names, each a folder name, none twice."""
    members = [str(m) for m in (cfg.jury.judges or [])]
    if len(members) < 2:
        raise PipelineError(f"jury.judges={members} names {plural(len(members), 'judge')}; a jury needs at least two "
                            "judges already run on the run, e.g. jury.judges=[smollm2-135m,qwen2.5-1.5b].")
    for m in members:
        check_name("jury.judges", m)
    twice = sorted({m for m in members if members.count(m) > 1})
    if twice:
        raise PipelineError(f"jury.judges={members} names {preview(twice)} more than once; name each judge once.")
    return members


def jury_name(cfg, members: list[str]) -> str:
    """jury.name, or "jury-" + the members joined by "_"; never one of the members."""
    name = check_name("jury.name", cfg.jury.name if cfg.jury.name is not None else "jury-" + "_".join(members))
    if name in members:
        raise PipelineError(f"jury.name={name!r} is also a member of the jury (jury.judges={members}); the jury is "
                            "written as a judge of its own, so give it another name, e.g. "
                            f"jury.name=jury-{'_'.join(members)}")
    return name


def finish_command(run_dir: Path, member: str) -> str:
    """How to finish an unfinished judge stage of the run: a jury, a sharded judge or a judge."""
    folder = run_dir / "judge" / member
    started = read_json(folder / "stage.json") if (folder / "stage.json").is_file() else {}
    jury = started.get("fingerprint", {}).get("jury")
    if isinstance(jury, dict):
        return (f"python -m pipeline stage=jury run_id={run_dir.name} jury.judges=[{','.join(jury.get('members', []))}]"
                f" jury.name={member}")
    if shard_dirs(folder):
        return f"finish its array tasks, then python -m pipeline stage=merge run_id={run_dir.name}"
    return f"python -m pipeline stage=judge run_id={run_dir.name} judge={member} (it resumes)"


def check_finished(run_dir: Path, members: list[str]) -> None:
    """Every member a finished judge of the run, else which is not and what to do."""
    finished = report.finished_judges(run_dir)
    for m in members:
        folder = run_dir / "judge" / m
        if not folder.is_dir():
            raise PipelineError(f"jury.judges: {m!r} is not a judge of run {run_dir.name} (no {folder}/). Its "
                                f"finished judges: {preview(finished) if finished else 'none yet'}.")
        if not StageDir(folder, "verdicts.jsonl").is_complete():
            raise PipelineError(f"jury.judges: judge {m!r} of run {run_dir.name} has not finished ({folder}/"
                                f"manifest.json is missing or not complete); finish it first: "
                                f"{finish_command(run_dir, m)}; then run the jury again.")


def jury_members(run_dir: Path, name: str) -> list[str]:
    """The members of judge `name` of the run where it is a jury (its manifest's judge.members), else []."""
    judge = StageDir(run_dir / "judge" / name, "verdicts.jsonl").manifest().get("judge") or {}
    return [str(m) for m in judge.get("members") or []] if judge.get("mode") == "jury" else []


def voters(run_dir: Path, name: str, seen: frozenset = frozenset()) -> dict[str, str | None]:
    """Every judge that votes inside judge `name`, directly or through the juries on it: {judge: the member of
    `name` it votes through, None for a member itself}; {} where `name` is no jury."""
    out: dict[str, str | None] = {}
    for m in jury_members(run_dir, name):
        out.setdefault(m, None)
        if m not in seen | {name}:  # a loop cannot be written by stage=jury, only by editing a manifest
            for inner in voters(run_dir, m, seen | {name}):
                out.setdefault(inner, m)
    return out


def refuse_double_votes(run_dir: Path, name: str, members: list[str]) -> None:
    """No judge may vote twice on the jury: through a member jury and as a member, or through two member juries;
    and the jury may not sit inside one of its members (overwrite=true would make it vote on itself)."""
    inside = {m: voters(run_dir, m) for m in members}
    for m, held in inside.items():
        if name in held:
            raise PipelineError(f"jury.name={name!r} already votes inside member {m!r} (jury.judges={members}); a "
                                f"jury cannot sit on itself: give it another name, or leave {m!r} out.")
        for other in members:
            if other != m and other in held:
                through = f" (through {held[other]!r})" if held[other] else ""
                raise PipelineError(f"jury.judges: {m!r} is a jury whose members include {other!r}{through}, and "
                                    f"jury.judges={members} lists {other!r} too, so its verdicts would count twice: "
                                    f"leave {other!r} out, or list {m!r}'s members instead of {m!r}.")
    for i, a in enumerate(members):
        for b in members[i + 1:]:
            shared = [j for j in inside[a] if j in inside[b]]
            if shared:
                raise PipelineError(f"jury.judges: {a!r} and {b!r} are juries that both count "
                                    f"{', '.join(map(repr, shared[:5]))}, so {'its' if len(shared) == 1 else 'their'} "
                                    f"verdicts would count twice: leave one of them out, or list the judges "
                                    "themselves.")


def answers_of(run_dir: Path) -> list[GenerationRow]:
    """The run's answers, in data set order."""
    gen = StageDir(run_dir / "generate", "generations.jsonl")
    if not gen.is_complete():
        how = f"python -m pipeline stage=merge run_id={run_dir.name}" if shard_dirs(gen.path) else \
            f"python -m pipeline stage=generate run_id={run_dir.name}"
        raise PipelineError(f"run {run_dir.name} has no finished generate stage ({gen.manifest_path} is missing or "
                            f"not complete); finish it first ({how}), then judge it and run the jury.")
    answers = parse_rows(GenerationRow, gen.read_records(), gen.records_path)
    return sorted(answers, key=lambda a: a.index)


@dataclass(frozen=True)
class Member:
    """One member of the jury: its verdicts by answer id and the sha256 of its verdicts file."""

    name: str
    verdicts: dict[str, VerdictRow]
    sha256: str


def read_member(run_dir: Path, name: str, ids: list[str], hashes: dict[str, str]) -> Member:
    """A finished member's verdicts (verified against its manifest), covering exactly the run's answers, each given
    to the answer the run holds now (`hashes`, binding.py)."""
    stage = StageDir(run_dir / "judge" / name, "verdicts.jsonl")
    sha = (stage.manifest().get("records_file") or {}).get("sha256") or sha256_file(stage.records_path)
    rows = parse_rows(VerdictRow, stage.read_records(), stage.records_path)  # verified against that sha256
    check_bound(hashes, rows, stage.records_path, name, run_dir.name)
    got = {v.id: v for v in rows}
    lost, extra = [i for i in ids if i not in got], sorted(set(got) - set(ids))
    if lost or extra:
        parts = ([f"no verdict for {plural(len(lost), 'answer')} ({preview(lost, 5)})"] if lost else []) + \
                ([f"verdicts for {plural(len(extra), 'id')} the run has no answer for ({preview(extra, 5)})"]
                 if extra else [])
        raise PipelineError(f"jury.judges: judge {name!r} of run {run_dir.name} does not cover the run's answers: "
                            f"{'; '.join(parts)}. Judge the run's answers again with it (overwrite=true), or leave "
                            "it off the jury.")
    return Member(name, got, sha)


# ---------------------------------------------------------------------------------------------- combining

def vote(v: VerdictRow) -> float | None:
    """A member's vote for `mean`: its P(correct) where it has one, else 1/0; None for an invalid verdict."""
    if v.verdict not in VOTES:
        return None
    return float(v.p_correct) if v.p_correct is not None else VOTES[v.verdict]


def audit(votes: list[tuple[str, VerdictRow]]) -> str:
    """The members' votes on one answer: "a=correct(0.91) b=incorrect c=invalid"."""
    def one(name: str, v: VerdictRow) -> str:
        shown = f"({v.p_correct:.2f})" if v.p_correct is not None and v.verdict in VOTES else ""
        return f"{name}={v.verdict if v.verdict in VOTES else INVALID}{shown}"

    return " ".join(one(name, v) for name, v in votes)


def by_mean(valid: list[VerdictRow], threshold: float) -> tuple[str, str | None, float | None]:
    mean = math.fsum(vote(v) for v in valid) / len(valid)
    return (CORRECT if mean >= threshold else INCORRECT), None, mean


def by_majority(valid: list[VerdictRow]) -> tuple[str, str | None, float | None]:
    k = sum(v.verdict == CORRECT for v in valid)
    rest = len(valid) - k
    if k == rest:
        return INVALID, f"tie: {k} correct, {rest} incorrect", k / len(valid)
    return (CORRECT if k > rest else INCORRECT), None, k / len(valid)


def combine(name: str, method: str, threshold: float, answer_id: str,
            votes: list[tuple[str, VerdictRow]]) -> VerdictRow:
    """The jury's verdict on one answer from its members' (name, verdict) pairs, in the jury's order."""
    valid = [v for _, v in votes if v.verdict in VOTES]
    if not valid:
        verdict, reason, p = INVALID, "no member gave a valid verdict", None
    elif method == "mean":
        verdict, reason, p = by_mean(valid, threshold)
    else:
        verdict, reason, p = by_majority(valid)
    return VerdictRow(id=answer_id, judge=name, mode="jury", prompt_name=f"jury:{method}", prompt_version=1,
                      verdict=verdict, invalid_reason=reason, p_correct=p, verdict_mass=None, reply=audit(votes),
                      finish_reason=None)


def jury_verdicts(name: str, method: str, threshold: float, ids: list[str], members: list[Member]) -> list[VerdictRow]:
    """The jury's verdict on every answer, in the order of `ids`."""
    return [combine(name, method, threshold, i, [(m.name, m.verdicts[i]) for m in members]) for i in ids]


def panel_of(members: list[Member], ids: list[str], verdicts: list[VerdictRow]) -> dict:
    """The panel's agreement statistics (panel.statistics) over the run's answers."""
    def column(rows) -> list[float]:
        return [VOTES.get(v.verdict, math.nan) for v in rows]

    votes = {m.name: column(m.verdicts[i] for i in ids) for m in members}
    return panel.statistics([m.name for m in members], votes, column(verdicts))


# ---------------------------------------------------------------------------------------------- the stage

def fingerprint(method: str, threshold: float, members: list[Member]) -> dict:
    """What decides the jury's records: the method, its threshold (mean only), the members and their verdicts."""
    return {"jury": {"method": method, "threshold": threshold if method == "mean" else None,
                     "members": [m.name for m in members], "member_records": {m.name: m.sha256 for m in members}}}


def details(name: str, method: str, threshold: float, members: list[Member], verdicts: list[VerdictRow],
            stats: dict, started: float) -> dict:
    """The jury stage's own manifest fields."""
    return {
        "judge": {"name": name, "mode": "jury", "method": method,
                  "threshold": threshold if method == "mean" else None, "members": [m.name for m in members]},
        "prompt": {"name": f"jury:{method}", "version": 1},
        "panel": stats,
        "member_records": {m.name: m.sha256 for m in members},
        "verdicts": {k: sum(v.verdict == k for v in verdicts) for k in (CORRECT, INCORRECT, INVALID)},
        "expected_total": len(verdicts),
        "timings": {"total_s": round(time.perf_counter() - started, 3)},
    }


def write_results(cfg, run_dir: Path, name: str, stats: dict) -> None:
    """samples.csv, summary.csv and the figures of the jury, as stage=judge writes them; the digests."""
    report.write_and_print(run_dir, name, report.settings(cfg))
    print(panel.digest(stats), flush=True)


def run(cfg) -> Path:
    """stage=jury: check the members, combine their verdicts, write the jury as a judge and report it; returns the
    jury's stage directory."""
    started = time.perf_counter()
    members_names = members_of(cfg)
    run_dir = find_run(Path(cfg.runs_dir), cfg.run_id)
    name = jury_name(cfg, members_names)
    check_finished(run_dir, members_names)
    refuse_double_votes(run_dir, name, members_names)
    answers = answers_of(run_dir)
    ids, hashes = [a.id for a in answers], answer_hashes(answers)
    members = [read_member(run_dir, m, ids, hashes) for m in members_names]
    method, threshold = str(cfg.jury.method), float(cfg.jury.threshold)
    job = StageJob(cfg, run_dir, StageDir(run_dir / "judge" / name, "verdicts.jsonl"), Shard(0, 1),
                   fingerprint(method, threshold, members), ids)
    verdicts = bind(jury_verdicts(name, method, threshold, ids, members), hashes)
    stats = panel_of(members, ids, verdicts)
    if job.finished():
        if not report.results_present(job.stage.path):  # e.g. killed while writing the report
            with job.stage.lock():
                write_results(cfg, run_dir, name, stats)
        return job.stage.path
    with job.attempt() as attempt:
        if attempt is None:  # finished by another process since the check above
            return job.stage.path
        left = set(attempt.todo)
        attempt.write([[v for v in verdicts if v.id in left]], lambda batch: batch, desc=f"jury {name}",
                      unit="answer")
        attempt.finish("judge", VerdictRow.SCHEMA, details(name, method, threshold, members, verdicts, stats, started))
        log.info("run %s: jury %s of %s (%s) written to %s", run_dir.name, name, ", ".join(members_names), method,
                 job.stage.path)
    with job.stage.lock():  # after the attempt: a report that fails never touches the finished stage
        write_results(cfg, run_dir, name, stats)
    return job.stage.path
