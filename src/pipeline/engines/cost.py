"""What a served judge cost, carried from its manifest into summary.csv and the digest (report.py)."""

from __future__ import annotations

import pandas as pd


def with_engine(summary: pd.DataFrame, manifest: dict) -> pd.DataFrame:
    """The engine that judged (hf for stages made before engines existed) and, for a served one, what it cost."""
    engine = manifest.get("engine") or {}
    usage = engine.get("usage") or {}
    summary = summary.copy()
    summary["judge_engine"] = engine.get("engine") or manifest.get("judge", {}).get("engine") or "hf"
    for key in ("prompt_tokens", "completion_tokens", "requests", "retries"):
        summary[f"judge_{key}"] = usage.get(key)
    return summary


def cost_line(row: dict) -> str | None:
    """What a served judge cost, from summary.csv's row; None for the hf engine."""
    if pd.isna(row.get("judge_prompt_tokens", float("nan"))):
        return None
    return (f"{row['judge_engine']} engine: {int(row['judge_prompt_tokens'])} prompt and "
            f"{int(row['judge_completion_tokens'])} completion tokens in {int(row['judge_requests'])} requests "
            f"({int(row['judge_retries'])} retried)")
