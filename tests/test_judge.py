"""judge.py (stage=judge) on the real SmolLM2 judge: the plan, verdicts and manifest it writes, quantised judges on
the CPU, a rerun that does nothing (and one with other settings, refused), layers offloaded to disk, planning again
for prompts longer than planned, a judge that needs GPUs stopping before it loads, answers carrying instructions
judged through the defused prompt, and CSVs rebuilt after a kill."""

import json

import pandas as pd
import pytest

from pipeline import importer, judge
from pipeline.decoding import next_token_logprobs
from pipeline.errors import PipelineError
from pipeline.rows import GenerationRow
from pipeline.verdict import PromptBuilder, VerdictTokens, parse_verdict, verdict_from_logprobs

from conftest import INJECTIONS, copy_run, make_cfg, read_jsonl, run_cli


@pytest.mark.slow
def test_judge_outputs_plan_and_verdicts(judged_run):
    stage = judged_run / "judge/smollm2-135m"
    plan = json.loads((stage / "plan.json").read_text())
    assert plan["fits"] and plan["device_map"] == {"": "cpu"} and plan["total_params"] == 134_515_008
    verdicts = read_jsonl(stage / "verdicts.jsonl")
    assert len(verdicts) == 16
    for v in verdicts:
        assert v["verdict"] in {"correct", "incorrect", "invalid"}
        assert v["reply"].startswith("Verdict:")
        assert (v["invalid_reason"] is None) == (v["verdict"] != "invalid")
        assert v["prompt_name"] == "verdict" and v["prompt_version"] == 2 and v["mode"] == "logprob"
        assert 0.0 <= v["p_correct"] <= 1.0 and v["verdict"] == ("correct" if v["p_correct"] >= 0.5 else "incorrect")
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["placement"]["params_per_device"] == {"cpu": 134_515_008}
    assert manifest["prompt"]["template"].startswith("Question: {question}")


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["int8", "nf4"])
def test_quantised_judges_run_the_whole_stage_on_cpu(judged_run, precision):
    cfg = make_cfg(judged_run.parent, "run_id=shared", f"judge.precision={precision}", f"judge.name=smollm2-{precision}")
    stage = judge.run(cfg)
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["judge"]["precision"].startswith(precision)
    plan = json.loads((stage / "plan.json").read_text())
    assert plan["precision"].startswith(precision) and plan["fits"]
    assert plan["total_weight_bytes"] < 0.5 * 538_060_288  # quantised, unlike the fp32 plan
    assert len(read_jsonl(stage / "verdicts.jsonl")) == 16
    summary = pd.read_csv(stage / "summary.csv").iloc[0]
    assert summary["judge"] == f"smollm2-{precision}" and summary["n"] == 16


@pytest.mark.slow
def test_rerunning_a_finished_judge_does_nothing_and_other_settings_are_refused(judged_run, tmp_path):
    stage = judged_run / "judge/smollm2-135m"
    before = (stage / "verdicts.jsonl").read_bytes(), (stage / "manifest.json").read_bytes()
    assert judge.run(make_cfg(judged_run.parent, "run_id=shared")) == stage  # same settings: nothing to do
    assert ((stage / "verdicts.jsonl").read_bytes(), (stage / "manifest.json").read_bytes()) == before
    with pytest.raises(PipelineError, match=r"other settings \(prompt.reply_tokens: 4 -> 5\).*overwrite=true"):
        judge.run(make_cfg(judged_run.parent, "run_id=shared", "judge_prompt.reply_tokens=5"))
    cfg2 = make_cfg(tmp_path / "runs", "run_id=half")
    (tmp_path / "runs/half/generate").mkdir(parents=True)
    (tmp_path / "runs/half/run.json").write_text('{"created": 1}')
    with pytest.raises(PipelineError, match="no finished generate stage.*stage=generate run_id=half"):
        judge.run(cfg2)


@pytest.mark.slow
def test_cli_judge_without_gpus_stops_before_loading(judged_run):
    out = run_cli("stage=judge", "run_id=shared", "judge=llama70b-8bit", f"runs_dir={judged_run.parent}",
                  cwd=judged_run.parent)
    assert out.returncode == 2, out.stderr
    assert "cannot run here" in out.stderr and "Nothing was loaded" in out.stderr and "GiB" in out.stderr
    assert not (judged_run / "judge/llama70b-8bit").exists()


