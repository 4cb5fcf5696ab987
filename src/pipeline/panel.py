"""How much the members of a jury (stage=jury) agree: with each other, with the jury, and as a panel.

    from pipeline import panel
    stats = panel.statistics(["a", "b", "c"], votes, jury_votes)   # the manifest's "panel" entry
    print(panel.digest(stats))                                     # Fleiss' kappa and each pair's kappa

`votes` maps each member to its verdicts in one order of answers, each 1.0 (correct), 0.0 (incorrect) or NaN
(invalid: left out, never counted as a disagreement); `jury_votes` is the jury's, in the same order.

  - each pair of members: agreement and Cohen's kappa (stats.cohen_kappa) over the answers both judged validly;
  - each member against the jury's verdict, likewise;
  - Fleiss' kappa of the panel over the answers every member judged validly (Fleiss 1971):
        P_i = (sum_j n_ij^2 - n) / (n (n - 1)),  p_j = sum_i n_ij / (N n),
        kappa = (mean_i P_i - sum_j p_j^2) / (1 - sum_j p_j^2), undefined (NaN) when sum_j p_j^2 = 1;
  - Krippendorff's alpha for nominal data over every answer at least two members judged validly (invalid verdicts
    missing): alpha = 1 - (n - 1) sum_{c != k} o_ck / sum_{c != k} n_c n_k, with the coincidences
    o_ck = sum_u (n_uc n_uk - [c = k] n_uc) / (m_u - 1) of each answer u with m_u valid verdicts.

Undefined values are NaN here and null in the returned dict (JSON has no NaN).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np

from .stats import agreement, cohen_kappa


def fleiss_kappa(table) -> float:
    """Fleiss' kappa of a subjects x categories table of counts, each subject rated by the same number of raters
    (at least two); NaN without subjects or when every rating falls in one category."""
    table = np.asarray(table, dtype=float)
    if table.ndim != 2:
        raise ValueError(f"a table of subjects x categories is needed, not shape {table.shape}")
    if table.shape[0] == 0:
        return float("nan")
    raters = table.sum(axis=1)
    n = raters[0]
    if n < 2 or not np.all(raters == n):
        raise ValueError(f"every subject needs the same number of raters, at least two (got {sorted(set(raters))})")
    p_category = table.sum(axis=0) / table.sum()
    p_subject = ((table * table).sum(axis=1) - n) / (n * (n - 1.0))
    expected = float((p_category * p_category).sum())
    if expected >= 1.0:
        return float("nan")
    return float((p_subject.mean() - expected) / (1.0 - expected))


def krippendorff_alpha(data) -> float:
    """Krippendorff's alpha, nominal level, of a raters x units array of category codes with NaN for missing
    values; units with fewer than two values are left out. NaN without pairable values or with one category."""
    data = np.asarray(data, dtype=float)
    if data.ndim != 2:
        raise ValueError(f"a table of raters x units is needed, not shape {data.shape}")
    present = ~np.isnan(data)
    categories = np.unique(data[present])
    counts = np.stack([(data == c).sum(axis=0) for c in categories], axis=1).astype(float) if len(categories) \
        else np.zeros((data.shape[1], 0))  # units x categories
    pairable = present.sum(axis=0)
    counts, pairable = counts[pairable >= 2], pairable[pairable >= 2]
    if len(counts) == 0:
        return float("nan")
    weights = 1.0 / (pairable - 1.0)
    coincidences = np.einsum("u,uc,uk->ck", weights, counts, counts) - np.diag((weights[:, None] * counts).sum(0))
    marginals = coincidences.sum(axis=1)
    total = marginals.sum()
    off_diagonal = coincidences.sum() - np.trace(coincidences)
    expected = marginals.sum() ** 2 - (marginals * marginals).sum()
    if expected == 0:
        return float("nan")
    return float(1.0 - (total - 1.0) * off_diagonal / expected)


def binary_table(columns: np.ndarray) -> np.ndarray:
    """answers x members (1.0/0.0, no NaN) as the answers x [correct, incorrect] counts Fleiss' kappa reads."""
    correct = columns.sum(axis=1)
    return np.stack([correct, columns.shape[1] - correct], axis=1)


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    """Agreement, Cohen's kappa and n of two verdict columns over the answers where both are valid."""
    both = ~np.isnan(a) & ~np.isnan(b)
    n = int(both.sum())
    if n == 0:
        return {"agreement": None, "kappa": None, "n": 0}
    return {"agreement": finite(agreement(a[both] == 1, b[both] == 1)),
            "kappa": finite(cohen_kappa(a[both] == 1, b[both] == 1)), "n": n}


def finite(value: float) -> float | None:
    """A statistic for JSON: NaN (undefined) becomes None."""
    return None if value is None or math.isnan(value) else float(value)


def statistics(members: Sequence[str], votes: Mapping[str, Sequence[float]], jury: Sequence[float]) -> dict:
    """The panel's agreement statistics as a plain dict (NaN written as None), for the jury's manifest."""
    columns = {m: np.asarray(votes[m], dtype=float) for m in members}
    jury_column = np.asarray(jury, dtype=float)
    pairs = [{"a": a, "b": b, **compare(columns[a], columns[b])} for a, b in combinations(members, 2)]
    with_jury = [{"member": m, **compare(columns[m], jury_column)} for m in members]
    matrix = np.stack([columns[m] for m in members], axis=1) if members else np.zeros((len(jury_column), 0))
    complete = matrix[~np.isnan(matrix).any(axis=1)]
    fleiss = fleiss_kappa(binary_table(complete)) if len(members) >= 2 and len(complete) else float("nan")
    pairable = int(((~np.isnan(matrix)).sum(axis=1) >= 2).sum())
    return {"members": list(members), "pairs": pairs, "with_jury": with_jury,
            "fleiss_kappa": {"value": finite(fleiss), "n": len(complete)},
            "krippendorff_alpha": {"value": finite(krippendorff_alpha(matrix.T)), "n": pairable}}


def shown(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.2f}"


def digest(stats: dict) -> str:
    """Two lines a person reads after the jury's report: the panel's kappa, then each pair's."""
    fleiss, alpha = stats["fleiss_kappa"], stats["krippendorff_alpha"]
    pairs = "; ".join(f"{p['a']} vs {p['b']} {shown(p['kappa'])} (n={p['n']})" for p in stats["pairs"])
    return (f"panel of {len(stats['members'])}: Fleiss' kappa {shown(fleiss['value'])} (n={fleiss['n']}, answers "
            f"every member judged validly); Krippendorff's alpha {shown(alpha['value'])} (n={alpha['n']})\n"
            f"pairwise Cohen's kappa: {pairs}")
