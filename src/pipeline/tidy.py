"""metrics.csv: every statistic of a run and its judges as one row of a long table, the shape pandas filters and
plots without reshaping.

    run_id, dataset, generator, judge, criterion, statistic, against, value, lo, hi, n, note
    nq, nq_open, llama-8b, gpt-4, judge, kappa, human, 0.70, 0.66, 0.74, 1490,
    nq, nq_open, llama-8b, gpt-4, judge, ppi_accuracy, human, 0.61, 0.58, 0.64, 200,
    nq, nq_open, llama-8b, gpt-4, judge, kappa[words>5], human, , , , 12, too few labels (12): fewer than ...
    nq, nq_open, llama-8b, , exact_match, accuracy, , 0.45, 0.42, 0.48, 1490,

A statistic that no judge enters (the lexical criteria, the human labels, the generator's NLL against them) has an
empty `judge` and is written once per run, to runs/<run_id>/metrics.csv; the rest, to each judge's
runs/<run_id>/judge/<judge>/metrics.csv. Concatenating the run's file with its judges' files gives every statistic
once (pipeline.load_metrics does).

`criterion` is what is measured (a criterion of report.py, `judge_p_correct`, `sequence_nll`, a jury member, or
`panel`), `against` what it is compared with (empty for a criterion's own accuracy), `lo`/`hi` the 95% interval
where there is one, `n` the answers (or labels) it rests on, `note` why a value is empty. Every statistic against
the human labels needs report.min_labels of them, of both classes, among the answers it rests on; with fewer its
value is empty and `note` says "too few labels (n): ..." (estimates.label_shortage). Statistics:

    accuracy                 share correct under the criterion (Wilson score interval, stats.proportion_interval)
    agreement, kappa         with another criterion, where both are defined (bootstrap intervals)
    ppi_accuracy             the human-label accuracy estimated from this criterion on every answer plus the labels
                             (PPI++; valid when the labels are a uniform random subset); `ppi_lambda` its weight
    labels_needed            labels for an interval of half-width report.target_halfwidth (criterion=human: with
                             the labels alone); empty when labelling every answer would not reach it
    halfwidth[labels+100]    the half-width 100 more labels would give (as many as the run has, at most)
    suited_halfwidth, labels_needed[halfwidth=h]   when report.target_halfwidth is beyond labelling half the run's
                             answers (or 100 more than it has): the narrowest of 0.01, 0.02, 0.03, 0.05, 0.075, 0.1,
                             0.15, 0.2 that is not, and the labels it needs
    threshold[max_kappa], threshold[equal_error]   calibrated P(correct) thresholds against the labels, with
                             kappa[...], accuracy[...] and error_rate[equal_error] at each; ece the calibration error
    <statistic>[words<=5], <statistic>[words>5]    accuracy (Wilson interval), agreement and kappa by answer length
    <statistic>[topic=x]     the same for each value of a column named by report.by (kept with dataset.fields.keep)
    ppi_accuracy[by topic]   with human labels and report.by: PPI++ stratified by the column's values (StratPPI)
    auroc, brier             the generator's NLL or the judge's P(correct) as a score of a criterion
    labels_uniform           1 when the labels were drawn by stage=label (and labelled in draw order), else 0
    invalid_share            the share of the judge's verdicts that are invalid
    fleiss_kappa             (jury judges) the panel's agreement; members' pairwise kappa/agreement as well
    difference               paired, against another judge of the run (`judge:<name>`, criterion judge) or another
                             run over the same questions (`run:<run_id>`, every criterion): this accuracy minus the
                             other's over the ids where both are defined, with Newcombe's paired interval (paired.py)
    mcnemar_p                McNemar's exact two-sided p-value of the same pairs
    wins, losses             ids this one gets right and the other wrong, and the reverse
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pandas as pd

from . import estimates
from .config import ReportConfig
from .metrics import CRITERIA
from .paired import compare
from .stats import agreement, auroc, cohen_kappa, proportion_interval

COLUMNS = ["run_id", "dataset", "generator", "judge", "criterion", "statistic", "against", "value", "lo", "hi", "n",
           "note"]
PREDICTORS = CRITERIA[:-1]  # every criterion but the human label can stand in for it
# What a statistic that no judge enters measures, and compares with (another run: "run:<id>").
JUDGE_FREE = {c for c in CRITERIA if c != "judge"} | {"sequence_nll", "mean_nll", ""}


def judge_free(criterion: str, against: str) -> bool:
    return criterion in JUDGE_FREE and (against in JUDGE_FREE or against.startswith("run:"))


class Table:
    """The rows of one (run, judge), appended as they are computed; a row no judge enters gets an empty judge."""

    def __init__(self, run_id: str, judge: str, dataset: str = "", generator: str = ""):
        self.run_id, self.judge, self.dataset, self.generator, self.rows = run_id, judge, dataset, generator, []

    @classmethod
    def of(cls, samples: pd.DataFrame, judge: str) -> "Table":
        """For the run, data set and generator samples.csv names (rows.SampleRow)."""
        first = samples.iloc[0].to_dict() if len(samples) else {}
        run_id, dataset, generator = (cell_text(first.get(k)) for k in ("run_id", "dataset", "generator"))
        return cls(run_id, judge, dataset, generator)

    def add(self, criterion: str, statistic: str, against: str, value, lo=math.nan, hi=math.nan, n=0,
            note: str = "") -> None:
        judge = "" if judge_free(criterion, against) else self.judge
        self.rows.append([self.run_id, self.dataset, self.generator, judge, criterion, statistic, against, value, lo,
                          hi, int(n), note])

    def too_few(self, criterion: str, statistics: list[str], against: str, n: int, note: str) -> None:
        """Rows without a value for statistics whose labels are too few, saying why."""
        for statistic in statistics:
            self.add(criterion, statistic, against, math.nan, n=n, note=note)

    def accuracy(self, criterion: str, statistic: str, values) -> None:
        """A share of yes (1) among `values`, with its Wilson interval."""
        values = np.asarray(values, dtype=float)
        k = int((values == 1).sum())
        self.add(criterion, statistic, "", k / len(values), *proportion_interval(k, len(values)), len(values))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=COLUMNS)


def pairs(table: Table, crit: pd.DataFrame, s: ReportConfig, suffix: str = "") -> None:
    """Agreement and kappa of every pair of criteria where both are defined (against the human labels: where those
    are enough)."""
    for a, b in combinations(CRITERIA, 2):
        both = crit[[a, b]].dropna()
        if len(both) == 0:
            continue
        if b == "human" and (note := estimates.label_shortage(both[b], s.min_labels)):
            table.too_few(a, [f"agreement{suffix}", f"kappa{suffix}"], b, len(both), note)
            continue
        x, y = both[a].to_numpy() == 1, both[b].to_numpy() == 1
        boot = estimates.paired_bootstrap(x, y, s.bootstrap, s.seed) if not suffix else {}
        table.add(a, f"agreement{suffix}", b, agreement(x, y), *boot.get("agreement", (math.nan,) * 2), len(both))
        table.add(a, f"kappa{suffix}", b, cohen_kappa(x, y), *boot.get("kappa", (math.nan,) * 2), len(both))


def predictor_scores(samples: pd.DataFrame, crit: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each criterion's score of every answer for PPI (an undefined one, such as an invalid verdict, counts 0.5: any
    fixed rule is valid, the labels correct its bias); `judge_p_correct` when the judge gave P(correct)."""
    scores = {c: crit[c].fillna(0.5).to_numpy() for c in PREDICTORS}
    p = pd.to_numeric(samples["judge_p_correct"], errors="coerce")
    if p.notna().any():
        scores["judge_p_correct"] = p.fillna(crit["judge"]).fillna(0.5).to_numpy()
    return scores


