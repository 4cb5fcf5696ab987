"""The figures of a judge's results (PNG, next to its CSVs): accuracy by criterion, P(correct) with the threshold,
NLL by verdict, reliability. Every title is wrapped to its figure's width, so no title is cut at the edge."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from .files import write_atomic
from .metrics import CRITERIA
from .verdict import CORRECT, INCORRECT


def plot(samples: pd.DataFrame, summary: pd.DataFrame, folder: Path, title: str,
         threshold: float | None = None) -> list[Path]:
    """accuracy.png, and p_correct.png / nll.png / reliability.png when the data allow; returns the files written.
    `threshold`: the judge's P(correct) threshold, drawn on p_correct.png."""
    import matplotlib

    matplotlib.use("Agg")
    row = summary.iloc[0]
    written = [accuracy_figure(samples, row, folder, title)]
    written += p_correct_figure(samples, row, folder, title, threshold)
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
    ax.set_ylabel("accuracy (95% Wilson interval)")
    set_title(ax, title, f"accuracy by criterion (n={len(samples)})")
    for x, (a, top, c) in enumerate(zip(acc, hi, shown)):
        y = (top if not np.isnan(top) else a) + 0.02
        ax.text(x, y, f"{a:.2f} (n={row[f'n_{c}']})", ha="center", va="bottom", fontsize=8)
    return save(fig, folder / "accuracy.png")


# Okabe-Ito blue and vermillion: apart for every common colour-vision deficiency, and apart in grey too.
NLL_STYLE = {CORRECT: ("#0072B2", "-"), INCORRECT: ("#D55E00", "--")}


def set_title(ax, title: str, what: str, fontsize: float = 10) -> None:
    """`title` (the run and judge) and `what` the figure shows, as one line when it fits the axes' figure and
    wrapped into as many lines as it needs when not (a long run id or judge name never runs off the edge)."""
    width_pt = ax.figure.get_figwidth() * 72 * 0.92
    per_line = max(20, int(width_pt / (fontsize * 0.6)))  # a generous average glyph width for DejaVu Sans
    text = f"{title}: {what}"
    lines = [text] if len(text) <= per_line else textwrap.wrap(title, per_line) + textwrap.wrap(what, per_line)
    ax.set_title("\n".join(lines), fontsize=fontsize)


# Every answer as a grey fill; the labelled ones as outlines by their human label (Okabe-Ito bluish green and
# vermillion); the judge's threshold in black and the max-kappa one in reddish purple.
P_ALL = "#BBBBBB"
P_STYLE = {1: ("#009E73", "-", "human label: correct"), 0: ("#D55E00", "--", "human label: incorrect")}


def p_correct_figure(samples: pd.DataFrame, row: pd.Series, folder: Path, title: str,
                     threshold: float | None) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if not draw_p_correct(ax, samples, row, title, threshold):
        plt.close(fig)
        return []
    return [save(fig, folder / "p_correct.png")]


def draw_p_correct(ax, samples: pd.DataFrame, row: pd.Series, title: str, threshold: float | None) -> bool:
    """The histogram of the judge's P(correct) (bins of 0.05 over [0, 1]) on `ax`: every answer as a light fill,
    and where there are human labels, the labelled answers as outlines by label (does the threshold part them?),
    with the judge's threshold and, when the labels calibrated one, the threshold that maximises kappa with them.
    False (nothing drawn) when no answer has a P(correct) (a generate-mode judge)."""
    p = pd.to_numeric(samples["judge_p_correct"], errors="coerce").astype(float)
    if not p.notna().any():
        return False
    bins = np.linspace(0, 1, 21)
    scored = p[p.notna()]
    ax.hist(scored, bins=bins, histtype="stepfilled", color=P_ALL, alpha=0.6, linewidth=0,
            label=f"every answer (n={len(scored)})")
    human = pd.to_numeric(samples["human_label"], errors="coerce")
    for value, (color, style, label) in P_STYLE.items():
        part = p[p.notna() & (human == value)]
        if len(part):
            ax.hist(part, bins=bins, histtype="step", color=color, linestyle=style, linewidth=2.2,
                    label=f"{label} (n={len(part)})")
    if threshold is not None:
        ax.axvline(float(threshold), color="black", linewidth=1.5, label=f"judge threshold {float(threshold):g}")
    calibrated = row.get("threshold_max_kappa", np.nan)
    if not pd.isna(calibrated):
        ax.axvline(float(calibrated), color="#CC79A7", linestyle=":", linewidth=2,
                   label=f"max-kappa threshold {float(calibrated):.2f} (human labels)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, max(np.histogram(scored, bins=bins)[0].max(), 1) * 1.7)  # room above the bars for the legend
    ax.set_xlabel("judge P(correct)")
    ax.set_ylabel("answers")
    ax.yaxis.get_major_locator().set_params(integer=True)
    missing = int(p.isna().sum())
    set_title(ax, title, f"P(correct) of {len(scored)} answers"
              + (f" ({missing} without one left out)" if missing else ""))
    ax.legend(fontsize=8, loc="upper center")
    return True


def nll_figure(samples: pd.DataFrame, row: pd.Series, folder: Path, title: str) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if not draw_nll(ax, samples, row, title):
        plt.close(fig)
        return []
    return [save(fig, folder / "nll.png")]


def draw_nll(ax, samples: pd.DataFrame, row: pd.Series, title: str) -> bool:
    """The NLL histograms of the answers judged correct and incorrect on `ax`, both visible wherever they
    overlap: light translucent fills under thick step outlines (solid and dashed, two colour-blind-safe colours)
    on the same bins, with each class's count in the legend. Invalid verdicts and answers without an NLL are left
    out, and the legend says how many. False (nothing drawn) when no judged answer has an NLL."""
    nll = pd.to_numeric(samples["sequence_nll"], errors="coerce").astype(float)
    verdict = samples["judge_verdict"]
    judged = verdict.isin([CORRECT, INCORRECT])
    shown = judged & nll.notna()
    if not shown.any():
        return False
    bins = np.histogram_bin_edges(nll[shown], bins=20)
    for label, (color, style) in NLL_STYLE.items():
        part = nll[shown & (verdict == label)]
        if not len(part):
            continue
        ax.hist(part, bins=bins, histtype="stepfilled", color=color, alpha=0.15, linewidth=0)
        ax.hist(part, bins=bins, histtype="step", color=color, linestyle=style, linewidth=2.2,
                label=f"judged {label} (n={len(part)})")
    left_out = []
    if (invalid := int((~judged).sum())):
        left_out.append(f"{invalid} invalid verdict{'s' if invalid != 1 else ''}")
    if (no_nll := int((judged & nll.isna()).sum())):
        left_out.append(f"{no_nll} without an NLL")
    auroc = row.get("auroc_sequence_nll_judge", np.nan)
    auroc_text = "n/a" if pd.isna(auroc) else f"{float(auroc):.2f}"
    ax.set_xlabel("sequence NLL of the generated answer")
    ax.set_ylabel("answers")
    ax.yaxis.get_major_locator().set_params(integer=True)
    set_title(ax, title, f"NLL by verdict (AUROC of -NLL for the judge's verdict: {auroc_text})")
    ax.legend(title=f"left out: {', '.join(left_out)}" if left_out else None, title_fontsize=8)
    return True


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
    set_title(ax, title, f"reliability (Brier {row['brier_p_correct_human']:.3f})")
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


