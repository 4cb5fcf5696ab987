"""Text cells of the CSV files people open in a spreadsheet, written so that none runs as a formula.

Excel and LibreOffice run a cell that starts with = + - or @ as a formula (and skip a leading tab or carriage return
to find one), so an answer, id or question such as `=HYPERLINK(...)` or `-2+3` in samples.csv could run when the file
is opened. Every CSV the pipeline writes for people (samples.csv, summary.csv, metrics.csv, leaderboard.csv, the
label sheets) writes such a text cell with a single quote ' in front, which spreadsheets show as text; a cell that
starts with ' gets one more, so that reading back always takes exactly one off. Numbers are never touched: a
negative kappa (-0.25) is a number, not a formula. The JSONL records keep every text exactly as it is.

Lines end in CR LF (RFC 4180), which also makes the csv writer quote a text holding a lone carriage return: with
LF endings it wrote one unquoted, and every reader (pandas, spreadsheets) broke the row there.

    to_csv(frame)      the frame's CSV text, its text cells made safe
    read_csv(path)     a CSV written by to_csv, its text cells as they were
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")  # "'" too, so that reading back can always take one off


def safe_cell(text: str) -> str:
    """A text cell a spreadsheet will not run as a formula: a ' in front of = + - @ tab CR (and of ' itself)."""
    return "'" + text if text.startswith(FORMULA_START) else text


def plain_cell(text: str) -> str:
    """The text `safe_cell` was given."""
    return text[1:] if text.startswith("'") else text


def text_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if frame[c].dtype == object or isinstance(frame[c].dtype, pd.StringDtype)]


def each_text(frame: pd.DataFrame, change) -> pd.DataFrame:
    """A copy of `frame` with `change` applied to every text cell (numbers, booleans and empty cells kept)."""
    out = frame.copy()
    for column in text_columns(out):
        out[column] = out[column].map(lambda v: change(v) if isinstance(v, str) else v)
    return out


def to_csv(frame: pd.DataFrame, **options) -> str:
    """frame.to_csv(index=False, **options), with every text cell made safe, lines ending in CR LF."""
    return each_text(frame, safe_cell).to_csv(index=False, lineterminator="\r\n", **options)


def read_csv(path: Path, **options) -> pd.DataFrame:
    """pandas.read_csv of a file written by `to_csv`, with every text cell as it was before."""
    return each_text(pd.read_csv(path, **options), plain_cell)