def with_labels(table: Table, samples: pd.DataFrame, crit: pd.DataFrame, s: ReportConfig, uniform: bool) -> None:
    """PPI accuracy from each criterion, the human-only estimate's label needs, calibration of P(correct); each
    without a value, and a note saying why, when the labels are too few."""
    human = crit["human"].to_numpy()
    labelled = ~np.isnan(human)
    y = human[labelled]
    table.add("human", "labels_uniform", "", float(uniform), n=len(y))
    predictors = predictor_scores(samples, crit)
    if note := estimates.label_shortage(y, s.min_labels):
        table.too_few("human", ["labels_needed"], "", len(y), note)
        for name in predictors:
            table.too_few(name, ["ppi_accuracy", "ppi_lambda", "labels_needed"], "human", len(y), note)
    else:
        curves = {name: estimates.ppi_halfwidths(y, f[labelled], f[~labelled]) for name, f in predictors.items()}
        curves["human"] = estimates.classical_halfwidths(y, len(human))
        table.add("human", "labels_needed", "", estimates.labels_for(curves["human"], s.target_halfwidth), n=len(y))
        for name, f in predictors.items():
            est = estimates.ppi_mean(y, f[labelled], f[~labelled])
            table.add(name, "ppi_accuracy", "human", est.value, est.lo, est.hi, len(y))
            table.add(name, "ppi_lambda", "human", est.lam if est.lam is not None else math.nan, n=len(y))
            table.add(name, "labels_needed", "human", estimates.labels_for(curves[name], s.target_halfwidth),
                      n=len(y))
        label_plan(table, curves, len(y), s)
    stratified(table, samples, predictors, labelled, y, s)
    calibration(table, samples, crit, s)


