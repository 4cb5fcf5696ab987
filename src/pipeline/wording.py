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


def cut_line(row: dict) -> str:
    """How many answers stopped at the generator's token limit (they may be cut mid-answer); "" when none did."""
    cut, n = row.get("answers_cut"), row.get("n")
    if pd.isna(cut) or not cut or not n:
        return ""
    limit = row.get("max_new_tokens")
    at = f"generator.max_new_tokens={int(limit)}" if limit is not None and not pd.isna(limit) else \
        "generator.max_new_tokens"
    return (f"{int(cut)} of {int(n)} answers ({cut / n:.1%}) stopped at {at} (finish_reason length): they may be cut "
            "off mid-answer, and any criterion may count such an answer wrong; generate with a higher limit to "
            "let them finish")


def count(value, answers: int) -> str:
    """A number of labels, or what it means when there is none, or more than the run's answers."""
    return "more than the run has" if value is None or pd.isna(value) or value > answers else str(int(value))


def label_plan_line(row: dict, target: float | None) -> str:
    """What more human labels would buy (summary.csv's row with its PPI++ columns): the half-width now and with
    100 more, then the labels for report.target_halfwidth, or, when that is beyond the run's size, for the
    narrowest half-width that labelling half of its answers, or 100 more than now, reaches."""
    n, answers = int(row["n_human"]), int(row["n"])
    now = (row["ppi_acc_judge_hi"] - row["ppi_acc_judge_lo"]) / 2
    parts = [f"labels: the PPI++ interval is +-{now:.3f} with {n} labels"]
    if not pd.isna(more := row.get("halfwidth_ppi_judge_more")) and n < answers:
        human = row.get("halfwidth_human_more")
        parts.append(f"{min(100, answers - n)} more would make it about +-{more:.3f}"
                     + ("" if pd.isna(human) else f" (+-{human:.3f} from the labels alone)"))
    if target is None:
        return "; ".join(parts)
    judge, human = row.get("labels_needed_ppi_judge"), row.get("labels_needed_human")
    suited = row.get("suited_halfwidth")
    if not pd.isna(judge) and (pd.isna(suited) or suited == target):
        parts.append(f"for +-{target:g}: {count(judge, answers)} labels with the judge (PPI++), "
                     f"{count(human, answers)} without")
    elif not pd.isna(suited):
        parts.append(f"+-{target:g} (report.target_halfwidth) is beyond a run of {answers} answers; for "
                     f"+-{suited:g}: {count(row.get('labels_needed_ppi_judge_suited'), answers)} labels with the "
                     f"judge (PPI++), {count(row.get('labels_needed_human_suited'), answers)} without")
    else:
        parts.append(f"+-{target:g} (report.target_halfwidth) is beyond a run of {answers} answers, and so is "
                     "any half-width up to +-0.2 with half of them labelled or 100 more labels")
    return "; ".join(parts)
