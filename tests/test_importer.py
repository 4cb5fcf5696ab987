"""importer.py (stage=import): answers made elsewhere become a run. Human labels are read in every accepted form,
files that lack a field or hold an unknown label are refused naming what is there, numbers are read as answers;
and an imported run is judged and reported against its human labels."""

import json
import math

import pandas as pd
import pytest

from pipeline import importer
from pipeline.errors import PipelineError
from pipeline.stats import auroc

from conftest import make_cfg, read_jsonl, run_cli


def test_predictions_without_a_prediction_column_name_what_is_there(tmp_path):
    path = tmp_path / "p.csv"
    pd.DataFrame({"id": ["a"], "question": ["Q?"], "references": ["x"], "output": ["y"]}).to_csv(path, index=False)
    with pytest.raises(PipelineError, match=r"no field 'prediction'.*id, question, references, output.*"
                                            r"import_fields.prediction"):
        importer.run(make_cfg(tmp_path, f"predictions={path}"))
    with pytest.raises(PipelineError, match="stage=import needs the file"):
        importer.run(make_cfg(tmp_path))


def test_human_labels_in_an_unknown_form_list_the_accepted_ones(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"question": "Q?", "references": ["a"], "prediction": "a", "id": "1", "h": "yes"},
            {"question": "Q?", "references": ["a"], "prediction": "b", "id": "2", "h": "maybe"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(PipelineError, match=r"row 2 \(id 2\): 'maybe'.*Accepted.*correct/incorrect"):
        importer.run(make_cfg(tmp_path, f"predictions={path}", "import_fields.label=h"))


@pytest.mark.parametrize("value, label", [(True, True), ("Yes", True), ("0", False), (1, True), ("Incorrect", False),
                                          ("", None), (None, None), (float("nan"), None), ("wrong", False)])
def test_human_label_forms(value, label):
    assert importer.parse_label(value) == label


@pytest.mark.slow
@pytest.mark.integration
def test_import_reads_numbers_as_answers_and_finds_the_label_column(tmp_path):
    f = tmp_path / "answers.csv"
    f.write_text("id,question,references,prediction,human_label\n1,What is 2+2?,4,4,yes\n"
                 "2,Year of the moon landing?,1969,1969,1\n3,Capital of France?,Paris,,no\n")
    out = run_cli("stage=import", f"predictions={f}", "run_id=nums", f"runs_dir={tmp_path}/runs", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    records = read_jsonl(tmp_path / "runs/nums/generate/generations.jsonl")
    assert [(r["prediction"], r["human_label"]) for r in records] == [("4", True), ("1969", True), ("", False)]


@pytest.mark.slow
def test_import_judge_report_with_human_labels(clear_cut_run):
    samples = pd.read_csv(clear_cut_run / "judge/smollm2-135m/samples.csv")
    assert list(samples["human_label"]) == [1, 0, 1, 0, 1, 0]
    assert list(samples["exact_match"]) == [1, 0, 1, 0, 1, 0] and samples["judge_p_correct"].notna().all()
    s = pd.read_csv(clear_cut_run / "judge/smollm2-135m/summary.csv").iloc[0]
    assert s["acc_human"] == 0.5 and s["n_human"] == 6
    assert s["agree_exact_match_human"] == 1.0 and s["kappa_exact_match_human"] == pytest.approx(1.0)
    assert s["human_fp_exact_match"] == 0 and s["human_fn_exact_match"] == 0
    judged = samples["judge_verdict"] == "correct"
    assert s["human_fp_judge"] == int((judged & (samples["human_label"] == 0)).sum())
    assert s["human_fn_judge"] == int((~judged & (samples["human_label"] == 1)).sum())
    assert s["auroc_p_correct_human"] == pytest.approx(auroc(samples["judge_p_correct"], samples["human_label"] == 1))
    assert math.isnan(s["auroc_sequence_nll_judge"])  # imported answers carry no NLL: said, not invented
    for png in ("accuracy.png", "reliability.png"):
        assert (clear_cut_run / "judge/smollm2-135m" / png).stat().st_size > 1000
    manifest = json.loads((clear_cut_run / "generate/manifest.json").read_text())
    assert manifest["human_labels"] == 6 and len(manifest["imported_from"]["sha256"]) == 64