MORE_LABELS = 100  # the "with this many more labels" of the label plan


def label_plan(table: Table, curves: dict[str, np.ndarray], labels: int, s: ReportConfig) -> None:
    """What more labels would buy, from each estimate's half-width curve (estimates.ppi_halfwidths; "human": the
    labels alone): the half-width with MORE_LABELS more (all the answers at most), and, when report.target_halfwidth
    is beyond what labelling half the run's answers (or MORE_LABELS more than now) reaches with the judge, the labels
    for the narrowest half-width that is within it (suited_halfwidth: statistic `suited_halfwidth`, then `labels_needed[halfwidth=h]`)."""
    suited = estimates.suited_halfwidth(curves["judge"], s.target_halfwidth, labels + MORE_LABELS) \
        if len(curves["judge"]) else math.nan
    for name, curve in curves.items():
        against = "" if name == "human" else "human"
        more = curve[min(labels + MORE_LABELS, len(curve)) - 1] if len(curve) else math.nan
        table.add(name, f"halfwidth[labels+{MORE_LABELS}]", against, more, n=labels)
        if not math.isnan(suited) and suited != s.target_halfwidth:
            table.add(name, f"labels_needed[halfwidth={suited:g}]", against, estimates.labels_for(curve, suited),
                      n=labels)
    if not math.isnan(suited) and suited != s.target_halfwidth:
        table.add("judge", "suited_halfwidth", "human", suited, n=labels)


def stratified(table: Table, samples: pd.DataFrame, predictors: dict[str, np.ndarray], labelled: np.ndarray,
               y: np.ndarray, s: ReportConfig) -> None:
    """PPI++ stratified by each report.by column (estimates.stratified_ppi_mean), from the judge's verdicts and its
    P(correct): statistic ppi_accuracy[by <column>]; empty, with the note, when a subset has too few labels."""
    for column in s.by:
        strata = subsets(samples, column).to_numpy()
        note = estimates.stratum_shortage(y, strata[labelled], s.min_labels, strata)
        for name in (n for n in predictors if n.startswith("judge")):
            statistic = f"ppi_accuracy[by {column}]"
            if note:
                table.too_few(name, [statistic], "human", len(y), note)
                continue
            f = predictors[name]
            est = estimates.stratified_ppi_mean(y, f[labelled], f[~labelled], strata[labelled], strata[~labelled])
            table.add(name, statistic, "human", est.value, est.lo, est.hi, len(y))


