"""A run's human labels as the report reads them (`load_labels`): every label (imported with the answers, attached by
stage=label), and whether they are a uniform random sample of the run's answers; and the draws that sample them.
Below the report and stage=label (labels.py), which both read them: labels.py writes the sheets and the labels."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .binding import answer_hashes
from .errors import PipelineError, plural, preview
from .files import read_json
from .labelfile import current_labels, left_out, read_label_file, stored_warnings
from .rows import GenerationRow, LabelRow

DRAW_KEYS = ("seed", "n", "frame_size", "frame_sha256", "ids", "sheet")


@dataclass(frozen=True)
class Labels:
    """Every human label of a run, and whether they can be taken as a uniform random sample of its answers."""

    by_id: dict[str, bool]
    drawn_uniformly: bool
    warnings: list[str]
    draws: list[dict]
    source: str


def labels_path(run_dir: Path, name: str = "labels.jsonl") -> Path:
    return Path(run_dir) / "labels" / name


def frame(answers: list[GenerationRow]) -> list[GenerationRow]:
    """The sampling frame: every answer of the run, ordered by index then id."""
    return sorted(answers, key=lambda a: (a.index, a.id))


def frame_sha256(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()


def draw(answers: list[GenerationRow], n: int, seed: int) -> list[GenerationRow]:
    """The first min(n, frame size) answers of seed's fixed random order of the frame."""
    ordered = frame(answers)
    return [ordered[int(i)] for i in np.random.default_rng(seed).permutation(len(ordered))[:n]]


def read_draws(run_dir: Path) -> list[dict]:
    """draws.json ([] when there is none), each entry checked for the fields a draw has."""
    path = labels_path(run_dir, "draws.json")
    draws = read_json(path) if path.is_file() else []
    if not isinstance(draws, list) or not all(isinstance(d, dict) and all(k in d for k in DRAW_KEYS) for d in draws):
        raise PipelineError(f"{path}: not a list of draws, each with {', '.join(DRAW_KEYS)}; it was edited by hand. "
                            "Restore it, or move it away (its sheets then no longer count as drawn).")
    return draws


def is_prefix(order: list[str], labelled: set[str]) -> bool:
    """Whether `labelled` is exactly the first k ids of `order`, for some k >= 1."""
    return 1 <= len(labelled) <= len(order) and set(order[:len(labelled)]) == labelled


def load_labels(run_dir: Path, answers: list[GenerationRow]) -> Labels:
    """Every human label of the run (imported with the answers, and attached by stage=label); read-only."""
    ids, hashes = [a.id for a in frame(answers)], answer_hashes(answers)
    stored, sealed = read_label_file(run_dir, set(ids))
    rows = current_labels(stored, hashes)  # a label of an answer changed since is never paired with the new one
    imported = {a.id: a.human_label for a in answers if a.human_label is not None}
    clash = [r.id for r in rows if r.id in imported and imported[r.id] != r.human_label]
    if clash:
        raise PipelineError(f"{labels_path(run_dir)}: {plural(len(clash), 'label')} contradict the human labels "
                            f"imported with the answers in {Path(run_dir) / 'generate/generations.jsonl'} (ids "
                            f"{preview(clash, 5)}); delete those lines from labels.jsonl.")
    draws, sha, by_id = read_draws(run_dir), frame_sha256(ids), {**imported, **{r.id: r.human_label for r in rows}}
    prefix = next((d for d in draws if d["frame_sha256"] == sha and is_prefix(d["ids"], {r.id for r in rows})), None)
    return Labels(by_id=by_id, drawn_uniformly=prefix is not None and not imported, draws=draws,
                  warnings=stored_warnings(labels_path(run_dir), stored, sealed, left_out(stored, rows))
                  + label_warnings(rows, imported, draws, by_id, sha, len(ids), prefix is not None),
                  source=describe(rows, imported, draws, prefix))


def label_warnings(rows: list[LabelRow], imported: dict, draws: list[dict], by_id: dict, sha: str, size: int,
                   prefix: bool) -> list[str]:
    """One plain-English line per reason the labels may not be a uniform random sample of the run."""
    out = [f"{plural(len(imported), 'label')} were imported with the answers, not drawn by stage=label, so a uniform "
           "random sample of the run cannot be assumed for them"] if imported else []
    of_sheet = {d["sheet"]: d for d in draws}  # the latest draw of each sheet name
    sheets = list(dict.fromkeys(r.sheet for r in rows))
    for sheet, d in ((s, of_sheet.get(s)) for s in sheets):
        missing = [i for i in d["ids"] if i not in by_id] if d else []
        if d is None:  # harmless when the labelled ids are the first of a draw all the same
            out += [f"{plural(sum(r.sheet == sheet for r in rows), 'label')} from {sheet}, which stage=label did not "
                    "draw (not in draws.json): a uniform random sample cannot be assumed for them"] * (not prefix)
        elif d["frame_sha256"] != sha:
            out.append(f"the draw of {sheet} (seed {d['seed']}) was made from {d['frame_size']} answers that no longer "
                       f"match the run's {size} answers (they changed since), so its labels do not count as a uniform "
                       "sample; draw a new sheet")
        elif missing and not is_prefix(d["ids"], set(d["ids"]) - set(missing)):
            out.append(f"{len(missing)} of the {len(d['ids'])} drawn answers (seed {d['seed']}) "
                       f"{'has' if len(missing) == 1 else 'have'} no label; the estimate assumes the skipped ones were "
                       "skipped at random")
    seeds = sorted({of_sheet[s]["seed"] for s in sheets if s in of_sheet})
    if len(seeds) > 1:
        out.append(f"the labels come from draws of {len(seeds)} seeds ({', '.join(map(str, seeds))}): together they "
                   "are not one uniform sample; label the sheets of one seed, in order")
    if rows and not prefix and len(out) == bool(imported):
        out.append(f"the {plural(len(rows), 'label')} attached by stage=label are not the first answers of any draw of "
                   "the run's current answers, so a uniform random sample cannot be assumed")
    return out


def describe(rows: list[LabelRow], imported: dict, draws: list[dict], prefix: dict | None) -> str:
    """A short description of where the labels come from."""
    seeds = sorted({d["seed"] for d in draws if d["sheet"] in {r.sheet for r in rows}})
    how = (f"seed {prefix['seed']}, first {len(rows)} of the draw" if prefix else "not the first answers of one draw; "
           + (f"seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))}" if seeds else "no recorded draw"))
    told = [f"{plural(len(imported), 'label')} imported with the answers"] * bool(imported) + \
        [f"{plural(len(rows), 'label')} from stage=label ({how})"] * bool(rows)
    return " and ".join(told) or "no human labels"


def with_labels(answers: list[GenerationRow], labels: Labels) -> list[GenerationRow]:
    """The answers with human_label set from labels.by_id."""
    return [replace(a, human_label=labels.by_id.get(a.id)) for a in answers]
