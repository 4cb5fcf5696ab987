"""report.html: one self-contained page per (run, judge), and runs/leaderboard.html across runs.

    runs/<run_id>/judge/<judge>/report.html   written by stage=report (so at the end of stage=judge, import, jury)
    runs/leaderboard.html                      written beside leaderboard.csv by stage=report report.runs=[...]

Each page is one file: styles, script, data and figures inline, no request of any kind (its Content-Security-Policy
forbids them), so it opens from disk, on an air-gapped cluster, or attached to a mail. The summary (accuracy with
intervals, agreement, the label-based estimates, calibration, the length breakdown, a jury's panel, the figures) is
plain HTML, readable with scripts off and in print. The sample browser (filters, sorting, pages) is a small script
over the answers embedded as JSON; answers are data, always inserted as text, never as markup.

The page's state lives in its address (`report.html#a=judge&b=exact_match&verdict=invalid&q=paris&sort=p&dir=desc`),
so a filtered view can be bookmarked or sent, and tests open the page in a real browser in that state.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape

from .config import ReportConfig
from .errors import PipelineError
from .metrics import CRITERIA
from .runs import finished_judges
from .tidy import paired_groups
from .verdict import CORRECT, INCORRECT
from .wording import PPI_ASSUMPTION, cite_line, cut_line, invalid_warning, label_plan_line

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
FIGURES = (("accuracy.png", "Accuracy by criterion, with 95% intervals"),
           ("p_correct.png", "The judge's P(correct) of every answer (the labelled ones outlined by their label), with "
            "the threshold its verdicts use"),
           ("nll.png", "The generator's NLL of answers the judge called correct and incorrect"),
           ("reliability.png", "The judge's P(correct) against the human labels"))
LABELS = {"exact_match": "exact match", "token_f1": "token F1", "contains": "contains a reference",
          "rouge_l": "ROUGE-L", "judge": "judge", "human": "human label", "judge_p_correct": "judge P(correct)"}
# The answer fields the browser gets, in this order (one JSON array per answer).
FIELDS = ("id", "question", "references", "prediction", "words", "finish_reason", "sequence_nll", "mean_nll",
          "verdict", "p_correct", "invalid_reason", "reply")


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = number
    env.filters["shown"] = shown
    env.filters["pct"] = lambda v: "–" if missing(v) else f"{100 * float(v):.1f}%"
    env.filters["label"] = lambda c: LABELS.get(c, c)
    env.filters["raw"] = lambda v: "" if missing(v) else repr(float(v)) if isinstance(v, (float, np.floating)) \
        else str(v)
    return env


def missing(value) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)) or value is pd.NA


def number(value, digits: int = 3) -> str:
    if missing(value):
        return "–"
    if isinstance(value, (int, np.integer)) or float(value).is_integer() and abs(float(value)) >= 10:
        return f"{int(value):,}"
    return f"{float(value):.{digits}f}"


def shown(row: dict | None, digits: int = 3) -> str:
    """A metrics.csv row's value, or, when it has none for a reason, the reason's short form ("too few labels (12)";
    the whole reason is the row's `note`)."""
    if not row:
        return "–"
    note = row.get("note")
    if isinstance(note, str) and note:
        return note.split(":")[0]
    return number(row.get("value"), digits)


def script_json(value) -> str:
    """JSON that is safe inside <script type="application/json">: no '<', '>' or '&' can end or open a tag."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def clean(value):
    """A JSON-able cell: NaN/NA become null, numpy numbers plain numbers."""
    if missing(value):
        return None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return round(float(value), 6)
    return value


# ------------------------------------------------------------------------------------------- the data

def criterion_values(crit: pd.DataFrame, others: dict[str, dict[str, float | None]], ids: list[str]) -> dict:
    """Every yes/no criterion per answer (1, 0 or None): the report's criteria, then the run's other judges."""
    values = {c: [clean(v) for v in crit[c]] for c in CRITERIA}
    for name, verdicts in others.items():
        values[f"judge:{name}"] = [verdicts.get(i) for i in ids]
    return values


def browser_data(samples: pd.DataFrame, crit: pd.DataFrame, others: dict) -> dict:
    """The answers as the page's script reads them: field names once, then one array per answer."""
    ids = samples["id"].astype(str).tolist()
    words = samples["prediction"].fillna("").astype(str).str.split().str.len()
    table = {
        "id": ids, "question": samples["question"].tolist(),
        "references": [json.loads(r) if isinstance(r, str) else [] for r in samples["references"]],
        "prediction": samples["prediction"].fillna("").astype(str).tolist(), "words": words.tolist(),
        "finish_reason": samples["finish_reason"].tolist(), "sequence_nll": samples["sequence_nll"].tolist(),
        "mean_nll": samples["mean_nll"].tolist(), "verdict": samples["judge_verdict"].tolist(),
        "p_correct": pd.to_numeric(samples["judge_p_correct"], errors="coerce").tolist(),
        "invalid_reason": samples["judge_invalid_reason"].tolist(),
        "reply": samples["judge_reply"].fillna("").astype(str).tolist(),
    }
    criteria = criterion_values(crit, others, ids)
    columns = [table[f] for f in FIELDS] + list(criteria.values())
    rows = [[clean(v) for v in row] for row in zip(*columns)]
    return {"fields": list(FIELDS), "criteria": list(criteria), "labels": {c: LABELS.get(c, c) for c in criteria},
            "rows": rows}


def other_judges(run_dir: Path, judge: str, read) -> dict[str, dict[str, float | None]]:
    """Every other finished judge of the run as {name: {id: 1, 0 or None}}, via `read(name) -> [VerdictRow]`."""
    out = {}
    for name in finished_judges(run_dir):
        if name == judge:
            continue
        try:
            verdicts = read(name)
        except PipelineError as e:  # e.g. verdicts given to answers since regenerated: never shown beside these
            log.warning("judge %s is left off the page of %s: %s", name, judge, e)
            continue
        out[name] = {v.id: {CORRECT: 1, INCORRECT: 0}.get(v.verdict) for v in verdicts}
    return out


# ------------------------------------------------------------------------------------------- the summary

def rows_of(metrics: pd.DataFrame, **where) -> list[dict]:
    hit = metrics
    for key, value in where.items():
        hit = hit[hit[key].fillna("") == value] if isinstance(value, str) else hit[hit[key].isin(value)]
    return hit.to_dict("records")


def summary_tables(metrics: pd.DataFrame, s: ReportConfig) -> dict:
    """The summary's tables, from metrics.csv's rows."""
    pairs = rows_of(metrics, statistic=["agreement", "kappa"])
    paired: dict[tuple, dict] = {}
    for r in pairs:
        paired.setdefault((r["criterion"], r["against"]), {"a": r["criterion"], "b": r["against"], "n": r["n"]})[
            r["statistic"]] = r
    short, long = f"words<={s.length_words}", f"words>{s.length_words}"
    by_length = []
    for a, b in (("judge", "human"), ("exact_match", "human"), ("contains", "human"), ("rouge_l", "human"),
                 ("exact_match", "judge"), ("contains", "judge")):
        cells = {part: {st: next(iter(rows_of(metrics, criterion=a, against=b, statistic=f"{st}[{part}]")), None)
                        for st in ("agreement", "kappa")} for part in (short, long)}
        if any(v for part in cells.values() for v in part.values()):
            by_length.append({"a": a, "b": b, "cells": cells})
    accuracy_by_length = {c: {part: next(iter(rows_of(metrics, criterion=c, statistic=f"accuracy[{part}]")), None)
                              for part in (short, long)} for c in CRITERIA}
    return {"pairs": list(paired.values()), "by_length": by_length, "parts": (short, long),
            "accuracy_by_length": {c: v for c, v in accuracy_by_length.items() if any(v.values())},
            "ppi": rows_of(metrics, statistic="ppi_accuracy", against="human"),
            "needed": {r["criterion"]: r for r in rows_of(metrics, statistic="labels_needed")},
            "calibration": {r["statistic"]: r for r in rows_of(metrics, criterion="judge_p_correct")
                            if "[" in r["statistic"] or r["statistic"] in ("ece", "auroc", "brier")},
            "panel": rows_of(metrics, criterion="panel") +
            [r for r in pairs if r["criterion"] not in CRITERIA and r["criterion"] != "judge_p_correct"],
            "by": subset_tables(metrics, s)}


def subset_values(metrics: pd.DataFrame, column: str) -> list[str]:
    """The values of a report.by column that metrics.csv breaks the answers down by, in its order."""
    head = f"accuracy[{column}="
    names = metrics["statistic"].astype(str)
    return list(dict.fromkeys(n[len(head):-1] for n in names if n.startswith(head) and n.endswith("]")))


def subset_tables(metrics: pd.DataFrame, s: ReportConfig) -> list[dict]:
    """For each report.by column, one row per value: answers, the judge's and exact match's accuracy, their
    agreement, the judge's kappa with the humans; and the stratified PPI++ estimate beside the plain one."""
    def one(criterion: str, statistic: str, against: str = ""):
        return next(iter(rows_of(metrics, criterion=criterion, statistic=statistic, against=against)), None)

    tables = []
    for column in s.by:
        rows = []
        for value in subset_values(metrics, column):
            part = f"[{column}={value}]"
            judge, em = one("judge", f"accuracy{part}"), one("exact_match", f"accuracy{part}")
            rows.append({"value": value, "n": (judge or em or {}).get("n"), "judge": judge, "exact_match": em,
                         "agreement": one("exact_match", f"agreement{part}", "judge"),
                         "kappa_human": one("judge", f"kappa{part}", "human")})
        tables.append({"column": column, "rows": rows, "stratified": one("judge", f"ppi_accuracy[by {column}]",
                                                                         "human"),
                       "plain": one("judge", "ppi_accuracy", "human")})
    return tables


CONFUSIONS = (("judge", "exact_match"), ("judge", "human"))  # the page's 2x2 tables: rows, columns


def confusions(crit: pd.DataFrame) -> list[dict]:
    """2x2 counts of the judge's valid verdicts against exact match and against the human labels, over the answers
    where both are defined: cells[row][column] with 1 = correct, 0 = not."""
    tables = []
    for a, b in CONFUSIONS:
        both = crit[[a, b]].dropna()
        if len(both):
            cells = {x: {y: int(((both[a] == x) & (both[b] == y)).sum()) for y in (1, 0)} for x in (1, 0)}
            tables.append({"a": a, "b": b, "n": len(both), "cells": cells})
    return tables


def figures_inline(folder: Path) -> list[dict]:
    return [{"src": "data:image/png;base64," + base64.b64encode((folder / name).read_bytes()).decode("ascii"),
             "name": name, "caption": caption} for name, caption in FIGURES if (folder / name).is_file()]


def judge_page(*, run_id: str, judge: str, samples: pd.DataFrame, crit: pd.DataFrame, summary: dict,
               metrics: pd.DataFrame, labels, manifest: dict, generation: dict, others: dict, folder: Path,
               s: ReportConfig) -> str:
    """The whole report.html of one (run, judge)."""
    env = environment()
    return env.get_template("report.html.j2").render(
        run_id=run_id, judge=judge, row=summary, criteria=[c for c in CRITERIA if summary.get(f"n_{c}")],
        invalid_warning=invalid_warning(summary), min_labels=s.min_labels,
        cite=cite_line(summary).removeprefix("to cite: "), cut=cut_line(summary),
        siblings=sibling_differences(metrics), tables=summary_tables(metrics, s), confusions=confusions(crit),
        labels=labels, assumption=PPI_ASSUMPTION, target=s.target_halfwidth,
        label_plan="" if pd.isna(summary.get("ppi_acc_judge", float("nan"))) else
        label_plan_line(summary, s.target_halfwidth).removeprefix("labels: "),
        mode=(manifest.get("judge") or {}).get("mode"), prompt=manifest.get("prompt") or {},
        dataset=(generation.get("dataset") or {}), generator=(generation.get("generator") or {}).get("name"),
        figures=figures_inline(folder), data=script_json(browser_data(samples, crit, others)),
        style=(TEMPLATES / "report.css").read_text(), script=(TEMPLATES / "report.js").read_text())


def sibling_differences(metrics: pd.DataFrame) -> list[dict]:
    """This judge against each other judge of the run (metrics.csv's paired rows, criterion judge)."""
    against = metrics["against"].fillna("").astype(str)
    groups = paired_groups(metrics[against.str.startswith("judge:")])
    return [{"other": g["other"], **g["criteria"]["judge"]} for g in sorted(groups, key=lambda g: g["other"])
            if "difference" in g["criteria"].get("judge", {})]


def leaderboard_page(board: pd.DataFrame, out: Path, runs_dir: Path, compared: pd.DataFrame | None = None,
                     disagreements: dict | None = None) -> str:
    """runs/leaderboard.html: one row per run x judge, grouped by data set, each linking to its report.html; under
    each group, the paired comparisons of its runs (report.compare_runs), with the answers where they disagree."""
    shares = [c for c in board.columns if c.startswith(("acc_", "ppi_acc", "kappa_", "auroc_", "judge_invalid_share"))]
    board = board.astype({c: float for c in shares})  # read back from summary.csv, a 1 is an int: shown as 1.000
    groups = []
    for (name, sha), part in board.groupby(["dataset", "dataset_sha256"], dropna=False, sort=False):
        rows, hrefs = [], {}
        for r in part.to_dict("records"):
            page = runs_dir / str(r["run_id"]) / "judge" / str(r["judge"]) / "report.html"
            hrefs[(str(r["run_id"]), str(r["judge"]))] = relative(page, out.parent) if page.is_file() else None
            rows.append({**r, "href": hrefs[(str(r["run_id"]), str(r["judge"]))]})
        groups.append({"name": name, "sha": sha, "rows": rows,
                       "pairs": paired_table(compared, part, hrefs, disagreements)})
    return environment().get_template("leaderboard.html.j2").render(
        groups=groups, style=(TEMPLATES / "report.css").read_text(), total=len(board))


def paired_table(compared: pd.DataFrame | None, part: pd.DataFrame, hrefs: dict,
                 disagreements: dict | None = None) -> list[dict]:
    """One entry per (run, other run, judge) of a group (tidy.paired_groups): per criterion its difference, interval,
    McNemar p, wins; the links to both runs' pages, and the answers where their verdicts disagree, each linked to
    its place in both pages' answer browsers."""
    if compared is None or not len(compared):
        return []
    mine = compared[compared["run_id"].astype(str).isin(set(part["run_id"].astype(str)))]
    out = []
    for g in paired_groups(mine):
        href, other_href = hrefs.get((g["run"], g["judge"])), hrefs.get((g["other"], g["judge"]))
        split = (disagreements or {}).get((g["run"], g["other"], g["judge"]), {})
        answers = [{"id": i, "right": side, "href": f"{href}#id={quote(i, safe='')}" if href else None,
                    "other_href": f"{other_href}#id={quote(i, safe='')}" if other_href else None}
                   for side in ("run", "other") for i in split.get(side, [])]
        out.append({**g, "href": href, "other_href": other_href, "disagree": answers})
    return out


def relative(path: Path, start: Path) -> str:
    import os

    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
