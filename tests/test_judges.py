"""judges.py: the two ways a judge reaches a verdict, on the real SmolLM2 judge over clear-cut imported answers.

logprob mode reads P(correct) off the next-token distribution and applies the threshold and the minimum verdict
mass; generate mode lets the judge write a reply and takes its last "Verdict: <word>", keeping unreadable replies
apart as invalid.
"""

import math

import pandas as pd
import pytest
import torch

from pipeline import judge
from pipeline.models import encode_chat
from pipeline.verdict import VerdictTokens, judge_messages

from conftest import CLEAR_CUT, make_cfg, prompt_cfg, read_jsonl


@pytest.mark.slow
def test_logprob_mode_p_correct_is_the_normalised_next_token_probability(clear_cut_run, tokenizer_and_model):
    tok, model = tokenizer_and_model
    verdicts = {v["id"]: v for v in read_jsonl(clear_cut_run / "judge/smollm2-135m/verdicts.jsonl")}
    prompt = prompt_cfg()
    tokens = VerdictTokens.build(tok, prompt)
    for i, (q, refs, cand) in enumerate(CLEAR_CUT):
        _, ids = encode_chat(tok, judge_messages(prompt, q, refs, cand), True, prompt.reply_prefix)
        with torch.inference_mode():  # independently: one prompt, no padding, no shared prefix
            probs = torch.softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
        yes, no = probs[list(tokens.correct)].sum().item(), probs[list(tokens.incorrect)].sum().item()
        v = verdicts[f"c{i}"]
        assert v["mode"] == "logprob" and v["p_correct"] == pytest.approx(yes / (yes + no), abs=1e-4)
        assert v["verdict_mass"] == pytest.approx(yes + no, abs=1e-4)
        assert v["verdict"] == ("correct" if v["p_correct"] >= 0.5 else "incorrect")
        assert v["reply"].startswith("Verdict:")


@pytest.mark.slow
def test_threshold_and_min_mass_decide_as_configured(clear_cut_run):
    runs = clear_cut_run.parent
    judge.run(make_cfg(runs, "run_id=clear", "judge.name=t0", "judge.threshold=0"))
    assert {v["verdict"] for v in read_jsonl(clear_cut_run / "judge/t0/verdicts.jsonl")} == {"correct"}
    judge.run(make_cfg(runs, "run_id=clear", "judge.name=t1", "judge.threshold=1"))
    assert {v["verdict"] for v in read_jsonl(clear_cut_run / "judge/t1/verdicts.jsonl")} == {"incorrect"}
    for name, word in (("t0", "correct"), ("t1", "incorrect")):  # the reply says what decided, never the argmax
        for v in read_jsonl(clear_cut_run / f"judge/{name}/verdicts.jsonl"):
            assert v["reply"] == f"Verdict: {word} (P(correct) {v['p_correct']:.3f})", v
    judge.run(make_cfg(runs, "run_id=clear", "judge.name=all-invalid", "judge.min_verdict_mass=1.0"))
    rows = read_jsonl(clear_cut_run / "judge/all-invalid/verdicts.jsonl")
    assert {v["verdict"] for v in rows} == {"invalid"} and all("min_verdict_mass" in v["invalid_reason"] for v in rows)
    assert all(v["reply"].startswith("Verdict: (no verdict word: they got ") for v in rows)
    summary = pd.read_csv(clear_cut_run / "judge/all-invalid/summary.csv").iloc[0]
    assert summary["judge_invalid"] == 6 and summary["judge_incorrect"] == 0 and math.isnan(summary["acc_judge"])
    assert summary["n_judge"] == 0 and summary["acc_human"] == pytest.approx(0.5)  # the rest of the report stands
    assert (clear_cut_run / "judge/all-invalid/accuracy.png").is_file()


@pytest.mark.slow
def test_generate_mode_parses_the_last_verdict_and_keeps_invalid_apart(clear_cut_run):
    runs = clear_cut_run.parent
    judge.run(make_cfg(runs, "run_id=clear", "judge.name=gen", "judge.mode=generate", "judge_prompt=reasoned-v2"))
    rows = read_jsonl(clear_cut_run / "judge/gen/verdicts.jsonl")
    assert len(rows) == 6 and all(v["mode"] == "generate" and v["p_correct"] is None for v in rows)
    for v in rows:
        if v["verdict"] == "invalid":
            assert v["invalid_reason"]
        else:  # the verdict is the last "Verdict: <word>" of the judge's own reply
            last = [line for line in v["reply"].lower().splitlines() if line.strip().startswith("verdict:")][-1]
            assert last.split(":", 1)[1].strip().rstrip(".") == v["verdict"]
    assert sum(v["verdict"] != "invalid" for v in rows) >= 4  # the worked examples teach the format
    summary = pd.read_csv(clear_cut_run / "judge/gen/summary.csv").iloc[0]
    assert summary["judge_invalid"] + summary["judge_correct"] + summary["judge_incorrect"] == 6
