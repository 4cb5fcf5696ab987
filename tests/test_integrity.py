"""Numbers that are never silently wrong: one process per stage, records verified against their manifest, bad values
refused before anything is written, results that are either complete or rebuilt, and one clear line (exit status 2)
for every input a user can get wrong. Real processes, real files, real (tmpfs / read-only) mounts where root."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import generate, judge, report
from pipeline.decoding import length_batches
from pipeline.errors import PipelineError
from pipeline.runs import StageDir

from conftest import make_cfg, read_jsonl, run_cli

SMALL = ["progress=false", "threads=1"]


def one_error_line(out: subprocess.CompletedProcess) -> str:
    """The CLI failed as promised: exit status 2, no traceback, exactly one 'error:' line; returns it."""
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr
    return errors[0]


def no_temporary_files(root: Path) -> None:
    leftovers = [p for p in root.rglob("*") if ".tmp-" in p.name]
    assert not leftovers, leftovers


def copy_run(judged_run: Path, tmp_path: Path, name: str = "copy") -> Path:
    runs = tmp_path / "runs"
    runs.mkdir(exist_ok=True)
    dest = runs / name
    shutil.copytree(judged_run, dest, ignore=shutil.ignore_patterns(".locks"))
    return dest


def rewrite_checksum(stage: Path, records_name: str) -> None:
    """Make a manifest agree with its (edited) records file, as a careless hand-edit of both would."""
    manifest = json.loads((stage / "manifest.json").read_text())
    data = (stage / records_name).read_bytes()
    manifest["records_file"].update(sha256=hashlib.sha256(data).hexdigest(),
                                    records=sum(1 for line in data.splitlines() if line.strip()))
    (stage / "manifest.json").write_text(json.dumps(manifest))


# ------------------------------------------------------------------------------------------------ the stage lock

HOLD_LOCK = """
import sys, time
from pathlib import Path
from pipeline.runs import StageDir
with StageDir(Path(sys.argv[1]), "generations.jsonl").lock():
    print("holding", flush=True)
    time.sleep(600)