def calibration(table: Table, samples: pd.DataFrame, crit: pd.DataFrame, s: ReportConfig) -> None:
    """Thresholds of P(correct) chosen against the labels, and the calibration error (logprob judges)."""
    p_all = pd.to_numeric(samples["judge_p_correct"], errors="coerce")
    both = pd.concat([p_all, crit["human"]], axis=1, keys=["p", "human"]).dropna()
    if len(both) == 0:
        return
    if note := estimates.label_shortage(both["human"], s.min_labels):
        table.too_few("judge_p_correct", ["threshold[max_kappa]", "threshold[equal_error]", "ece"], "human",
                      len(both), note)
        return
    p, y, scored = both["p"].to_numpy(), both["human"].to_numpy(), p_all.dropna().to_numpy()
    for name, (t, quality) in (("max_kappa", estimates.best_kappa_threshold(p, y)),
                               ("equal_error", estimates.equal_error_threshold(p, y))):
        table.add("judge_p_correct", f"threshold[{name}]", "human", t, n=len(y))
        if name == "equal_error":
            table.add("judge_p_correct", f"error_rate[{name}]", "human", quality, n=len(y))
        if not math.isnan(t):
            at = estimates.verdicts_at(p, y, t)
            table.add("judge_p_correct", f"kappa[{name}]", "human", at["kappa"], n=len(y))
            table.accuracy("judge_p_correct", f"accuracy[{name}]", scored >= t)
    table.add("judge_p_correct", "ece", "human", estimates.calibration_error(p, y, s.calibration_bins), n=len(y))


def breakdown(table: Table, crit: pd.DataFrame, s: ReportConfig, name: str, mask) -> None:
    """Accuracy of every criterion, agreement and kappa of every pair, over the answers of `mask` (`name`: the
    subset, as the statistics' suffix shows it)."""
    part = crit[np.asarray(mask, dtype=bool)]
    for c in CRITERIA:
        values = part[c].dropna()
        if len(values):
            table.accuracy(c, f"accuracy[{name}]", values)
    pairs(table, part, s, suffix=f"[{name}]")


def by_length(table: Table, samples: pd.DataFrame, crit: pd.DataFrame, s: ReportConfig) -> None:
    """Accuracy, agreement and kappa separately for short and long answers (lexical criteria fail on long ones)."""
    words = samples["prediction"].fillna("").astype(str).str.split().str.len().to_numpy()
    breakdown(table, crit, s, f"words<={s.length_words}", words <= s.length_words)
    breakdown(table, crit, s, f"words>{s.length_words}", words > s.length_words)


EMPTY = "(empty)"  # how a subset of answers without a value in a report.by column is named


def cell_text(value) -> str:
    """A cell as text: "" for an empty one (None, NaN), whole numbers without ".0"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def subsets(samples: pd.DataFrame, column: str) -> pd.Series:
    """Each answer's value of a report.by column as text (EMPTY where it has none)."""
    return samples[column].map(lambda v: cell_text(v).strip() or EMPTY)


def by_columns(table: Table, samples: pd.DataFrame, crit: pd.DataFrame, s: ReportConfig) -> None:
    """The breakdown by every report.by column: each of its values a subset, in sorted order."""
    for column in s.by:
        values = subsets(samples, column)
        for value in sorted(values.unique()):
            breakdown(table, crit, s, f"{column}={value}", (values == value).to_numpy())


def scores(table: Table, samples: pd.DataFrame, crit: pd.DataFrame, s: ReportConfig) -> None:
    """AUROC of the generator's NLL for each criterion; AUROC and Brier score of P(correct) against humans."""
    for nll in ("sequence_nll", "mean_nll"):
        for c in CRITERIA:
            both = pd.concat([samples[nll].astype(float), crit[c]], axis=1).dropna()
            if len(both):
                table.add(nll, "auroc", c, auroc(-both[nll], both[c] == 1), n=len(both))
    p = pd.concat([pd.to_numeric(samples["judge_p_correct"], errors="coerce"), crit["human"]], axis=1).dropna()
    if len(p) and (note := estimates.label_shortage(p["human"], s.min_labels)):
        table.too_few("judge_p_correct", ["auroc", "brier"], "human", len(p), note)
    elif len(p):
        table.add("judge_p_correct", "auroc", "human", auroc(p.iloc[:, 0], p["human"] == 1), n=len(p))
        table.add("judge_p_correct", "brier", "human", float(((p.iloc[:, 0] - p["human"]) ** 2).mean()), n=len(p))


