"""The sentences that go with the numbers, wherever they are shown (the digest, report.html, the leaderboard): what a
PPI++ estimate assumes, why a judge is flagged, the number to cite. Below report.py and pages.py, which both say them."""

from __future__ import annotations

import pandas as pd


PPI_ASSUMPTION = ("assumes the labelled answers are a uniform random sample of the run (stage=label draws one) and "
                  "that the judge was not tuned on them")


def text(value) -> str:
    """A text cell of the summary row: "" for an empty one (NaN once read back)."""
    return value if isinstance(value, str) else ""


def invalid_warning(row: dict) -> str:
    """Why a judge is flagged for its invalid verdicts, and what its accuracy could be; "" when it is not."""
    if not row.get("judge_invalid_flagged"):
        return ""
    n, invalid, valid = int(row["n"]), int(row["judge_invalid"]), int(row["n_judge"])
    accuracy = f"{row['acc_judge']:.3f}" if valid else "undefined"
    return (f"{invalid} of {n} verdicts are invalid ({row['judge_invalid_share']:.1%}, more than "
            f"report.max_invalid_share={100 * row['judge_invalid_share_max']:g}%): the judge's accuracy "
            f"({accuracy}) rests on {valid} valid verdicts; over all {n} answers it is "
            f"{row['acc_judge_invalid_as_wrong']:.3f} (every invalid verdict counted wrong) to "
            f"{row['acc_judge_invalid_as_right']:.3f} (counted right). See judge_invalid_reason in samples.csv")


def cite_line(row: dict) -> str:
    """The one number to cite first, with its interval and what it rests on: the PPI++ estimate when there are enough
    human labels, else the judge's accuracy over its valid verdicts."""
    invalid = f"{int(row['judge_invalid'])} of {int(row['n'])} verdicts invalid ({row['judge_invalid_share']:.1%})" \
        if row.get("n") else "no verdicts"
    if not pd.isna(row.get("ppi_acc_judge", float("nan"))):
        return (f"to cite: accuracy {row['ppi_acc_judge']:.3f} [{row['ppi_acc_judge_lo']:.3f}, "
                f"{row['ppi_acc_judge_hi']:.3f}] (95%, PPI++: the judge on {int(row['n'])} answers corrected by "
                f"{int(row['n_human'])} human labels); {invalid}")
    if not row.get("n_judge"):
        return f"to cite: nothing yet: the judge gave no valid verdict; {invalid}"
    return (f"to cite: accuracy {row['acc_judge']:.3f} [{row['acc_judge_lo']:.3f}, {row['acc_judge_hi']:.3f}] (95% "
            f"Wilson, the judge's {int(row['n_judge'])} valid verdicts; no human labels to correct its bias); {invalid}")
