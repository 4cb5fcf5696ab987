"""The figures of a judge's results (PNG, next to its CSVs): accuracy by criterion, NLL by verdict, reliability."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from .files import write_atomic
from .metrics import CRITERIA
from .verdict import CORRECT, INCORRECT


def plot(samples: pd.DataFrame, summary: pd.DataFrame, folder: Path, title: str) -> list[Path]:
    """accuracy.png, and nll.png / reliability.png when the data allow; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    row = summary.iloc[0]
    written = [accuracy_figure(samples, row, folder, title)]
    written += nll_figure(samples, row, folder, title)
    written += reliability_figure(samples, row, folder, title)
    return written


def accuracy_figure(samples: pd.DataFrame, row: pd.Series, folder: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    shown = [c for c in CRITERIA if row[f"n_{c}"] > 0]
    acc = np.array([row[f"acc_{c}"] for c in shown])
    lo, hi = np.array([row[f"acc_{c}_lo"] for c in shown]), np.array([row[f"acc_{c}_hi"] for c in shown])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(shown, acc, color="#4c72b0", yerr=[np.nan_to_num(acc - lo), np.nan_to_num(hi - acc)], capsize=4)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("accuracy (95% bootstrap CI)")
    ax.set_title(f"{title}: accuracy by criterion (n={len(samples)})", fontsize=10)
    for x, (a, top, c) in enumerate(zip(acc, hi, shown)):
        y = (top if not np.isnan(top) else a) + 0.02
        ax.text(x, y, f"{a:.2f} (n={row[f'n_{c}']})", ha="center", va="bottom", fontsize=8)
    return save(fig, folder / "accuracy.png")


def nll_figure(samples: pd.DataFrame, row: pd.Series, folder: Path, title: str) -> list[Path]:
    import matplotlib.pyplot as plt

    nll = samples["sequence_nll"].astype(float)
    verdict = samples["judge_verdict"]
    if not (nll.notna().any() and verdict.isin([CORRECT, INCORRECT]).any()):
        return []
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.histogram_bin_edges(nll.dropna(), bins=20)
    for label, color in ((CORRECT, "#55a868"), (INCORRECT, "#c44e52")):
        part = nll[(verdict == label) & nll.notna()]
        if len(part):
            ax.hist(part, bins=bins, alpha=0.6, color=color, label=f"judged {label} (n={len(part)})")
    ax.set_xlabel("sequence NLL of the generated answer")
    ax.set_ylabel("answers")
    ax.set_title(f"{title}: NLL by verdict (AUROC of -NLL for the judge's verdict: "
                 f"{row['auroc_sequence_nll_judge']:.2f})", fontsize=10)
    ax.legend()
    return [save(fig, folder / "nll.png")]


def reliability_figure(samples: pd.DataFrame, row: pd.Series, folder: Path, title: str) -> list[Path]:
    import matplotlib.pyplot as plt

    p = pd.concat([pd.to_numeric(samples["judge_p_correct"], errors="coerce"),
                   pd.to_numeric(samples["human_label"], errors="coerce")], axis=1).dropna()
    if not len(p):
        return []
    p.columns = ["p", "human"]
    which = np.clip(np.digitize(p["p"], np.linspace(0, 1, 11)) - 1, 0, 9)
    bins = [p[which == b] for b in range(10) if (which == b).any()]
    mids, rates, sizes = [b["p"].mean() for b in bins], [b["human"].mean() for b in bins], [len(b) for b in bins]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    ax.plot(mids, rates, "o-", color="#4c72b0", label="judge")
    for x, y, k in zip(mids, rates, sizes):
        ax.annotate(str(k), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("judge P(correct), binned")
    ax.set_ylabel("fraction correct by human label")
    ax.set_title(f"{title}: reliability (Brier {row['brier_p_correct_human']:.3f})", fontsize=10)
    ax.legend(loc="upper left")
    return [save(fig, folder / "reliability.png")]


def save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, buffer.getvalue())
    return path