"""


def test_a_second_process_stops_at_once_naming_the_holder_and_a_dead_holder_is_taken_over(tmp_path, model_dir):
    run = tmp_path / "runs" / "locked"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"run_id": "locked", "created": 0}))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run / "generate")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        out = run_cli("stage=generate", "run_id=locked", f"runs_dir={tmp_path}/runs", "dataset.limit=2", *SMALL,
                      cwd=tmp_path)
        line = one_error_line(out)
        assert "in use by another process" in line and f"pid {holder.pid}" in line and "host " in line
        assert not (run / "generate" / "stage.json").exists()  # the loser wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    out = run_cli("stage=generate", "run_id=locked", f"runs_dir={tmp_path}/runs", "dataset.limit=2", *SMALL,
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"taking over the lock last held by pid {holder.pid}" in out.stderr
    assert len(read_jsonl(run / "generate/generations.jsonl")) == 2


@pytest.mark.slow
def test_two_generates_at_once_on_one_run_leave_every_id_exactly_once(tmp_path, model_dir):
    args = [sys.executable, "-m", "pipeline", "stage=generate", "run_id=twice", f"runs_dir={tmp_path}/runs",
            "dataset.limit=8", "generator.batch_size=2", *SMALL]
    procs = [subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    for rc, err in results:  # each either did the work, found it done, or stopped at the lock with one line
        assert rc == 0 or (rc == 2 and "in use by another process" in err), err
    assert any(rc == 0 for rc, _ in results)
    stage = StageDir(tmp_path / "runs/twice/generate", "generations.jsonl")
    ids = [r["id"] for r in stage.read_records()]  # verified against the manifest
    assert len(ids) == len(set(ids)) == 8


# ------------------------------------------------------------------------------------- records verified on read

@pytest.mark.parametrize("damage", ["truncated", "duplicated", "edited"])
def test_generations_changed_after_the_stage_finished_are_refused(judged_run, tmp_path, damage):
    run = copy_run(judged_run, tmp_path)
    f = run / "generate/generations.jsonl"
    lines = f.read_text().splitlines(keepends=True)
    if damage == "truncated":
        f.write_text("".join(lines[:10]))
    elif damage == "duplicated":
        f.write_text("".join(lines + lines[:2]))
    else:
        record = json.loads(lines[3])
        record["prediction"] = "a better answer, typed in by hand"
        f.write_text("".join(lines[:3] + [json.dumps(record) + "\n"] + lines[4:]))
    cfg = make_cfg(run.parent, "run_id=copy", "judge.name=second-opinion")
    with pytest.raises(PipelineError, match="is not the file its stage wrote"):
        judge.run(cfg)
    with pytest.raises(PipelineError, match="is not the file its stage wrote"):
        report.write(run, "smollm2-135m")
    assert not (run / "judge/second-opinion").exists()


def test_duplicate_ids_and_unknown_schemas_are_refused_even_with_a_matching_checksum(judged_run, tmp_path):
    run = copy_run(judged_run, tmp_path)
    f = run / "judge/smollm2-135m/verdicts.jsonl"
    lines = f.read_text().splitlines(keepends=True)
    f.write_text("".join(lines + lines[:1]))
    rewrite_checksum(f.parent, "verdicts.jsonl")
    with pytest.raises(PipelineError, match=r"1 id appear more than once"):
        report.write(run, "smollm2-135m")

    f.write_text("".join(lines[:-1] + [lines[-1].replace('"verdict/1"', '"verdict/9"')]))
    rewrite_checksum(f.parent, "verdicts.jsonl")
    with pytest.raises(PipelineError, match=r"schema this version cannot read \(line 16: 'verdict/9'\)"):
        report.write(run, "smollm2-135m")


def test_manifests_record_the_count_and_checksum_of_their_records(judged_run):
    for stage in (judged_run / "generate", judged_run / "judge/smollm2-135m"):
        manifest = json.loads((stage / "manifest.json").read_text())
        name = manifest["records_file"]["name"]
        assert manifest["records_file"]["records"] == 16
        assert manifest["records_file"]["sha256"] == hashlib.sha256((stage / name).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------- bad values: refused before writing

@pytest.mark.parametrize("stage, overrides, says", [
    ("generate", ["generator.precision=bf61"], "Invalid value 'bf61', expected one of [auto, fp32"),
    ("generate", ["generator.device=gpu0"], "generator.device='gpu0' is not a device"),
    ("generate", ["generator.device=cuda"], "torch sees 0 CUDA GPU"),
    ("judge", ["judge=llama70b-4bit", "judge.compute_dtype=f16"], "Invalid value 'f16'"),
    ("judge", ["judge.mode=logprb"], "Invalid value 'logprb'"),
    ("judge", ["judge.placement.strategy=even"], "Invalid value 'even'"),
    ("judge", ["judge.placement.devices=gpu0"], "Invalid value 'gpu0'"),
    ("generte", [], "Invalid value 'generte'"),
    ("judge", ["judge_prompt.max_candidate_chars=0"], "judge_prompt.max_candidate_chars=0 must be at least 1"),
    ("judge", ["judge.min_verdict_mass=2"], "judge.min_verdict_mass=2.0 must lie in [0, 1]"),
    ("judge", ["judge.threshold=1.5"], "judge.threshold=1.5 must lie in [0, 1]"),
    ("generate", ["generator.batch_size=0", "dataset.limit=0"], "generator.batch_size=0 must be at least 1; "
                                                              "dataset.limit=0 must be at least 1"),
    ("judge", ["judge.name=" + "j" * 300], "at most 128 characters"),
    ("generate", ["run_id=" + "r" * 300], "at most 128 characters"),
])
def test_a_bad_value_is_one_line_and_leaves_nothing_behind(tmp_path, stage, overrides, says):
    runs = tmp_path / "runs"
    run_id = [] if any(o.startswith("run_id") for o in overrides) else ["run_id=r1"]
    out = run_cli(f"stage={stage}", *run_id, f"runs_dir={runs}", *overrides, cwd=tmp_path)
    assert says in one_error_line(out)
    assert not runs.exists()  # no run folder, no runs/latest, no stage.json: the corrected command just runs


def test_runs_dir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    assert "is a file, not a folder" in one_error_line(
        run_cli("stage=generate", f"runs_dir={tmp_path}/runs", cwd=tmp_path))


# ------------------------------------------------------------------ results are complete, or rebuilt on a rerun

def test_a_judge_killed_before_its_csvs_rebuilds_them_when_run_again(judged_run, tmp_path):
    run = copy_run(judged_run, tmp_path)
    folder = run / "judge/smollm2-135m"
    expected = (folder / "summary.csv").read_text().replace("\nshared,", "\ncopy,")
    (folder / "samples.csv").unlink()
    (folder / "summary.csv").unlink()
    judge.run(make_cfg(run.parent, "run_id=copy"))
    assert (folder / "samples.csv").is_file() and (folder / "summary.csv").read_text() == expected


def mount_or_skip(*args: str) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) for a real full or read-only file system")
    out = subprocess.run(["mount", *args], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount here: {out.stderr.strip()}")


def test_a_full_disk_while_reporting_is_one_line_and_the_rerun_completes(judged_run, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mount_or_skip("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk))
    try:
        run = copy_run(judged_run, disk)
        folder = run / "judge/smollm2-135m"
        for name in ("samples.csv", "summary.csv", "accuracy.png", "nll.png"):
            (folder / name).unlink(missing_ok=True)
        filler = disk / "filler"
        with open(filler, "wb", buffering=0) as f:  # fill the disk up to its last few KiB
            try:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
            except OSError:
                pass
        out = run_cli("stage=report", "run_id=copy", f"runs_dir={disk}/runs", "report.plots=false", cwd=tmp_path)
        line = one_error_line(out)
        assert "the disk is full" in line and "MiB more" in line and str(folder) in line
        no_temporary_files(disk)
        assert not (folder / "summary.csv").exists()
        filler.unlink()
        out = run_cli("stage=judge", "run_id=copy", f"runs_dir={disk}/runs", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert "writing them again" in out.stderr and (folder / "summary.csv").is_file()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_read_only_folder_is_one_line(tmp_path):
    source, target = tmp_path / "src", tmp_path / "ro"
    source.mkdir()
    target.mkdir()
    mount_or_skip("--bind", str(source), str(target))
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
        out = run_cli("stage=generate", f"runs_dir={target}/runs", "dataset.limit=2", cwd=tmp_path)
        assert "cannot write here (Read-only file system)" in one_error_line(out)
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


# ----------------------------------------------------------------------------- hostile inputs: one line, exit 2

BAD_FILES = {
    "not-utf8.jsonl": (b'{"id": "1", "question": "Q\xff?", "answers": ["a"]}\n', "line 1: byte 0xff at column 27 is not UTF-8"),
    "empty.jsonl": (b"", "the file is empty (0 bytes)"),
    "header-only.csv": (b"id,question,answers\n", "holds no rows"),
    "empty-list.json": (b"[]", "holds no rows"),
    "broken.jsonl": (b'{"id": "1", "question": "Q?", "answers": ["a"]}\n{"id": "2", "question": }\n',
                     "broken.jsonl, line 2, column 25: not valid JSON"),
    "no-id.jsonl": (b'{"question": "Q?", "answers": ["a"]}\n', "or set dataset.fields.id=null to number the rows"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_bad_data_file_is_one_line_naming_the_file_and_line(tmp_path, name):
    data, says = BAD_FILES[name]
    (tmp_path / name).write_bytes(data)
    out = run_cli("stage=generate", f"dataset.path={tmp_path / name}", "dataset.fields.id=id",
                  f"runs_dir={tmp_path}/runs", cwd=tmp_path)
    assert says in one_error_line(out)
    assert not (tmp_path / "runs").exists()
    out = run_cli("stage=import", f"predictions={tmp_path / name}", f"runs_dir={tmp_path}/runs", cwd=tmp_path)
    one_error_line(out)


def test_a_bare_folder_name_is_a_local_data_folder_not_a_hub_name(tmp_path, model_dir):
    (tmp_path / "mydata").mkdir()
    (tmp_path / "mydata/part.jsonl").write_text('{"id": "q1", "question": "What is 2+2?", "answers": ["4"]}\n')
    out = run_cli("stage=generate", "dataset.path=mydata", "dataset.name=mine", "dataset.fields.id=id",
                  f"runs_dir={tmp_path}/runs", "run_id=folder", *SMALL, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert [r["id"] for r in read_jsonl(tmp_path / "runs/folder/generate/generations.jsonl")] == ["q1"]


def test_model_folders_that_cannot_be_loaded_are_one_line(tmp_path, model_dir):
    (tmp_path / "no-config").mkdir()
    out = run_cli("stage=generate", f"generator.model={tmp_path / 'no-config'}", f"runs_dir={tmp_path}/runs",
                  cwd=tmp_path)
    assert "has no config.json" in one_error_line(out)
    assert not (tmp_path / "runs").exists()
    out = run_cli("stage=plan", f"judge.model={tmp_path / 'no-config'}", f"runs_dir={tmp_path}/runs", cwd=tmp_path)
    assert "has no config.json" in one_error_line(out)

    pickled = tmp_path / "pickled"  # a pytorch_model.bin that would run code when unpickled
    pickled.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model_dir / name, pickled / name)
    subprocess.run([sys.executable, "-c", "import torch, sys\nclass Evil:\n    def __reduce__(self):\n"
                    "        return (print, ('this ran',))\ntorch.save({'lm_head.weight': Evil()}, sys.argv[1])",
                    str(pickled / "pytorch_model.bin")], check=True)
    out = run_cli("stage=generate", f"generator.model={pickled}", f"runs_dir={tmp_path}/runs", "run_id=p",
                  "dataset.limit=2", *SMALL, cwd=tmp_path)
    assert "a pickle that torch refuses to load safely" in one_error_line(out) and "this ran" not in out.stdout
    # nothing blocks the corrected command: the failed attempt took its stage.json back
    assert not (tmp_path / "runs/p/generate/stage.json").exists()
    no_temporary_files(tmp_path)


def test_import_reads_numbers_as_answers_and_finds_the_label_column(tmp_path):
    f = tmp_path / "answers.csv"
    f.write_text("id,question,references,prediction,human_label\n1,What is 2+2?,4,4,yes\n"
                 "2,Year of the moon landing?,1969,1969,1\n3,Capital of France?,Paris,,no\n")
    out = run_cli("stage=import", f"predictions={f}", "run_id=nums", f"runs_dir={tmp_path}/runs", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    records = read_jsonl(tmp_path / "runs/nums/generate/generations.jsonl")
    assert [(r["prediction"], r["human_label"]) for r in records] == [("4", True), ("1969", True), ("", False)]


# ------------------------------------------------------------------------------------------ over-long inputs

def test_an_outlier_runs_in_a_batch_of_its_own():
    lengths = [10_000] + [48] * 40 + [40] * 23
    batches = length_batches(lengths, 32)
    assert batches[0] == (0, 1)  # the outlier alone, not padding 31 others to 10,000 tokens
    assert [hi - lo for lo, hi in batches[1:]] == [32, 31]
    assert length_batches([40] * 64, 32) == [(0, 32), (32, 64)]  # ordinary data: the batches it always had


def short_context_copy(model_dir: Path, folder: Path, positions: int) -> Path:
    """The embedded model with a context of `positions` (config changed, weights linked): the 8,192 positions of the
    real one would make the cut question cost a minute of CPU; the code path is the same."""
    folder.mkdir()
    for f in model_dir.iterdir():
        if f.name != "config.json":
            (folder / f.name).symlink_to(f)
    config = json.loads((model_dir / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": positions}))
    return folder


@pytest.mark.slow
def test_a_question_longer_than_the_context_is_cut_with_a_warning_naming_it(tmp_path, model_dir):
    model = short_context_copy(model_dir, tmp_path / "model-512", 512)
    f = tmp_path / "long.jsonl"
    rows = [{"id": "long", "question": "Why? " * 10_000, "answers": ["because"]},
            {"id": "short", "question": "What is the capital of France?", "answers": ["Paris"]}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = run_cli("stage=generate", f"generator.model={model}", f"dataset.path={f}", "dataset.fields.id=id",
                  "dataset.name=long", "run_id=long", f"runs_dir={tmp_path}/runs", "generator.max_new_tokens=4",
                  *SMALL, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "1 question longer than the model's context (512 positions, less 4 new tokens)" in out.stderr
    assert "ids long" in out.stderr
    manifest = json.loads((tmp_path / "runs/long/generate/manifest.json").read_text())
    assert list(manifest["truncated_questions"]) == ["long"] and manifest["truncated_questions"]["long"] > 10_000
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = {r["id"]: r["prompt"] for r in read_jsonl(tmp_path / "runs/long/generate/generations.jsonl")}
    assert 480 < len(tok(prompts["long"], add_special_tokens=False).input_ids) <= 512 - 4
    assert prompts["long"].count("[...]") == 1 and "capital of France" in prompts["short"]


def test_nothing_left_to_do_loads_no_model(judged_run, tmp_path, monkeypatch):
    run = copy_run(judged_run, tmp_path)
    stage = StageDir(run / "generate", "generations.jsonl")
    os.replace(stage.records_path, stage.partial_path)  # killed after its last batch, before the manifest
    stage.manifest_path.unlink()

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded with nothing left to generate")

    monkeypatch.setattr(generate, "load_causal_lm", no_load)
    generate.run(make_cfg(run.parent, "run_id=copy", "dataset.limit=16"))
    assert stage.is_complete() and len(stage.read_records()) == 16


# ------------------------------------------------------------------------------- one run, one set of settings

def test_another_generator_cannot_write_into_a_run(judged_run, tmp_path):
    run = copy_run(judged_run, tmp_path)
    with pytest.raises(PipelineError, match="already holds a finished stage made with other settings"):
        generate.run(make_cfg(run.parent, "run_id=copy", "dataset.limit=16", "generator.max_new_tokens=7"))
    shard = run / "generate/shards/00001-of-00002"  # an array of another generator, half started
    shard.mkdir(parents=True)
    (shard / "stage.json").write_text(json.dumps({"fingerprint": {"generator": {"model": "someone-else"}}}))
    (run / "generate/manifest.json").unlink()
    with pytest.raises(PipelineError, match="shard 00001-of-00002 was started with other settings"):
        generate.run(make_cfg(run.parent, "run_id=copy", "dataset.limit=16", "shard.index=0", "shard.count=2"))
