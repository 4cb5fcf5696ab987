"""Verdicts bound to the exact answers they judged.

Every verdict records `answer_sha256`, the hash of the question, references and prediction it was given
(rows.answer_sha256). Whoever pairs verdicts with a run's answers (the judge resuming or rerunning, the report, a jury,
the page that shows other judges) first checks each verdict's hash against the answer of the same id now, and refuses
verdicts given to other answers, naming the ids: answers regenerated, imported again or edited after judging would
otherwise silently carry the old verdicts. Verdicts written before the hash existed (schema verdict/1) cannot be
checked; that is said once, in the log, and they are used as they are.

    check_bound(answers, verdicts, where, judge, run_id)    refuse verdicts of changed answers
    answers_digest(answers)                                  one sha256 over every (id, answer hash) pair
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Iterable

from .errors import PipelineError, plural, preview
from .rows import GenerationRow, VerdictRow

log = logging.getLogger(__name__)


def answer_hashes(answers: Iterable[GenerationRow]) -> dict[str, str]:
    return {a.id: a.answer_sha256 for a in answers}


def answers_digest(answers: Iterable[GenerationRow]) -> str:
    """The sha256 of the run's answers as a whole, independent of their order: what a judge manifest records."""
    lines = sorted(f"{rid}\t{sha}" for rid, sha in answer_hashes(answers).items())
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def changed_ids(hashes: dict[str, str], verdicts: Iterable[VerdictRow]) -> tuple[list[str], int]:
    """The ids whose verdict was given to another answer than the one the run holds now, and how many verdicts carry
    no hash to check (verdict/1)."""
    changed, unchecked = [], 0
    for v in verdicts:
        if v.answer_sha256 is None:
            unchecked += 1
        elif v.id in hashes and hashes[v.id] != v.answer_sha256:
            changed.append(v.id)
    return changed, unchecked


def check_bound(answers: Iterable[GenerationRow] | dict[str, str], verdicts: Iterable[VerdictRow], where: Path,
                judge: str, run_id: str) -> None:
    """Refuse `verdicts` (read from `where`) when any was given to another answer than the run's answer of that id."""
    hashes = answers if isinstance(answers, dict) else answer_hashes(answers)
    changed, unchecked = changed_ids(hashes, verdicts)
    if changed:
        raise PipelineError(
            f"{where}: {plural(len(changed), 'verdict')} of judge {judge} were given to other answers than run "
            f"{run_id} holds now (ids {preview(changed, 8)}): the answers were regenerated, imported again or edited "
            f"after judging. Judge them again: the stage=judge (or stage=import, stage=jury) command that made "
            f"{judge}, on run_id={run_id}, with overwrite=true (the old verdicts are moved to replaced/).")
    if unchecked:
        log.warning("%s: %s predate answer hashes (schema verdict/1), so whether they still match the run's answers "
                    "cannot be checked; judge again with overwrite=true to bind them", where,
                    plural(unchecked, "verdict"))


def bind(verdicts: list[VerdictRow], hashes: dict[str, str]) -> list[VerdictRow]:
    """The verdicts with the hash of the answer each was given (the judge, an import and a jury call this)."""
    from dataclasses import replace

    return [replace(v, answer_sha256=hashes[v.id]) for v in verdicts]