def panel_rows(table: Table, panel: dict) -> None:
    """A jury's own agreement statistics, from its manifest (stage=jury computed them)."""
    value = lambda x: math.nan if x is None else x  # noqa: E731 (null in JSON)
    for pair in panel.get("pairs", []):
        table.add(pair["a"], "agreement", pair["b"], value(pair["agreement"]), n=pair["n"])
        table.add(pair["a"], "kappa", pair["b"], value(pair["kappa"]), n=pair["n"])
    for member in panel.get("with_jury", []):
        table.add(member["member"], "agreement", table.judge, value(member["agreement"]), n=member["n"])
        table.add(member["member"], "kappa", table.judge, value(member["kappa"]), n=member["n"])
    fleiss = panel.get("fleiss_kappa")
    if fleiss:
        table.add("panel", "fleiss_kappa", "+".join(panel.get("members", [])), value(fleiss["value"]), n=fleiss["n"])


def metrics_table(samples: pd.DataFrame, crit: pd.DataFrame, summary: dict, s: ReportConfig,
                  labels_uniform: bool, panel: dict | None = None) -> pd.DataFrame:
    """Every statistic of one (run, judge): `crit` as report.criteria makes it, `summary` the summary.csv row
    (whose accuracies and intervals are reused)."""
    table = Table.of(samples, summary["judge"])
    for c in CRITERIA:
        if summary.get(f"n_{c}"):
            table.add(c, "accuracy", "", summary[f"acc_{c}"], summary[f"acc_{c}_lo"], summary[f"acc_{c}_hi"],
                      summary[f"n_{c}"])
    table.add("judge", "invalid_share", "", summary["judge_invalid"] / summary["n"] if summary["n"] else math.nan,
              n=summary["n"])
    pairs(table, crit, s)
    if crit["human"].notna().any():
        with_labels(table, samples, crit, s, labels_uniform)
    by_length(table, samples, crit, s)
    by_columns(table, samples, crit, s)
    scores(table, samples, crit, s)
    if panel:
        panel_rows(table, panel)
    return table.frame()


def paired_rows(table: Table, criterion: str, against: str, this, other) -> list[list]:
    """metrics.csv's rows comparing `this` with `other` (1, 0 or NaN per id, in the same order) under `criterion`,
    added to `table`: difference with its paired interval, mcnemar_p, wins, losses; none when no id has both."""
    p = compare(this, other)
    if p is None:
        return []
    table.add(criterion, "difference", against, p.difference, p.lo, p.hi, p.n)
    table.add(criterion, "mcnemar_p", against, p.mcnemar_p, n=p.n)
    table.add(criterion, "wins", against, p.only_a, n=p.n)
    table.add(criterion, "losses", against, p.only_b, n=p.n)
    return table.rows[-4:]


PAIRED = ("difference", "mcnemar_p", "wins", "losses")


def paired_groups(rows: pd.DataFrame) -> list[dict]:
    """metrics.csv's paired rows (statistics PAIRED) gathered per comparison: one entry per (run, against, judge) with
    {criterion: {statistic: row}}. A row no judge enters (a lexical criterion against another run: `judge` empty)
    belongs to every judge's entry of its (run, against), and makes an entry of its own (judge "") when no judge
    of the two runs is shared."""
    rows = rows[rows["statistic"].isin(PAIRED)].assign(judge=rows["judge"].fillna("").astype(str))
    out = []
    for (run, against), part in rows.groupby(["run_id", "against"], sort=False):
        judges = sorted(set(part["judge"]) - {""}) or [""]
        for judge in judges:
            criteria: dict[str, dict[str, dict]] = {}
            for r in part[part["judge"].isin([judge, ""])].to_dict("records"):
                criteria.setdefault(r["criterion"], {})[r["statistic"]] = r
            out.append({"run": str(run), "against": str(against), "other": str(against).split(":", 1)[-1],
                        "judge": judge, "criteria": criteria})
    return out


def pick(metrics: pd.DataFrame, criterion: str, statistic: str, against: str = "") -> dict:
    """The one row of `metrics` with these keys, as a dict (empty when there is none)."""
    hit = metrics[(metrics.criterion == criterion) & (metrics.statistic == statistic) &
                  (metrics.against.fillna("") == against)]
    return hit.iloc[0].to_dict() if len(hit) else {}
