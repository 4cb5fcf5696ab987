"""generate -> judge -> CSVs on the real SmolLM2, and what happens on interruption and bad input."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline import generate, judge, report
from pipeline.errors import PipelineError
from pipeline.metrics import exact_match, token_f1
from pipeline.report import SAMPLE_COLUMNS

from conftest import make_cfg, read_jsonl, run_cli

pytestmark = pytest.mark.slow

RECORD_KEYS = {"schema", "id", "index", "question", "references", "prompt", "prediction", "finish_reason",
               "num_generated_tokens", "token_ids", "tokens", "token_logprobs", "sequence_nll", "mean_nll"}


def test_generation_records(judged_run):
    records = read_jsonl(judged_run / "generate/generations.jsonl")
    factoids = read_jsonl(Path(generate.__file__).parent / "data/factoids.jsonl")[:16]
    assert sorted(r["id"] for r in records) == sorted(f["id"] for f in factoids)
    assert {r["id"]: r["index"] for r in records} == {f["id"]: i for i, f in enumerate(factoids)}
    for r in records:
        assert set(r) == RECORD_KEYS and r["schema"] == "generation/1"
        n = r["num_generated_tokens"]
        assert n == len(r["token_ids"]) == len(r["tokens"]) == len(r["token_logprobs"]) > 0
        assert all(lp <= 0 for lp in r["token_logprobs"])
        assert r["sequence_nll"] == pytest.approx(-sum(r["token_logprobs"]), abs=1e-4)
        assert r["finish_reason"] in {"eos", "newline", "length"}
        assert "\n" not in r["prediction"]
        assert r["prompt"].startswith("<|im_start|>system\nYou answer trivia questions")
        assert r["question"] in r["prompt"]


def test_generate_manifest_and_config(judged_run):
    manifest = json.loads((judged_run / "generate/manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["records"] == 16
    assert manifest["versions"]["torch"] and manifest["versions"]["transformers"].startswith("5.")
    assert manifest["hardware"]["cpu_count"] >= 1 and "gpus" in manifest["hardware"]
    assert "commit" in manifest["git"]
    t = manifest["timings"]
    assert t["questions_per_s"] > 0 and t["generated_tokens"] > 0 and t["total_s"] >= t["generate_s"]
    assert len(manifest["generator"]["converted_from"]["sha256"]) == 64
    assert len(manifest["dataset"]["content_sha256"]) == 64
    assert manifest["config"]["generator"]["max_new_tokens"] == 24 and manifest["config"]["stage"] == "generate"
    config = yaml.safe_load((judged_run / "generate/config.yaml").read_text())
    assert config["generator"]["name"] == "smollm2-135m" and config["dataset"]["limit"] == 16
    assert not list(judged_run.glob("generate/*.partial"))


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


def test_samples_csv_matches_the_records(judged_run):
    stage = judged_run / "judge/smollm2-135m"
    samples = pd.read_csv(stage / "samples.csv", keep_default_na=False)
    assert list(samples.columns) == SAMPLE_COLUMNS and len(samples) == 16
    gens = {r["id"]: r for r in read_jsonl(judged_run / "generate/generations.jsonl")}
    assert list(samples["id"]) == sorted(gens, key=lambda i: gens[i]["index"])  # data set order
    verdicts = {v["id"]: v for v in read_jsonl(stage / "verdicts.jsonl")}
    for row in samples.itertuples():
        g = gens[row.id]
        assert json.loads(row.references) == g["references"] and row.prediction == g["prediction"]
        assert row.exact_match == int(exact_match(g["prediction"], g["references"]))
        assert row.token_f1 == pytest.approx(token_f1(g["prediction"], g["references"]), abs=1e-6)
        assert row.sequence_nll == pytest.approx(g["sequence_nll"])
        assert row.judge_verdict == verdicts[row.id]["verdict"] and row.judge_reply == verdicts[row.id]["reply"]


def test_summary_csv_is_consistent_with_samples(judged_run):
    stage = judged_run / "judge/smollm2-135m"
    samples = pd.read_csv(stage / "samples.csv", keep_default_na=False)
    summary = pd.read_csv(stage / "summary.csv").iloc[0]
    counts = samples["judge_verdict"].value_counts()
    assert summary["n"] == 16 and summary["run_id"] == "shared" and summary["judge"] == "smollm2-135m"
    assert summary["judge_correct"] == counts.get("correct", 0)
    assert summary["judge_correct"] + summary["judge_incorrect"] + summary["judge_invalid"] == 16
    valid = summary["judge_correct"] + summary["judge_incorrect"]
    assert summary["judge_accuracy"] == pytest.approx(summary["judge_correct"] / valid, rel=1e-5)
    assert summary["exact_match"] == pytest.approx(samples["exact_match"].mean(), rel=1e-5)
    assert summary["token_f1"] == pytest.approx(samples["token_f1"].mean(), rel=1e-5)
    ok = samples[samples.judge_verdict != "invalid"]
    agree = ((ok.judge_verdict == "correct").astype(int) == ok.exact_match).mean()
    assert summary["judge_em_agreement"] == pytest.approx(agree, rel=1e-5)


def test_invalid_verdicts_are_counted_apart_never_as_wrong(tmp_path):
    gens = [{"id": f"q{i}", "index": i, "question": "Q?", "references": ["Paris"], "prediction": p,
             "finish_reason": "eos", "num_generated_tokens": 3, "sequence_nll": 1.0 + i, "mean_nll": 0.3}
            for i, p in enumerate(["Paris", "Lyon", "Paris"])]
    verdicts = [{"id": f"q{i}", "judge": "j", "verdict": "invalid", "invalid_reason": "empty reply", "reply": ""}
                for i in range(3)]
    samples = report.sample_rows(gens, verdicts, tmp_path, "j")
    s = report.summarize(samples, "r", "j").iloc[0]
    assert s["judge_invalid"] == 3 and s["judge_incorrect"] == 0 and math.isnan(s["judge_accuracy"])
    assert s["n_judge"] == 0 and math.isnan(s["acc_judge"]) and math.isnan(s["kappa_exact_match_judge"])
    assert s["exact_match"] == pytest.approx(2 / 3) and s["acc_exact_match"] == pytest.approx(2 / 3)


def test_interrupted_generate_resumes_without_redoing_finished_records(tmp_path, model_dir):
    cfg = make_cfg(tmp_path / "runs", "run_id=r", "dataset.limit=12", "generator.batch_size=4")
    stage = generate.run(cfg)
    full = (stage / "generations.jsonl").read_text().splitlines(keepends=True)
    # What a kill -9 in the third batch leaves: 8 records, a torn line, no manifest, no final file.
    (stage / "manifest.json").unlink()
    (stage / "generations.jsonl").unlink()
    (stage / "generations.jsonl.partial").write_text("".join(full[:8]) + full[8][:40])
    generate.run(cfg)
    resumed = (stage / "generations.jsonl").read_text().splitlines(keepends=True)
    assert resumed[:8] == full[:8]  # kept byte for byte, not regenerated
    assert sorted(json.loads(x)["id"] for x in resumed) == sorted(json.loads(x)["id"] for x in full)
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["resumed_with"] == 8 and manifest["records"] == 12
    assert "resuming" in (stage / "log.txt").read_text()


def test_rerunning_a_finished_judge_does_nothing_and_other_settings_are_refused(judged_run, tmp_path):
    stage = judged_run / "judge/smollm2-135m"
    before = (stage / "verdicts.jsonl").read_bytes(), (stage / "manifest.json").read_bytes()
    assert judge.run(make_cfg(judged_run.parent, "run_id=shared")) == stage  # same settings: nothing to do
    assert ((stage / "verdicts.jsonl").read_bytes(), (stage / "manifest.json").read_bytes()) == before
    with pytest.raises(PipelineError, match=r"other settings \(judge.max_new_tokens: 6 -> 5\).*overwrite=true"):
        judge.run(make_cfg(judged_run.parent, "run_id=shared", "judge.max_new_tokens=5"))
    cfg2 = make_cfg(tmp_path / "runs", "run_id=half")
    (tmp_path / "runs/half/generate").mkdir(parents=True)
    (tmp_path / "runs/half/run.json").write_text('{"created": 1}')
    with pytest.raises(PipelineError, match="no finished generate stage.*stage=generate run_id=half"):
        judge.run(cfg2)


def test_cli_judge_without_gpus_stops_before_loading(judged_run):
    out = run_cli("stage=judge", "run_id=shared", "judge=llama70b-8bit", f"runs_dir={judged_run.parent}",
                  cwd=judged_run.parent)
    assert out.returncode == 2, out.stderr
    assert "cannot run here" in out.stderr and "Nothing was loaded" in out.stderr and "GiB" in out.stderr
    assert not (judged_run / "judge/llama70b-8bit").exists()


def test_cli_bad_inputs_give_one_clear_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "text": "Q?", "answers": ["a"]}\n')
    out = run_cli("stage=generate", f"dataset.path={bad}", f"runs_dir={tmp_path}/runs", cwd=tmp_path)
    assert out.returncode == 2 and "has no field 'question'" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists()  # nothing half-made
    out = run_cli("stage=judge", "run_id=../../etc", f"runs_dir={tmp_path}/runs", cwd=tmp_path)
    assert out.returncode == 2 and "not allowed" in out.stderr
    out = run_cli("stage=generate", "generator.batchsize=4", cwd=tmp_path)
    # caught by the typed schema before any work, said in one line
    assert out.returncode == 2 and "batchsize" in out.stderr and len(out.stderr.strip().splitlines()) == 1


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


def test_cli_doctor_reports_the_node_and_fails_for_a_judge_that_cannot_run(tmp_path, model_dir):
    out = run_cli("stage=doctor", "doctor.smoke=true", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "int8  usable" in out.stdout and "nf4   usable" in out.stdout
    assert "llama70b-8bit" in out.stdout and "smollm2-135m" in out.stdout
    assert "Paris" in out.stdout  # the smoke test really answered
    out = run_cli("stage=doctor", "judge=llama70b-8bit", cwd=tmp_path)
    assert out.returncode == 2 and "cannot run on this node" in out.stderr


def test_judge_plans_again_when_real_prompts_are_longer_than_planned(judged_run):
    stage = judge.run(make_cfg(judged_run.parent, "run_id=shared", "judge.name=short-plan",
                               "judge.placement.max_seq_len=16"))
    plan = json.loads((stage / "plan.json").read_text())
    # sized for the longest real judge prompt (~150 tokens here), not the configured 16
    assert 100 < plan["workload"]["seq_len"] < 400