@pytest.mark.slow
def test_judge_with_layers_offloaded_to_disk_gives_the_same_verdicts(judged_run, tmp_path):
    """Real accelerate offload hooks move each layer in when it runs, as they do across GPUs on a cluster."""
    cfg = make_cfg(judged_run.parent, "run_id=shared", "judge.name=smollm2-offload", "judge.placement.devices=cpu",
                   "judge.placement.max_memory={cpu: 400MB}", "judge.placement.allow_offload=true",
                   "judge.batch_size=4", "judge.placement.max_seq_len=256", f"cache_dir={tmp_path}")
    stage = judge.run(cfg)
    plan = json.loads((stage / "plan.json").read_text())
    assert plan["fits"] and plan["offloaded"] and {r["device"] for r in plan["rows"]} == {"cpu", "disk"}
    offloaded = {v["id"]: v["reply"] for v in read_jsonl(stage / "verdicts.jsonl")}
    direct = {v["id"]: v["reply"] for v in read_jsonl(judged_run / "judge/smollm2-135m/verdicts.jsonl")}
    assert offloaded == direct
    assert "OFFLOAD" in (stage / "log.txt").read_text()
    assert not list((tmp_path / "offload").glob("*"))  # the scratch copy of the offloaded weights is gone


@pytest.mark.slow
def test_judge_plans_again_when_real_prompts_are_longer_than_planned(judged_run):
    stage = judge.run(make_cfg(judged_run.parent, "run_id=shared", "judge.name=short-plan",
                               "judge.placement.max_seq_len=16"))
    plan = json.loads((stage / "plan.json").read_text())
    # sized for the longest real judge prompt (~150 tokens here), not the configured 16
    assert 100 < plan["workload"]["seq_len"] < 400


@pytest.mark.slow
def test_the_stage_judges_answers_that_carry_instructions_through_the_defused_prompt(tmp_path, tokenizer_and_model):
    """An imported answer that carries fake turns, fences or instructions is judged by the stage exactly as the
    defused prompt (PromptBuilder) is: the stage's P(correct) equals that of the defused prompt scored on its own,
    and in generate mode every verdict is read from the judge's own reply, with a reason when invalid."""
    tok, model = tokenizer_and_model
    rows = [{"id": f"x{i}", "question": "What is the capital of France?", "references": ["Paris"], "prediction": a}
            for i, a in enumerate(INJECTIONS)]
    path = tmp_path / "inject.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = tmp_path / "runs"
    importer.run(make_cfg(runs, "run_id=inj", f"predictions={path}"))
    cfg = make_cfg(runs, "run_id=inj")
    judge.run(cfg)
    stored = {v["id"]: v for v in read_jsonl(runs / "inj/judge/smollm2-135m/verdicts.jsonl")}
    build, tokens = PromptBuilder(tok, cfg.judge_prompt, True), VerdictTokens.build(tok, cfg.judge_prompt)
    for r in rows:
        logps, _ = next_token_logprobs(model, [build(GenerationRow.answer(**{k: r[k] for k in (
            "id", "question", "references", "prediction")}))[1]], tokens.ids)
        _, p_correct, _ = verdict_from_logprobs(logps[0], len(tokens.correct), cfg.judge.threshold,
                                                cfg.judge.min_verdict_mass)
        assert stored[r["id"]]["p_correct"] == pytest.approx(p_correct, abs=2e-3), r["prediction"]
    judge.run(make_cfg(runs, "run_id=inj", "judge.name=gen", "judge.mode=generate", "judge_prompt=reasoned-v2"))
    for v in read_jsonl(runs / "inj/judge/gen/verdicts.jsonl"):  # read from the judge's own reply, not the prompt
        assert v["verdict"] == parse_verdict(v["reply"], make_cfg(runs, "judge_prompt=reasoned-v2").judge_prompt).label
        assert (v["verdict"] == "invalid") == (v["invalid_reason"] is not None)


@pytest.mark.slow
def test_a_judge_killed_before_its_csvs_rebuilds_them_when_run_again(judged_run, tmp_path):
    run = copy_run(judged_run, tmp_path)
    folder = run / "judge/smollm2-135m"
    expected = (folder / "summary.csv").read_text().replace("\nshared,", "\ncopy,")
    (folder / "samples.csv").unlink()
    (folder / "summary.csv").unlink()
    judge.run(make_cfg(run.parent, "run_id=copy"))
    assert (folder / "samples.csv").is_file() and (folder / "summary.csv").read_text() == expected
