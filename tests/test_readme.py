"""The README is the contract: every command README.md shows is run here, read out of README.md itself.

What is extracted (see `readme_commands`):
- each line of every ```bash block, `\\` continuations joined and `#` comments dropped;
- every inline command of the prose: a code span that starts with one of COMMAND_WORDS and has arguments
  (`python -m pipeline stage=generate`, `make demo`, `sbatch ...`);
- the forms of `stage=report` the Reports section lists inline (`run_id=<id>`, `'report.runs=[a,b]'`, ...).

Every extracted command must have an entry in COMMANDS below (which says how it runs and which test runs it), and
every entry must still be in the README: a command added to or changed in the README without a test here fails
`test_every_readme_command_has_a_test`. Commands run literally where they can run on a CPU-only machine without the
Hub, else with the substitutions of SUBSTITUTIONS (token by token), plus the few settings that keep them small and
out of the checkout (SMALL, SLURM_SMALL, LAUNCHER_SMALL; `runs_dir=<tmp>`, `dataset.limit=N`). Nothing else changes.

SLURM commands run on a real single-node SLURM (tests/slurm_local.py, fake GPUs) and are skipped, with the reason,
where that cannot start (not root, no apt-get). `make test` is not run from inside the test suite (CI runs it);
the test checks that CI's entry point calls it.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import read_jsonl

pytestmark = pytest.mark.integration
SLURM_GPUS = 8  # fake GPUs of the module's cluster (the `cluster` fixture of conftest.py)

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DATA = Path(__file__).resolve().parent / "data"
NQ_OPEN_SAMPLE = DATA / "nq_open_sample.jsonl"  # NQ-open's own row format: question (str), answer (list of str)
# Extra Hydra config folder with embedded-model variants under their own names, for the README's sweeps.
SEARCHPATH = f"hydra.searchpath=[file://{DATA / 'conf'}]"
VENV_BIN = Path(sys.executable).parent  # `python` in the README's commands is this one (as after `source activate`)

# ------------------------------------------------------------------------------------------------ substitutions
# README token -> what runs instead. Applied token by token to every command not in LITERAL. "{name}" stands for
# a file or run the test provides (placeholders below).
SUBSTITUTIONS: dict[str, list[str]] = {
    # Gated Hub / GPU presets -> the embedded SmolLM2-135M on CPU, in the preset's own precision, under a name of
    # its own so that each judge still writes its own runs/<id>/judge/<judge>/ folder.
    "generator=llama31-8b": ["generator=smollm2-135m"],
    "judge=llama70b-8bit": ["judge=smollm2-135m", "judge.precision=int8", "judge.name=smollm2-135m-int8"],
    "judge=llama70b-4bit": ["judge=smollm2-135m", "judge.precision=nf4", "judge.compute_dtype=bf16",
                            "judge.name=smollm2-135m-nf4"],
    "judge=llama8b": ["judge=smollm2-135m", "judge.precision=bf16", "judge.name=smollm2-135m-bf16"],
    # Sweeps over two presets -> two distinct embedded presets (tests/data/conf), so two jobs write two runs/folders.
    "generator=smollm2-135m,llama32-1b": [SEARCHPATH, "generator=smollm2-135m,smollm2-135m-bf16"],
    "run_id=sweep-llama32-1b": ["run_id=sweep-smollm2-135m-bf16"],
    "judge=llama8b,llama70b-8bit": [SEARCHPATH, "judge=smollm2-135m-bf16,smollm2-135m-int8"],
    # A Hub data set -> the same preset over a small local file in its own format.
    "dataset=nq_open": ["dataset=nq_open", "dataset.path={nq_open}"],
    # Placeholder files -> small files in the format the README describes, written by the test.
    "dataset.path=/data/qa.jsonl": ["dataset.path={qa}"],
    "predictions=answers.jsonl": ["predictions={answers}"],
    # Placeholder run ids of the Reports section -> runs made by the tests before.
    "run_id=<id>": ["run_id={one_run}"],
    "report.runs=[a,b]": ["report.runs=[{run_a},{run_b}]"],
    # SLURM: the local cluster's partition; it has no accounts. Job logs of a by-hand sbatch go next to the test's runs.
    "slurm.partition=gpu": ["slurm.partition=debug"],
    "slurm.account=myproj": [],
    "hydra.launcher.partition=gpu": ["hydra.launcher.partition=debug"],
    "sbatch": ["sbatch", "--output={logs}/%x-%A_%a.out"],
    # Accuracy you can defend: the nq sample has 8 questions, so the sheet draws 5 of them (3 stay unlabelled);
    # the jury's members are the three embedded judges the README's rescoring commands made; graded.csv is written
    # by the test from the run's own answers.
    "label.n=200": ["label.n=5"],
    "label.sheet=runs/nq-8b/labels/sheet-n200-seed0.csv": ["label.sheet=runs/nq-8b/labels/sheet-n5-seed0.csv"],
    "jury.judges=[llama70b-8bit,llama70b-4bit,llama8b]":
        ["jury.judges=[smollm2-135m-int8,smollm2-135m-nf4,smollm2-135m-bf16]"],
    "predictions=graded.csv": ["predictions={graded}"],
    # Serving the runs folder: any free port, not 8000.
    "8000": ["0"],
    # The page benchmark's size: 300 answers, not 100,000.
    "N": ["300"],
    # The GPU kit and the dry check write into the test's folder, not the checkout's gpu-kit/ and /tmp.
    "gpu-kit": ["gpu-kit", "GPU_KIT_ARGS=--kit {kit} --no-run"],
    "OUT=/tmp/gpu-check-dry": ["OUT={out}"],
    "judge.engine=vllm": ["judge.engine=vllm", "judge.name=smollm2-135m-vllm", "judge.vllm.start_timeout_s=1500",
                          "judge.vllm.extra_args=[--enforce-eager]"],  # no compiling: the server is up in 30 s, not 100
    "judge.api.base_url=http://gpu-node-3:8000/v1": ["judge.api.base_url={vllm_url}", "judge.name=smollm2-135m-api"],
    "judge.api.base_url=https://api.openai.com/v1": ["judge.api.base_url={vllm_url}"],  # no API: the tests' server
    "judge.api.model=gpt-4o": ["judge.api.model=smollm2-135m"],
    "generator.api.base_url=https://api.openai.com/v1": ["generator.api.base_url={vllm_url}"],
    "generator.api.model=gpt-4o-mini": ["generator.api.model=smollm2-135m"],
}

# Commands that run exactly as written (a cwd or environment of the test's choosing, nothing added).
LITERAL = {
    "make demo",
    "source .venv/bin/activate",
    "python -m pipeline stage=plan judge=llama70b-8bit hardware=4xA100-40GB",
    "python -m pipeline stage=plan judge=llama70b hardware=auto",
    "python -m pipeline stage=doctor doctor.smoke=true",
    "slurm/submit.sh --dry-run judge=llama70b-8bit hardware=4xA100-40GB slurm.partition=gpu",
    "python -m pipeline --cfg job",
    "python -m pipeline stage=submit judge=llama70b-8bit hardware=4xA100-40GB slurm.partition=gpu "
    "slurm.report.partition=cpu 'slurm.setup=[\"module load cuda/12.4\"]' slurm.dry_run=true",
    "python -m pipeline stage=submit judge=llama70b-8bit hardware=4xA100-40GB slurm.partition=gpu "
    "slurm.python=containers/apptainer-python slurm.dry_run=true",
}

# What is added to keep a run small and out of the checkout (appended after the README's own arguments).
SMALL = ["threads=1", "progress=false"]
SLURM_SMALL = ["threads=1", "slurm.cpus_per_task=1", "slurm.mem=2G", "slurm.report_cpus=1", "slurm.report_mem=1G",
               "slurm.allow_cpu_torch=true"]  # the test cluster's GPUs are fake; torch here is the CPU build
LAUNCHER_SMALL = ["threads=1", "progress=false", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2"]

# Every command the README shows -> (how it is run here, the test that runs it).
COMMANDS: dict[str, tuple[str, str]] = {
    # Quickstart
    "make demo": ("literally, with RUN_ID set (the run is removed afterwards)", "test_make_demo"),
    "make test": ("not from inside the suite (CI runs it): .ci/run must call it", "test_ci_runs_make_test"),
    "make setup": ("by make demo, which runs it first (already set up: returns at once)", "test_make_demo"),
    "make bench": ("not run (3.5 minutes): the target and its module are checked", "test_make_bench_target"),
    "make test-fast": ("with PYTEST_ARGS=tests/test_rows.py (the fast set on one file); the target's filter checked",
                       "test_make_test_fast"),
    "pip install -e '.[slurm]'": ("not run (it reinstalls the checkout): the extra must be declared and satisfied",
                                  "test_slurm_extra_is_installed"),
    # overview (inline)
    "python -m pipeline stage=generate": ("+ dataset.limit=4", "test_overview_generate_then_judge_the_latest_run"),
    "python -m pipeline stage=judge judge=llama70b-8bit": ("embedded judge in int8, on runs/latest",
                                                           "test_overview_generate_then_judge_the_latest_run"),
    # On a GPU cluster with real models
    "source .venv/bin/activate": ("literally, in bash", "test_source_venv_activate"),
    "python -m pipeline stage=generate generator=llama31-8b dataset=nq_open run_id=nq-8b":
        ("embedded generator; nq_open over tests/data/nq_open_sample.jsonl", "test_generate_then_judge_int8"),
    "python -m pipeline stage=judge run_id=nq-8b judge=llama70b-8bit":
        ("embedded judge, judge.precision=int8", "test_generate_then_judge_int8"),
    "python -m pipeline stage=judge run_id=nq-8b judge=llama70b-4bit":
        ("embedded judge, judge.precision=nf4, compute bf16", "test_rescore_with_other_judges"),
    "python -m pipeline stage=judge run_id=nq-8b judge=llama8b":
        ("embedded judge, judge.precision=bf16", "test_rescore_with_other_judges"),
    # Placement you can check before you queue
    "python -m pipeline stage=plan judge=llama70b-8bit hardware=4xA100-40GB": ("literally", "test_plan_declared_node"),
    "python -m pipeline stage=plan judge=llama70b hardware=auto": ("literally (no GPU here: does not fit, exit 2)",
                                                                   "test_plan_this_machine"),
    "python -m pipeline stage=doctor doctor.smoke=true": ("literally", "test_doctor_smoke"),
    # On SLURM
    "python -m pipeline stage=submit generator=llama31-8b dataset=nq_open judge=llama70b-8bit hardware=4xA100-40GB "
    "slurm.partition=gpu slurm.account=myproj slurm.generate_shards=8 slurm.judge_shards=4":
        ("local SLURM: embedded models, nq_open sample, partition debug, no account", "test_submit_the_chain"),
    "slurm/submit.sh --dry-run judge=llama70b-8bit hardware=4xA100-40GB slurm.partition=gpu":
        ("literally", "test_submit_dry_run"),
    "sbatch --array=0-3 --gres=gpu:1 slurm/generate.sbatch run_id=myrun":
        ("local SLURM, fake GPUs; + --output, dataset.limit=8", "test_sbatch_generate_array_by_hand"),
    # Hydra multirun on SLURM
    "python -m pipeline -m stage=generate generator=smollm2-135m,llama32-1b 'run_id=sweep-${generator.name}' "
    "hydra/launcher=slurm hydra.launcher.partition=gpu":
        ("local SLURM; llama32-1b -> an embedded bf16 variant", "test_hydra_multirun_sweeps"),
    "python -m pipeline -m stage=judge run_id=sweep-llama32-1b judge=llama8b,llama70b-8bit hydra/launcher=slurm "
    "hydra.launcher.partition=gpu hydra.launcher.gpus_per_node=4":
        ("local SLURM; two embedded judge variants (bf16, int8)", "test_hydra_multirun_sweeps"),
    # Presets
    "python -m pipeline --cfg job": ("literally", "test_cfg_job"),
    # Your own data
    "python -m pipeline stage=generate dataset.name=mine dataset.path=/data/qa.jsonl dataset.fields.id=qid "
    "dataset.fields.question=text 'dataset.fields.answers=[gold,aliases]'":
        ("a small qa.jsonl with those fields", "test_own_data"),
    "python -m pipeline stage=generate 'dataset.fields.keep=[category]' run_id=by-topic":
        ("+ dataset.limit=20", "test_own_columns_and_a_breakdown_by_them"),
    "python -m pipeline stage=judge run_id=by-topic 'report.by=[category]'":
        ("the embedded judge", "test_own_columns_and_a_breakdown_by_them"),
    # Rescore answers made anywhere
    "python -m pipeline stage=import predictions=answers.jsonl run_id=vllm-nq import_fields.prediction=output "
    "import_fields.label=human": ("a small answers.jsonl with those columns", "test_import_then_judge"),
    "python -m pipeline stage=judge run_id=vllm-nq judge=llama70b-8bit": ("embedded judge, int8",
                                                                          "test_import_then_judge"),
    # Reports (inline forms)
    "python -m pipeline stage=report 'run_id=<id>'": ("over run nq-8b", "test_report_one_run"),
    "python -m pipeline stage=report 'report.runs=[a,b]'": ("over nq-8b and vllm-nq", "test_report_several_runs"),
    "python -m pipeline stage=report 'report.runs=[all]'": ("over every run of the test", "test_report_all_runs"),
    "python -m pipeline.bench page --n N": ("--n 300", "test_page_benchmark"),
    # Engines
    "python -m pipeline.bench engines": ("without vLLM's environment (PIPELINE_VLLM_PYTHON elsewhere): one line, skipped; "
                                         "with it, make bench measures it (8 minutes; README figures)",
                                         "test_bench_engines_without_vllm"),
    "make vllm": ("literally: the tests' vLLM fixture installed it the same way, so it returns at once",
                  "test_make_vllm"),
    "python -m pipeline stage=judge run_id=nq-8b judge=llama8b judge.engine=vllm":
        ("embedded judge in bf16, as smollm2-135m-vllm: the stage starts vLLM's server and stops it",
         "test_judge_on_vllm_and_on_a_served_judge"),
    "python -m pipeline stage=judge run_id=nq-8b judge=llama8b judge.engine=openai "
    "judge.api.base_url=http://gpu-node-3:8000/v1":
        ("the tests' vLLM server (the embedded model), as smollm2-135m-api", "test_judge_on_vllm_and_on_a_served_judge"),
    "python -m pipeline stage=judge run_id=nq-8b judge.name=gpt-4o judge.engine=openai judge.api.style=chat "
    "judge.api.base_url=https://api.openai.com/v1 judge.api.model=gpt-4o judge.api.key_env=OPENAI_API_KEY":
        ("the tests' vLLM server in place of the API (api.model smollm2-135m), a made-up key in OPENAI_API_KEY",
         "test_judge_on_a_hosted_api_in_chat_style"),
    "python -m pipeline stage=generate dataset=nq_open run_id=nq-4o-mini generator.name=gpt-4o-mini "
    "generator.engine=openai generator.api.style=chat generator.api.base_url=https://api.openai.com/v1 "
    "generator.api.model=gpt-4o-mini generator.api.key_env=OPENAI_API_KEY":
        ("the tests' vLLM server in place of the API (api.model smollm2-135m), a made-up key in OPENAI_API_KEY",
         "test_generate_with_a_hosted_model_in_chat_style"),
    "python -m pipeline stage=fetch generator=llama31-8b judge=llama70b-8bit":
        ("the embedded generator and judge (converted once into the cache)", "test_fetch_the_chains_models"),
    "apptainer build pipeline.sif containers/pipeline.def":
        ("not run: apptainer is not installable here; the definition is checked as its parser reads it",
         "test_apptainer_build_is_checked_not_run"),
    "python -m pipeline stage=submit judge=llama70b-8bit hardware=4xA100-40GB slurm.partition=gpu "
    "slurm.python=containers/apptainer-python slurm.dry_run=true":
        ("literally (a dry run)", "test_submit_dry_run_with_the_sites_set_up_lines"),
    "TORCH=cuda make setup": ("with SETUP_PLAN=1: what it would install (no CUDA wheels downloaded here)",
                              "test_setup_for_gpu_nodes_from_a_machine_without_one"),
    "python -m pipeline stage=submit judge=llama70b-8bit hardware=4xA100-40GB slurm.partition=gpu "
    "slurm.report.partition=cpu 'slurm.setup=[\"module load cuda/12.4\"]' slurm.dry_run=true":
        ("literally (a dry run: nothing submitted)", "test_submit_dry_run_with_the_sites_set_up_lines"),
    "make gpu-kit": ("into the test's folder, without making the stored run (the kit's wheels, trim, size, call)",
                     "test_make_gpu_kit"),
    "make gpu-check DRY=1 OUT=/tmp/gpu-check-dry": ("into the test's folder", "test_make_gpu_check_dry"),
    "python -m http.server 8000 --directory runs": ("on a free port from the test's folder; report.html fetched",
                                                    "test_serve_the_runs_folder"),
    # Accuracy you can defend
    "python -m pipeline stage=label run_id=nq-8b label.n=200 label.seed=0":
        ("label.n=5 (the run has 8 answers)", "test_label_sheet_then_ppi_in_the_report"),
    "python -m pipeline stage=label run_id=nq-8b label.sheet=runs/nq-8b/labels/sheet-n200-seed0.csv":
        ("the n=5 sheet, filled by the test", "test_label_sheet_then_ppi_in_the_report"),
    "python -m pipeline stage=import predictions=graded.csv run_id=nq-8b import_fields.verdict=gpt4_verdict "
    "import_fields.p_correct=gpt4_p import_fields.verdict_judge=gpt-4":
        ("a graded.csv of the run's answers", "test_external_verdicts_onto_a_run"),
    "python -m pipeline stage=jury run_id=nq-8b 'jury.judges=[llama70b-8bit,llama70b-4bit,llama8b]' jury.name=panel "
    "jury.method=mean": ("the three embedded judges of the run", "test_jury_of_the_runs_judges"),
}


# ------------------------------------------------------------------------------------------------ extraction
COMMAND_WORDS = ("python", "make", "sbatch", "pip", "slurm/submit.sh")


def bash_blocks(text: str) -> list[str]:
    """The commands of every ```bash block: `\\` continuations joined, comments and blank lines dropped."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S):
        for line in re.sub(r"\\\n", " ", block).splitlines():
            tokens = shlex.split(line, comments=True)
            if tokens:
                commands.append(shlex.join(tokens))
    return commands


def inline_commands(text: str) -> list[str]:
    """Inline spans of the prose that are commands: they start with one of COMMAND_WORDS and have arguments. A bare
    `python -m pipeline` names the entry point; `scancel` or `scontrol requeue` name what a stage does itself."""
    commands = []
    for span in re.findall(r"`([^`\n]+)`", text):
        try:
            tokens = shlex.split(span)
        except ValueError:  # prose with an apostrophe, not a command
            continue
        if tokens and tokens[0] in COMMAND_WORDS and len(tokens) > 1 and tokens != ["python", "-m", "pipeline"]:
            commands.append(shlex.join(tokens))
    return commands


def report_forms(text: str) -> list[str]:
    """The ways to run `stage=report` alone that the Reports section lists inline, as whole commands."""
    section = text.split("\n## Reports\n", 1)[1].split("\n## ", 1)[0]
    paragraph = section.strip().split("\n\n", 1)[0]
    assert "`stage=report`" in paragraph, "the Reports section no longer starts with how to run stage=report"
    spans = [s for s in re.findall(r"`([^`]+)`", paragraph) if "=" in s and not s.startswith("stage=")]
    return [shlex.join(["python", "-m", "pipeline", "stage=report", *shlex.split(s)]) for s in spans]


def readme_commands(text: str | None = None) -> list[str]:
    text = README.read_text() if text is None else text
    seen = {}
    for command in [*bash_blocks(text), *inline_commands(text), *report_forms(text)]:
        seen.setdefault(command, None)
    return list(seen)


def readme_command(command: str, **placeholders) -> list[str]:
    """The argv that runs `command` here: taken from the README, substituted unless LITERAL."""
    assert command in readme_commands(), f"README.md no longer shows `{command}`; update COMMANDS in {__file__}"
    argv = shlex.split(command)
    if command in LITERAL:
        return argv
    out = []
    for token in argv:
        out += [part.format(**placeholders) for part in SUBSTITUTIONS[token]] if token in SUBSTITUTIONS else [token]
    return out


def venv_env(base: dict | None = None, **extra) -> dict:
    """The environment of an activated virtualenv: its bin/ first on PATH, so `python` is the tests' interpreter."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV_BIN.parent)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def sh(argv: list[str], cwd: Path, env: dict | None = None, timeout: int = 600, ok=(0,)) -> subprocess.CompletedProcess:
    started, cpu = time.monotonic(), children_cpu()
    out = subprocess.run(argv, cwd=cwd, env=venv_env() if env is None else env, capture_output=True, text=True,
                         timeout=timeout, stdin=subprocess.DEVNULL)
    print(f"[{time.monotonic() - started:5.1f} s wall, {children_cpu() - cpu:5.1f} s CPU] {shlex.join(argv)}")
    assert out.returncode in ok, (f"{shlex.join(argv)} exited {out.returncode}\n--- stderr ---\n{out.stderr[-4000:]}"
                                  f"\n--- stdout ---\n{out.stdout[-2000:]}")
    return out


# ------------------------------------------------------------------------------------------------ coverage

def test_every_readme_command_has_a_test():
    found = readme_commands()
    assert len(found) >= 20, f"the extractor found only {len(found)} commands in README.md: {found}"
    untested = [c for c in found if c not in COMMANDS]
    assert not untested, ("README.md shows commands no test runs; add them to COMMANDS (and a test) in "
                          f"tests/test_readme.py: {untested}")
    stale = [c for c in COMMANDS if c not in found]
    assert not stale, f"COMMANDS lists commands README.md no longer shows: {stale}"
    for command, (_, test) in COMMANDS.items():
        assert callable(globals().get(test)), f"{command!r} names a test that does not exist: {test}"
    for literal in LITERAL:
        assert literal in COMMANDS, f"LITERAL names a command that is not in COMMANDS: {literal}"
    substituted = {t for c in found if c not in LITERAL for t in shlex.split(c)}
    unused = [t for t in SUBSTITUTIONS if t not in substituted]
    assert not unused, f"SUBSTITUTIONS replaces tokens no README command has any more: {unused}"


def test_the_extractor_reads_blocks_inline_commands_and_report_forms():
    text = ("Run `python -m pipeline stage=plan x=1` or see `python -m pipeline`, `make demo`, `scancel`.\n\n```bash\n"
            "source .venv/bin/activate\n# a comment\npython -m pipeline -m a=1,2 'b=${c.d}' \\\n    e=f   # trailing\n"
            "```\n\n## Reports\n\n`stage=report` alone: (`run_id=<id>`) or (`'report.runs=[all]'`), `runs/x.csv`.\n"
            "\n## Next\n`python -m pipeline stage=plan x=1`\n")
    assert readme_commands(text) == [
        "source .venv/bin/activate",
        "python -m pipeline -m a=1,2 'b=${c.d}' e=f",
        "python -m pipeline stage=plan x=1",
        "make demo",
        "python -m pipeline stage=report 'run_id=<id>'",
        "python -m pipeline stage=report 'report.runs=[all]'",
    ]


def test_ci_runs_make_test():
    ci = (REPO / ".ci/run").read_text().splitlines()
    assert "make test" in [line.strip() for line in ci if not line.lstrip().startswith("#")], ci
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^test: setup\n\t\$\(PY\) -m pytest", makefile, flags=re.M), "make test no longer runs pytest"


def test_make_test_runs_two_workers_and_one_vllm_server():
    """`make test` hands whole modules to two xdist workers; every module that asks for the tests' vLLM server is in
    the one group that gets it, so a session starts one server, not one per worker. Checked by running a few quick
    tests of four modules the way `make test` does: each module on one worker, the two vLLM modules on the same. On a
    worker, torch has the worker's share of the cores (tests/conftest.py)."""
    from conftest import LONGEST_FIRST, SAME_WORKER, WORKER_THREADS

    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^test: setup\n\t\$\(PY\) -m pytest -n \$\(TEST_WORKERS\) --dist loadscope "
                     r"--no-loadscope-reorder \$\(PYTEST_ARGS\)$", makefile, flags=re.M)
    assert re.search(r"^TEST_WORKERS \?= 2$", makefile, flags=re.M)
    users = {p.name for p in (REPO / "tests").glob("test_*.py") if re.search(r"\bvllm_server\b", p.read_text())}
    assert users and {SAME_WORKER.get(name) for name in users} == {"vllm"}, users
    assert LONGEST_FIRST[0] == "vllm"
    files = {p.name for p in (REPO / "tests").glob("test_*.py")}
    assert set(LONGEST_FIRST) <= files | set(SAME_WORKER.values()), set(LONGEST_FIRST) - files  # none renamed
    quick = ["test_retry_after_is_read_as_seconds_or_a_date", "test_every_readme_command_has_a_test",
             "test_ci_runs_make_test", "test_make_bench_target", "test_a_row_reads_back_exactly_what_it_wrote",
             "test_the_csv_columns_are_the_sample_rows_fields", "test_exact_match_takes_any_reference",
             "test_token_f1_hand_computed"]
    modules = ["test_engines.py", "test_readme.py", "test_rows.py", "test_metrics.py"]
    out = sh([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadscope",
              "--no-loadscope-reorder", "-v", "-k", " or ".join(quick), *(f"tests/{m}" for m in modules)], cwd=REPO)
    ran = re.findall(r"^\[(gw\d)\] \[ *\d+%\] PASSED tests/(test_\w+\.py)::", out.stdout, flags=re.M)
    assert len(ran) == len(quick), out.stdout
    workers = {m: {w for w, module in ran if module == m} for m in modules}
    assert all(len(w) == 1 for w in workers.values()), workers  # a module on one worker
    assert workers["test_engines.py"] == workers["test_readme.py"], workers  # the vLLM group on one
    assert workers["test_rows.py"] | workers["test_metrics.py"] != workers["test_readme.py"], workers  # the rest
    if WORKER_THREADS:  # on a worker, torch has the worker's share of the cores
        import torch

        from pipeline.replicas import threads_per_replica

        share = threads_per_replica(None, int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))  # the CPUs, shared out
        assert torch.get_num_threads() == WORKER_THREADS == share, WORKER_THREADS


def test_make_bench_target():
    import importlib.util

    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^bench: setup\n\t\$\(PY\) -m pipeline\.bench$", makefile, flags=re.M), "make bench changed"
    assert importlib.util.find_spec("pipeline.bench") is not None


def test_make_test_fast(tmp_path):
    """`make test-fast` runs pytest on the tests not marked slow: the target's filter, and a real run of it on one file
    (the whole fast set would run the suite inside the suite)."""
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r'^test-fast: setup\n\t\$\(PY\) -m pytest -m "not slow" \$\(PYTEST_ARGS\)$', makefile, flags=re.M)
    out = sh(["make", "test-fast", "PYTEST_ARGS=tests/test_rows.py -p no:cacheprovider"], cwd=REPO, env=venv_env())
    assert re.search(r"\d+ passed", out.stdout) and "failed" not in out.stdout, out.stdout[-2000:]


def test_slurm_extra_is_installed():
    """`pip install -e ".[slurm]"` is what makes hydra/launcher=slurm work: the extra exists and is satisfied here."""
    from importlib.metadata import version

    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras.get("slurm"), "pyproject.toml has no [slurm] extra"
    for spec in extras["slurm"]:
        req = Requirement(spec)
        assert req.specifier.contains(version(req.name), prereleases=True), (spec, version(req.name))
    assert (REPO / "conf/hydra/launcher/slurm.yaml").is_file()


def test_cfg_job(tmp_path):
    import yaml

    out = sh(readme_command("python -m pipeline --cfg job"), cwd=tmp_path)
    cfg = yaml.safe_load(out.stdout)
    assert cfg["stage"] == "generate" and cfg["generator"]["name"] == "smollm2-135m"
    assert cfg["judge"]["name"] == "smollm2-135m" and cfg["dataset"]["name"] == "factoids"
    assert {"slurm", "report", "shard", "hardware", "judge_prompt"} <= set(cfg)
    assert not list(tmp_path.iterdir())  # printing the config writes nothing


def test_source_venv_activate():
    if not (REPO / ".venv/bin/activate").is_file():
        pytest.skip("no .venv in the checkout (make setup creates it)")
    line = readme_command("source .venv/bin/activate")
    out = sh(["bash", "-c", f"{shlex.join(line)} && python -c 'import pipeline, sys; print(sys.prefix)'"], cwd=REPO,
             env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"})
    assert Path(out.stdout.strip()).resolve() == (REPO / ".venv").resolve()


# ------------------------------------------------------------------------------------------------ make demo
# First of the slow tests, while nothing else runs: it uses both cores (torch's default threads).

@pytest.mark.slow
def test_make_demo():
    """`make demo`, literally (set-up is already done, so it returns at once); RUN_ID names the run it makes."""
    run_id = f"readme-demo-{os.getpid()}"
    runs = REPO / "runs"
    latest = runs / "latest"
    before = os.readlink(latest) if latest.is_symlink() else None
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS")}
    try:
        out = sh(readme_command("make demo"), cwd=REPO, env={**env, "RUN_ID": run_id, "PYTHONUNBUFFERED": "1"})
        folder = runs / run_id / "judge/smollm2-135m"
        assert f"Results: runs/{run_id}/judge/smollm2-135m/" in out.stdout
        for name in ("samples.csv", "summary.csv", "metrics.csv", "report.html", "accuracy.png", "nll.png"):
            assert (folder / name).is_file(), name
        lines = out.stdout.splitlines()
        last = lines.index(f"Open in a browser: {folder / 'report.html'}")
        assert all(line.startswith("make") for line in lines[last + 1:])  # its last line (a sub-make's follow)
        assert len(pd.read_csv(folder / "samples.csv")) == 252  # the whole embedded data set
        assert "accuracy (95% Wilson interval)" in out.stdout and "exact_match" in out.stdout and "kappa" in out.stdout
        # the README's figures for the demo: "exact match credits 1.6% of the answers, while 51% contain a reference"
        claim = re.search(r"exact match credits ([\d.]+)% of the answers, while ([\d.]+)% contain", README.read_text())
        assert claim, "the README no longer states the demo's exact-match and contains figures"
        summary = pd.read_csv(folder / "summary.csv").iloc[0]
        assert summary["acc_exact_match"] == pytest.approx(float(claim.group(1)) / 100, abs=0.03)
        assert summary["acc_contains"] == pytest.approx(float(claim.group(2)) / 100, abs=0.03)
    finally:
        shutil.rmtree(runs / run_id, ignore_errors=True)
        if latest.is_symlink() and os.readlink(latest) == run_id:  # put runs/latest back as it was
            latest.unlink()
            if before is not None:
                latest.symlink_to(before)


# ------------------------------------------------------------------------------------------------ started early
# SLURM commands run on a private single-node cluster (conftest.py's `cluster`, tests/slurm_local.py) with
# SLURM_GPUS = 8 fake GPUs. They are submitted here, before the CPU commands, and checked at the end of the file:
# their jobs use the second core meanwhile, as do the literal commands of the `background` fixture.

def by_job(states: dict, job: str) -> dict:
    return {k: v for k, v in states.items() if k == job or k.startswith(f"{job}_")}


@pytest.fixture(scope="module")
def chain(cluster, tmp_path_factory):
    """The README's stage=submit: returns once the three jobs are queued."""
    work = tmp_path_factory.mktemp("submit")
    command = ("python -m pipeline stage=submit generator=llama31-8b dataset=nq_open judge=llama70b-8bit "
               "hardware=4xA100-40GB slurm.partition=gpu slurm.account=myproj slurm.generate_shards=8 "
               "slurm.judge_shards=4")
    argv = readme_command(command, **places(work))
    out = sh([*argv, f"runs_dir={work / 'runs'}", *SLURM_SMALL], cwd=work, env=venv_env(cluster.env))
    found = re.search(r"^submitted run (\S+):", out.stdout, flags=re.M)
    assert found, out.stdout
    run = work / "runs" / found.group(1)
    return {"out": out, "run": run, "jobs": json.loads((run / "slurm/submit.json").read_text())["jobs"],
            "submitted": json.loads((run / "slurm/submit.json").read_text())}


@pytest.fixture(scope="module")
def by_hand(cluster, tmp_path_factory):
    """The README's by-hand sbatch of the generate script, from the checkout (the script path is relative)."""
    work = tmp_path_factory.mktemp("byhand")
    (work / "logs").mkdir()
    argv = readme_command("sbatch --array=0-3 --gres=gpu:1 slurm/generate.sbatch run_id=myrun", logs=work / "logs")
    out = sh([*argv, f"runs_dir={work / 'runs'}", "dataset.limit=8", "threads=1"], cwd=REPO,
             env=venv_env(cluster.env))
    found = re.search(r"Submitted batch job (\d+)", out.stdout)
    assert found, out.stdout
    return {"out": out, "job": found.group(1), "runs": work / "runs"}


@pytest.fixture(scope="module")
def sweeps(cluster, tmp_path_factory):
    """The README's two Hydra multirun sweeps on SLURM, one after the other, in a background thread."""
    from concurrent.futures import ThreadPoolExecutor

    work = tmp_path_factory.mktemp("sweeps")
    runs, env = work / "runs", venv_env(cluster.env)
    generate = ("python -m pipeline -m stage=generate generator=smollm2-135m,llama32-1b "
                "'run_id=sweep-${generator.name}' hydra/launcher=slurm hydra.launcher.partition=gpu")
    judge = ("python -m pipeline -m stage=judge run_id=sweep-llama32-1b judge=llama8b,llama70b-8bit "
             "hydra/launcher=slurm hydra.launcher.partition=gpu hydra.launcher.gpus_per_node=4")
    commands = [[*readme_command(generate), f"runs_dir={runs}", "dataset.limit=4", *LAUNCHER_SMALL,
                 f"hydra.sweep.dir={work}/multirun-generate"],
                [*readme_command(judge), f"runs_dir={runs}", *LAUNCHER_SMALL, f"hydra.sweep.dir={work}/multirun-judge"]]

    def both():
        return [sh(argv, cwd=work, env=env, timeout=900) for argv in commands]

    pool = ThreadPoolExecutor(max_workers=1)
    done = pool.submit(both)
    yield {"runs": runs, "done": done}
    try:
        done.result(timeout=900)  # let Hydra finish before the cluster stops
    except Exception:
        pass
    pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def background(tmp_path_factory):
    """Literal commands that need nothing else, run one after the other in a background thread from the start of
    the slow tests, each from an empty folder: they keep the second core busy. Each test reads its result."""
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path_factory.mktemp("literal")
    pool = ThreadPoolExecutor(max_workers=1)

    def start(name, command, ok=(0,), env=None, script=False):
        cwd = root / name.replace(" ", "-")
        cwd.mkdir()
        argv = readme_command(command)
        if script:  # a script path relative to the checkout, run from the empty folder
            argv = [str(REPO / argv[0]), *argv[1:]]
        return pool.submit(lambda: (sh(argv, cwd=cwd, env=env, ok=ok), cwd))

    futures = {
        "plan declared": start("plan declared",
                               "python -m pipeline stage=plan judge=llama70b-8bit hardware=4xA100-40GB"),
        "plan here": start("plan here", "python -m pipeline stage=plan judge=llama70b hardware=auto", ok=(0, 2)),
        "doctor": start("doctor", "python -m pipeline stage=doctor doctor.smoke=true"),
        "dry run": start("dry run", "slurm/submit.sh --dry-run judge=llama70b-8bit hardware=4xA100-40GB "
                         "slurm.partition=gpu", env=venv_env(PIPELINE_PYTHON=sys.executable), script=True),
    }
    yield futures
    pool.shutdown(wait=True)


@pytest.mark.slow
def test_slurm_commands_are_accepted(background, chain, by_hand, sweeps):
    # `background` comes first so that its commands start even where the SLURM fixtures skip this test.
    out = chain["out"].stdout  # what the README shows stage=submit printing
    assert re.search(r"generate\s+array job \d+ \(8 tasks\)", out), out
    assert re.search(r"judge\s+array job \d+ \(4 tasks, after generate succeeds\)", out), out
    assert re.search(r"report\s+job \d+ \(after judge succeeds\)", out) and "squeue -j" in out, out
    assert chain["run"].name.endswith("-smollm2-135m-nq_open")  # default id: <time>-<generator>-<dataset>
    judge_cmd = chain["submitted"]["commands"]["judge"]
    assert "--gres=gpu:1" in judge_cmd and "--partition=debug" in judge_cmd  # 1 GPU: the 135M int8 judge's plan
    assert by_hand["job"]
    assert not sweeps["done"].done() or sweeps["done"].exception() is None


# ------------------------------------------------------------------------------------------------ CPU runs

@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """One folder for the module's runs and input files; commands run from it, runs go to its runs/."""
    root = tmp_path_factory.mktemp("readme")
    (root / "runs").mkdir()
    # "Your own data": the fields the README maps (dataset.fields.id=qid, question=text, answers=[gold,aliases]).
    rows = [{"qid": "q1", "text": "What is the capital of Italy?", "gold": "Rome", "aliases": ["Roma"]},
            {"qid": "q2", "text": "What color is the sky on a clear day?", "gold": "blue", "aliases": []},
            {"qid": "q3", "text": "How many days are in a week?", "gold": "7", "aliases": ["seven"]}]
    (root / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # "Rescore answers made anywhere": id, question, references, the answer in `output`, a human label in `human`.
    answers = [{"id": "a1", "question": "What is the capital of Spain?", "references": ["Madrid"],
                "output": "Madrid", "human": "correct"},
               {"id": "a2", "question": "Who wrote Hamlet?", "references": ["Shakespeare", "William Shakespeare"],
                "output": "Charles Dickens", "human": "incorrect"},
               {"id": "a3", "question": "What is 2 + 2?", "references": ["4", "four"], "output": "4", "human": "yes"},
               {"id": "a4", "question": "What is the largest ocean?", "references": ["Pacific", "Pacific Ocean"],
                "output": "the Atlantic", "human": ""}]
    (root / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in answers))
    return root


def places(work: Path, **more) -> dict:
    return {"nq_open": NQ_OPEN_SAMPLE, "qa": work / "qa.jsonl", "answers": work / "answers.jsonl", **more}


def pipeline(work: Path, command: str, *extra: str, ok=(0,), **placeholders) -> subprocess.CompletedProcess:
    """Run a README `python -m pipeline` command from `work`, its runs under work/runs."""
    argv = readme_command(command, **places(work, **placeholders))
    return sh([*argv, f"runs_dir={work / 'runs'}", *SMALL, *extra], cwd=work, ok=ok)


def check_judged(run: Path, judge: str, n: int, precision: str | None = None, shards: int = 0,
                 figures=("accuracy.png", "nll.png")) -> pd.DataFrame:
    """The files a finished judge promises (README, "What a run leaves behind"); with shards, a plan per shard
    (juries and imported verdicts load no model: no plan). Imported answers have no NLL figure; answers with human
    labels get the reliability figure."""
    folder = run / "judge" / judge
    for name in ("samples.csv", "summary.csv", "metrics.csv", "verdicts.jsonl", "manifest.json", *figures):
        assert (folder / name).is_file(), f"{folder} has no {name}: {sorted(p.name for p in folder.iterdir())}"
    judged = json.loads((folder / "manifest.json").read_text())["judge"]
    loaded = judged["mode"] in ("logprob", "generate") and judged.get("engine", "hf") == "hf"  # a plan of its own
    plans = [] if not loaded else [folder / "plan.json"] if not shards else \
        [folder / f"shards/{i:05d}-of-{shards:05d}/plan.json" for i in range(shards)]
    assert all(p.is_file() for p in plans), plans
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["records"] == n
    if precision:
        assert manifest["judge"]["precision"].startswith(precision), manifest["judge"]["precision"]
    samples = pd.read_csv(folder / "samples.csv")
    assert len(samples) == n and samples["id"].is_unique and set(samples["judge"]) == {judge}
    assert set(samples["judge_verdict"]) <= {"correct", "incorrect", "invalid"}
    summary = pd.read_csv(folder / "summary.csv")
    assert len(summary) == 1 and summary.loc[0, "judge"] == judge and summary.loc[0, "n"] == n
    return samples


@pytest.fixture(scope="module")
def nq_run(work):
    """The first two commands of "On a GPU cluster with real models": generate, then the int8 judge."""
    pipeline(work, "python -m pipeline stage=generate generator=llama31-8b dataset=nq_open run_id=nq-8b")
    pipeline(work, "python -m pipeline stage=judge run_id=nq-8b judge=llama70b-8bit")
    return work / "runs/nq-8b"


NQ_ROWS = [json.loads(line) for line in NQ_OPEN_SAMPLE.read_text().splitlines()]


@pytest.mark.slow
def test_generate_then_judge_int8(nq_run):
    gen = json.loads((nq_run / "generate/manifest.json").read_text())
    assert gen["status"] == "complete" and gen["records"] == len(NQ_ROWS)
    assert gen["dataset"]["name"] == "nq_open" and gen["dataset"]["source"] == str(NQ_OPEN_SAMPLE)
    records = read_jsonl(nq_run / "generate/generations.jsonl")
    assert sorted((r["question"], r["references"]) for r in records) == \
        sorted((r["question"], r["answer"]) for r in NQ_ROWS)  # NQ-open's fields, mapped by the preset
    assert all(r["prediction"] and r["token_logprobs"] for r in records)
    check_judged(nq_run, "smollm2-135m-int8", len(NQ_ROWS), precision="int8")


@pytest.mark.slow
def test_rescore_with_other_judges(nq_run):
    before = (nq_run / "generate/generations.jsonl").read_bytes()
    pipeline(nq_run.parents[1], "python -m pipeline stage=judge run_id=nq-8b judge=llama70b-4bit")
    pipeline(nq_run.parents[1], "python -m pipeline stage=judge run_id=nq-8b judge=llama8b")
    check_judged(nq_run, "smollm2-135m-nf4", len(NQ_ROWS), precision="nf4")
    check_judged(nq_run, "smollm2-135m-bf16", len(NQ_ROWS), precision="bf")
    assert (nq_run / "generate/generations.jsonl").read_bytes() == before  # judging never regenerates
    assert {p.name for p in (nq_run / "judge").iterdir()} >= {"smollm2-135m-int8", "smollm2-135m-nf4",
                                                              "smollm2-135m-bf16"}


@pytest.mark.slow
def test_overview_generate_then_judge_the_latest_run(work):
    out = pipeline(work, "python -m pipeline stage=generate", "dataset.limit=4")
    run = (work / "runs/latest").resolve()
    assert run.name in out.stdout + out.stderr
    assert json.loads((run / "generate/manifest.json").read_text())["records"] == 4
    pipeline(work, "python -m pipeline stage=judge judge=llama70b-8bit")  # no run_id: the newest run
    check_judged(run, "smollm2-135m-int8", 4, precision="int8")


@pytest.mark.slow
def test_own_data(work):
    command = ("python -m pipeline stage=generate dataset.name=mine dataset.path=/data/qa.jsonl dataset.fields.id=qid "
               "dataset.fields.question=text 'dataset.fields.answers=[gold,aliases]'")
    pipeline(work, command)
    run = (work / "runs/latest").resolve()
    assert run.name.endswith("-mine")  # default id: <time>-<generator>-<dataset>
    records = {r["id"]: r for r in read_jsonl(run / "generate/generations.jsonl")}
    assert set(records) == {"q1", "q2", "q3"}
    assert records["q1"]["references"] == ["Rome", "Roma"] and records["q2"]["references"] == ["blue"]
    assert records["q3"]["question"] == "How many days are in a week?"


@pytest.mark.slow
def test_own_columns_and_a_breakdown_by_them(work):
    pipeline(work, "python -m pipeline stage=generate 'dataset.fields.keep=[category]' run_id=by-topic",
             "dataset.limit=20")
    out = pipeline(work, "python -m pipeline stage=judge run_id=by-topic 'report.by=[category]'")
    run = work / "runs/by-topic"
    assert all(set(r["meta"]) == {"category"} for r in read_jsonl(run / "generate/generations.jsonl"))
    samples = pd.read_csv(run / "judge/smollm2-135m/samples.csv")
    assert samples.columns[-1] == "category" and samples.category.nunique() > 1
    metrics = pd.read_csv(run / "judge/smollm2-135m/metrics.csv")
    shown = {s.removeprefix("accuracy[category=").rstrip("]") for s in metrics[metrics.criterion == "judge"].statistic
             if s.startswith("accuracy[category=")}
    assert shown == set(samples.category)
    assert "judge accuracy by category (95% Wilson): " in out.stdout


@pytest.fixture(scope="module")
def imported_run(work):
    pipeline(work, "python -m pipeline stage=import predictions=answers.jsonl run_id=vllm-nq "
                   "import_fields.prediction=output import_fields.label=human")
    pipeline(work, "python -m pipeline stage=judge run_id=vllm-nq judge=llama70b-8bit")
    return work / "runs/vllm-nq"


@pytest.mark.slow
def test_import_then_judge(imported_run):
    records = {r["id"]: r for r in read_jsonl(imported_run / "generate/generations.jsonl")}
    assert records["a2"]["prediction"] == "Charles Dickens" and records["a1"]["human_label"] is True
    assert records["a2"]["human_label"] is False and records["a4"]["human_label"] is None
    assert records["a1"]["token_logprobs"] is None
    samples = check_judged(imported_run, "smollm2-135m-int8", 4, precision="int8",
                           figures=("accuracy.png", "reliability.png")).set_index("id")
    assert samples.loc["a1", "human_label"] == 1 and samples.loc["a2", "human_label"] == 0
    assert pd.isna(samples.loc["a4", "human_label"])
    summary = pd.read_csv(imported_run / "judge/smollm2-135m-int8/summary.csv")
    assert summary.loc[0, "n_human"] == 3


@pytest.mark.slow
def test_report_one_run(work, nq_run):
    judges = sorted(p.name for p in (nq_run / "judge").iterdir())
    stamps = {j: (nq_run / "judge" / j / "summary.csv").stat().st_mtime_ns for j in judges}
    out = pipeline(work, "python -m pipeline stage=report 'run_id=<id>'", one_run="nq-8b")
    for judge in judges:  # every finished judge of the run is reported again from its stored records
        assert (nq_run / "judge" / judge / "summary.csv").stat().st_mtime_ns > stamps[judge]
        check_judged(nq_run, judge, len(NQ_ROWS))
        assert f"nq-8b / {judge}" in out.stdout
    assert not (work / "runs/leaderboard.csv").exists()  # a leaderboard only over several runs


@pytest.mark.slow
def test_report_several_runs(work, nq_run, imported_run):
    board_path = work / "runs/leaderboard.csv"
    board_path.unlink(missing_ok=True)
    out = pipeline(work, "python -m pipeline stage=report 'report.runs=[a,b]'", run_a="nq-8b", run_b="vllm-nq")
    board = pd.read_csv(board_path)
    judges = {r: {p.name for p in (work / "runs" / r / "judge").iterdir()} for r in ("nq-8b", "vllm-nq")}
    assert sorted(zip(board["run_id"], board["judge"])) == sorted((r, j) for r, js in judges.items() for j in js)
    assert board.groupby("run_id")["dataset"].nunique().max() == 1 and board["dataset"].nunique() == 2
    assert "different data sets" in out.stdout  # runs over other data sets are grouped apart, and it says so


@pytest.mark.slow
def test_report_all_runs(work, nq_run, imported_run):
    board_path = work / "runs/leaderboard.csv"
    board_path.unlink(missing_ok=True)
    pipeline(work, "python -m pipeline stage=report 'report.runs=[all]'")
    board = pd.read_csv(board_path)
    judged = sorted((run.name, j.name) for run in (work / "runs").iterdir() if run.is_dir() and not run.is_symlink()
                    and (run / "judge").is_dir() for j in (run / "judge").iterdir())
    assert sorted(zip(board["run_id"], board["judge"])) == judged and {"nq-8b", "vllm-nq"} <= set(board["run_id"])


@pytest.mark.slow
def test_plan_declared_node(background):
    out, tmp_path = background["plan declared"].result(timeout=900)
    assert "placement plan: llama70b-8bit" in out.stdout and "verdict: fits" in out.stdout
    assert all(f"cuda:{i} NVIDIA A100-SXM4-40GB" in out.stdout for i in range(4))
    assert re.search(r"int8\s+fits here\s+3 x NVIDIA A100-SXM4-40GB", out.stdout)
    plan = json.loads((tmp_path / "runs/plans/llama70b-8bit--4xA100-40GB.json").read_text())
    assert plan["fits"] is True and plan["precision"].startswith("int8")


@pytest.mark.slow
def test_plan_this_machine(background):
    import torch

    out, tmp_path = background["plan here"].result(timeout=900)
    plan = json.loads((tmp_path / "runs/plans/llama70b--auto.json").read_text())
    assert plan["fits"] is (out.returncode == 0)  # exit status 2 exactly when the judge does not fit here
    assert "placement plan: llama70b" in out.stdout and "what fits" in out.stdout
    if not torch.cuda.is_available():
        assert "verdict: DOES NOT FIT" in out.stdout and "needs GPUs" in out.stdout and out.returncode == 2


@pytest.mark.slow
def test_doctor_smoke(background):
    out, _ = background["doctor"].result(timeout=900)
    text = out.stdout
    for part in ("== this node", "== bitsandbytes", "== judge presets on this node", "== smoke test",
                 "== chosen judge: smollm2-135m"):
        assert part in text, text
    assert re.search(r"^int8\s+usable", text, flags=re.M) and re.search(r"^nf4\s+usable", text, flags=re.M)
    assert re.search(r"smollm2-135m on \S+: '.+\?' -> '.+'", text)  # one question answered by the generator


@pytest.mark.slow
def test_submit_dry_run(background):
    out, tmp_path = background["dry run"].result(timeout=900)
    lines = [x for x in out.stdout.splitlines() if x.startswith("sbatch")]
    assert len(lines) == 3 and all("--partition=gpu" in x for x in lines)
    assert "--gres=gpu:3" in lines[1]  # the 70B int8 plan needs 3 of the 40 GiB A100s
    assert "--dependency=afterok:{generate}" in lines[1] and "--dependency=afterok:{judge}" in lines[2]
    assert all("judge=llama70b-8bit" in x for x in lines)
    assert not list(tmp_path.iterdir())  # nothing submitted, nothing written


# ------------------------------------------------------------------------------------------------ on SLURM, results
# The SLURM commands were submitted by test_slurm_commands_are_accepted, near the top of this file, so that their
# jobs run on the second core while the CPU commands above run on the first. Here each is waited for and checked.

@pytest.mark.slow
def test_submit_the_chain(cluster, chain):
    run, jobs = chain["run"], chain["jobs"]
    states = cluster.wait_for_jobs(list(jobs.values()), timeout=600)
    logs = {p.name: p.read_text()[-1500:] for p in (run / "slurm").glob("*.out")}
    assert set(states.values()) == {"COMPLETED"}, (states, logs)
    assert len(by_job(states, jobs["generate"])) == 8 and len(by_job(states, jobs["judge"])) == 4
    check_judged(run, "smollm2-135m-int8", len(NQ_ROWS), precision="int8", shards=4)
    gen = json.loads((run / "generate/manifest.json").read_text())
    assert gen["merged_from"]["shard_count"] == 8 and gen["records"] == len(NQ_ROWS)
    assert gen["dataset"]["name"] == "nq_open"
    assert json.loads((run / "judge/smollm2-135m-int8/manifest.json").read_text())["merged_from"]["shard_count"] == 4
    assert len(logs) == 8 + 4 + 1, sorted(logs)
    # the hardware profile sized the judge tasks and stayed with submit: each task placed the judge on its own GPUs
    submitted = json.loads((run / "slurm/submit.json").read_text())
    assert submitted["sizing"]["hardware"] == "4xA100-40GB" and "hardware=4xA100-40GB" in submitted["not_forwarded"]
    for name, cmd in submitted["commands"].items():
        assert not [a for a in cmd if a.lstrip("+~").startswith("hardware")], (name, cmd)
    for shard in sorted((run / "judge/smollm2-135m-int8/shards").iterdir()):
        assert "hardware.name" not in " ".join(json.loads((shard / "manifest.json").read_text())["command"])
        assert "name: auto" in (shard / "config.yaml").read_text().split("hardware:", 1)[1][:40]


@pytest.mark.slow
def test_sbatch_generate_array_by_hand(cluster, by_hand):
    runs, job = by_hand["runs"], by_hand["job"]
    states = cluster.wait_for_jobs([job], timeout=600)
    assert set(states.values()) == {"COMPLETED"} and len(states) == 4, states
    for i in range(4):  # each task wrote its own shard, i of 4, from SLURM_ARRAY_TASK_*
        manifest = json.loads((runs / f"myrun/generate/shards/{i:05d}-of-00004/manifest.json").read_text())
        assert manifest["status"] == "complete" and manifest["records"] == 2
        assert manifest["slurm"]["SLURM_ARRAY_TASK_ID"] == str(i)
        assert manifest["slurm"]["SLURM_GPUS_ON_NODE"] == "1"  # --gres=gpu:1: one (fake) GPU per task
    sh(["python", "-m", "pipeline", "stage=merge", "run_id=myrun", f"runs_dir={runs}"], cwd=runs.parent)
    ids = [r["id"] for r in read_jsonl(runs / "myrun/generate/generations.jsonl")]
    assert len(ids) == 8 and len(set(ids)) == 8


@pytest.mark.slow
def test_hydra_multirun_sweeps(sweeps):
    runs = sweeps["runs"]
    sweeps["done"].result(timeout=900)  # both sweeps exited 0 (Hydra waits for its SLURM jobs)
    made = sorted(p.name for p in runs.iterdir() if p.is_dir() and not p.is_symlink())
    assert made == ["sweep-smollm2-135m", "sweep-smollm2-135m-bf16"]  # one run per generator, not a cross product
    jobs = set()
    for run in made:
        manifest = json.loads((runs / run / "generate/manifest.json").read_text())
        assert manifest["records"] == 4 and manifest["generator"]["name"] == run.removeprefix("sweep-")
        assert manifest["shard"]["count"] == 1  # the sweep's job array is not mistaken for data shards
        jobs.add(manifest["slurm"]["SLURM_JOB_ID"])
    assert len(jobs) == 2  # two jobs
    run = runs / "sweep-smollm2-135m-bf16"
    assert sorted(p.name for p in (run / "judge").iterdir()) == ["smollm2-135m-bf16", "smollm2-135m-int8"]
    check_judged(run, "smollm2-135m-bf16", 4, precision="bf")
    check_judged(run, "smollm2-135m-int8", 4, precision="int8")
    slurm = {json.loads((run / "judge" / j / "manifest.json").read_text())["slurm"]["SLURM_JOB_ID"]
             for j in ("smollm2-135m-bf16", "smollm2-135m-int8")}
    assert len(slurm) == 2  # one job per judge
    assert not (runs / "sweep-smollm2-135m/judge").exists()


@pytest.mark.slow
def test_make_gpu_kit(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS")}
    kit = tmp_path / "gpu-kit"
    out = sh(readme_command("make gpu-kit", kit=kit), cwd=REPO, env=env, timeout=900)
    assert f'"carry": ["{kit}"]' in out.stdout and "python3 scripts/gpu_check.py" in out.stdout  # the device call
    assert "--out $OUT" in out.stdout
    assert re.search(r"\d+(\.\d+)? MiB", out.stdout)
    wheels = {p.name.split("-")[0].lower() for p in (kit / "wheels").glob("*.whl")}
    assert {"bitsandbytes", "hydra_core", "omegaconf", "datasets", "transformers"} <= wheels, wheels
    assert (kit / "tokenizer/tokenizer.json").is_file()


@pytest.mark.slow
def test_make_gpu_check_dry(tmp_path, model_dir):
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS")}
    out_dir = tmp_path / "out"
    sh(readme_command("make gpu-check DRY=1 OUT=/tmp/gpu-check-dry", out=out_dir), cwd=REPO, env=env, timeout=900)
    from test_gpu_check import check_dry_results

    check_dry_results(out_dir)


def test_page_benchmark(tmp_path):
    out = sh(readme_command("python -m pipeline.bench page --n N"), cwd=tmp_path)
    assert "report.html of 300 answers" in out.stdout
    assert "interactive" in out.stdout or "no chromium here" in out.stdout


@pytest.mark.slow
def test_serve_the_runs_folder(work, nq_run):
    import urllib.request

    argv = readme_command("python -m http.server 8000 --directory runs")
    server = subprocess.Popen(argv, cwd=work, env=venv_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = server.stdout.readline()  # "Serving HTTP on :: port 41234 (http://[::]:41234/) ..."
        port = int(re.search(r"port (\d+)", line).group(1))
        page = nq_run / "judge/smollm2-135m-int8/report.html"
        url = f"http://127.0.0.1:{port}/nq-8b/judge/smollm2-135m-int8/report.html"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.read() == page.read_bytes()
    finally:
        server.terminate()
        server.wait(timeout=30)


# ------------------------------------------------------------------------------- accuracy you can defend
# These add labels and judges to nq-8b, so they come after the tests above that count its judges.

@pytest.mark.slow
def test_label_sheet_then_ppi_in_the_report(work, nq_run):
    from pipeline.metrics import contains_reference

    out = pipeline(work, "python -m pipeline stage=label run_id=nq-8b label.n=200 label.seed=0")
    sheet = nq_run / "labels/sheet-n5-seed0.csv"
    assert str(sheet) in out.stdout + out.stderr
    rows = pd.read_csv(sheet, dtype=str, keep_default_na=False)
    assert list(rows.columns) == ["id", "question", "references", "prediction", "human_label"] and len(rows) == 5
    assert (rows.human_label == "").all()  # nothing to anchor on
    rows["human_label"] = ["yes" if contains_reference(p, r.split(" | ")) else "no"  # a labeller's verdict
                           for p, r in zip(rows.prediction, rows.references)]
    rows.loc[0, "human_label"] = "no" if rows.loc[0, "human_label"] == "yes" else "yes"  # and one disagreement
    rows.to_csv(sheet, index=False)
    out = pipeline(work, "python -m pipeline stage=label run_id=nq-8b "
                         "label.sheet=runs/nq-8b/labels/sheet-n200-seed0.csv")
    # 5 labels are fewer than report.min_labels: every label-based statistic is there, empty, saying why
    assert "PPI++" in out.stdout and "too few labels (5): fewer than report.min_labels=30" in out.stdout
    folder = nq_run / "judge/smollm2-135m-int8"
    summary = pd.read_csv(folder / "summary.csv").iloc[0]
    assert summary.n_human == 5 and summary.labels_uniform == 1 and summary.labels_note.startswith("too few labels (5)")
    assert pd.isna(summary.ppi_acc_judge) and summary.acc_human_lo <= summary.acc_human <= summary.acc_human_hi
    metrics = pd.read_csv(folder / "metrics.csv")
    statistics = set(metrics.statistic)
    assert {"ppi_accuracy", "labels_needed", "threshold[max_kappa]", "threshold[equal_error]", "ece",
            "agreement[words<=5]"} <= statistics, statistics
    assert metrics[metrics.statistic == "ppi_accuracy"].note.str.startswith("too few labels (5)").all()
    labels = read_jsonl(nq_run / "labels/labels.jsonl")
    assert sorted(r["id"] for r in labels) == sorted(rows.id)


@pytest.mark.slow
def test_external_verdicts_onto_a_run(work, nq_run, imported_run):
    answers = read_jsonl(nq_run / "generate/generations.jsonl")
    graded = pd.DataFrame({"id": [a["id"] for a in answers][::-1], "prediction": [a["prediction"] for a in answers][::-1],
                           "gpt4_verdict": (["yes", "no", "", "correct"] * 4)[:len(answers)],
                           "gpt4_p": ([0.9, 0.2, None, 0.8] * 4)[:len(answers)]})
    graded.to_csv(work / "graded.csv", index=False)
    before = (nq_run / "generate/generations.jsonl").read_bytes()
    pipeline(work, "python -m pipeline stage=import predictions=graded.csv run_id=nq-8b "
                   "import_fields.verdict=gpt4_verdict import_fields.p_correct=gpt4_p import_fields.verdict_judge=gpt-4",
             graded=work / "graded.csv")
    assert (nq_run / "generate/generations.jsonl").read_bytes() == before  # the answers are the run's own
    samples = check_judged(nq_run, "gpt-4", len(answers)).set_index("id")
    want = dict(zip(graded.id, graded.gpt4_verdict.map({"yes": "correct", "correct": "correct", "no": "incorrect"})
                    .fillna("invalid")))
    assert samples.judge_verdict.to_dict() == want
    out = pipeline(work, "python -m pipeline stage=report 'report.runs=[a,b]'", run_a="nq-8b", run_b="vllm-nq")
    board = pd.read_csv(work / "runs/leaderboard.csv")
    row = board[(board.run_id == "nq-8b") & (board.judge == "gpt-4")]
    assert len(row) == 1 and row.iloc[0].judge_mode == "external" and "nq-8b / gpt-4" in out.stdout


@pytest.mark.slow
def test_jury_of_the_runs_judges(work, nq_run):
    for judge in ("llama70b-4bit", "llama8b"):  # the members: already there when the rescoring test ran
        pipeline(work, f"python -m pipeline stage=judge run_id=nq-8b judge={judge}")
    out = pipeline(work, "python -m pipeline stage=jury run_id=nq-8b "
                         "'jury.judges=[llama70b-8bit,llama70b-4bit,llama8b]' jury.name=panel jury.method=mean")
    samples = check_judged(nq_run, "panel", len(NQ_ROWS), figures=("accuracy.png",))
    members = {m: pd.read_csv(nq_run / "judge" / m / "samples.csv").set_index("id")
               for m in ("smollm2-135m-int8", "smollm2-135m-nf4", "smollm2-135m-bf16")}
    for row in samples.itertuples():  # the mean of the members' P(correct), each verdict valid here
        ps = [m.loc[row.id, "judge_p_correct"] for m in members.values()
              if m.loc[row.id, "judge_verdict"] != "invalid"]
        if ps:
            assert row.judge_p_correct == pytest.approx(sum(ps) / len(ps), abs=1e-9)
    metrics = pd.read_csv(nq_run / "judge/panel/metrics.csv")
    assert "fleiss_kappa" in set(metrics.statistic) and "Fleiss" in out.stdout


# ------------------------------------------------------------------------------------------------ engines

@pytest.mark.slow
def test_make_vllm(vllm_python):
    out = sh(["make", "vllm"], cwd=REPO, env=venv_env())
    assert out.stderr.strip() == "" or "installing" not in out.stderr, out.stderr  # already there: nothing to do
    assert vllm_python.is_file()


@pytest.mark.slow
def test_judge_on_vllm_and_on_a_served_judge(nq_run, vllm_server):
    work = nq_run.parents[1]
    pipeline(work, "python -m pipeline stage=judge run_id=nq-8b judge=llama8b judge.engine=openai "
                   "judge.api.base_url=http://gpu-node-3:8000/v1", vllm_url=vllm_server)
    check_judged(nq_run, "smollm2-135m-api", len(NQ_ROWS), precision="bf16")
    engine = json.loads((nq_run / "judge/smollm2-135m-api/manifest.json").read_text())["engine"]
    assert engine["engine"] == "openai" and engine["usage"]["completion_tokens"] == len(NQ_ROWS)

    out = pipeline(work, "python -m pipeline stage=judge run_id=nq-8b judge=llama8b judge.engine=vllm")
    check_judged(nq_run, "smollm2-135m-vllm", len(NQ_ROWS), precision="bf16")
    engine = json.loads((nq_run / "judge/smollm2-135m-vllm/manifest.json").read_text())["engine"]
    server = engine["server"]
    assert engine["engine"] == "vllm" and server["tensor_parallel_size"] == 1 and server["dtype"] == "bfloat16"
    assert server["prefix_caching"] and Path(server["log"]).is_file() and "starting vLLM's server" in out.stderr
    port = engine["base_url"].split(":")[-1].split("/")[0]
    left = subprocess.run(["pgrep", "-f", f"--port {port}"], capture_output=True, text=True)
    assert left.stdout.strip() == "", "the stage left its vLLM server running"


def files_holding(root: Path, text: str) -> list[Path]:
    """Every file under `root` whose bytes contain `text` (an API key must be in none)."""
    return [p for p in root.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


@pytest.mark.slow
def test_judge_on_a_hosted_api_in_chat_style(nq_run, vllm_server, monkeypatch):
    """The hosted-API command against the tests' vLLM server: messages, no prefill, a key from the environment.
    The embedded 135M judge seldom writes "Verdict:" unprompted, so many verdicts are invalid: each is there, with
    its reason, and the report flags the judge; the key is in no file."""
    key = "sk-hosted-0123456789-never-written"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    work = nq_run.parents[1]
    pipeline(work, "python -m pipeline stage=judge run_id=nq-8b judge.name=gpt-4o judge.engine=openai "
                   "judge.api.style=chat judge.api.base_url=https://api.openai.com/v1 judge.api.model=gpt-4o "
                   "judge.api.key_env=OPENAI_API_KEY", vllm_url=vllm_server)
    check_judged(nq_run, "gpt-4o", len(NQ_ROWS), figures=("accuracy.png",))  # nll.png needs valid verdicts
    summary = pd.read_csv(nq_run / "judge/gpt-4o/summary.csv")
    rows = [json.loads(x) for x in (nq_run / "judge/gpt-4o/verdicts.jsonl").read_text().splitlines()]
    invalid = sum(r["verdict"] == "invalid" for r in rows)
    assert bool(summary["judge_invalid_flagged"].iloc[0]) == (invalid > 0.05 * len(rows))
    manifest = json.loads((nq_run / "judge/gpt-4o/manifest.json").read_text())
    engine = manifest["engine"]
    assert (engine["style"], engine["prefill"], engine["verdict_logprobs"]) == ("chat", False, "top 20")
    assert engine["usage"]["requests"] == len(NQ_ROWS) + 1  # one per answer, and /v1/models
    assert manifest["judge"]["chat_template"] == "server" and manifest["judge"]["spec"] is None
    assert all(r["invalid_reason"] for r in rows if r["verdict"] == "invalid")
    assert files_holding(work / "runs", key) == []


@pytest.mark.slow
def test_generate_with_a_hosted_model_in_chat_style(nq_run, vllm_server, monkeypatch):
    """The hosted-generator command against the tests' vLLM server: messages, a key from the environment. The server
    applies the model's own chat template, so the answers are the hf engine's (nq-8b, the same model); the records
    keep the messages as the prompt and the server's log-probabilities; the key is in no file."""
    key = "sk-hosted-generator-never-written"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    work = nq_run.parents[1]
    pipeline(work, "python -m pipeline stage=generate dataset=nq_open run_id=nq-4o-mini generator.name=gpt-4o-mini "
                   "generator.engine=openai generator.api.style=chat generator.api.base_url=https://api.openai.com/v1 "
                   "generator.api.model=gpt-4o-mini generator.api.key_env=OPENAI_API_KEY", vllm_url=vllm_server)
    hf = {r["id"]: r for r in read_jsonl(nq_run / "generate/generations.jsonl")}
    chat = {r["id"]: r for r in read_jsonl(work / "runs/nq-4o-mini/generate/generations.jsonl")}
    assert chat.keys() == hf.keys() and len(chat) == len(NQ_ROWS)
    assert [k for k in hf if chat[k]["prediction"] != hf[k]["prediction"]] == []
    for k, r in chat.items():
        assert r["token_ids"] is None and r["tokens"] and len(r["token_logprobs"]) == r["num_generated_tokens"]
        sent = json.loads(r["prompt"])  # the messages, as sent
        assert sent[-1]["role"] == "user" and r["question"] in sent[-1]["content"]
        if hf[k]["finish_reason"] == "newline":  # the same tokens, newline included: the same NLL
            assert r["finish_reason"] == "newline" and abs(r["sequence_nll"] - hf[k]["sequence_nll"]) < 0.05, (r, hf[k])
    manifest = json.loads((work / "runs/nq-4o-mini/generate/manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["records"] == len(NQ_ROWS)
    assert manifest["generator"]["chat_template"] == "server" and manifest["engine"]["style"] == "chat"
    assert manifest["engine"]["usage"]["requests"] == len(NQ_ROWS) + 1  # one per question, and /v1/models
    assert files_holding(work / "runs", key) == []


def test_setup_for_gpu_nodes_from_a_machine_without_one():
    """TORCH=cuda chooses the CUDA build on this machine without a GPU; SETUP_PLAN=1 says what would be installed
    and installs nothing (no gigabytes of CUDA wheels in CI); a build that does not exist is one line, status 2."""
    assert "TORCH=cuda make setup" in readme_commands()
    out = sh(["make", "setup"], cwd=REPO, env=venv_env(TORCH="cuda", SETUP_PLAN="1"))
    assert "setup plan (TORCH=cuda): into .venv: torch==2.13.0 from PyPI (the CUDA build)" in out.stdout
    out = sh(["make", "setup"], cwd=REPO, env=venv_env(TORCH="auto", SETUP_PLAN="1"))
    assert "+cpu" in out.stdout and "(the CPU build)" in out.stdout  # auto: this machine has no GPU
    out = sh(["bash", "scripts/setup.sh"], cwd=REPO, env=venv_env(TORCH="gpu"), ok=(2,))
    assert out.stderr.strip().startswith("setup: TORCH=gpu is not a build: use TORCH=cuda")


def test_apptainer_build_is_checked_not_run():
    """`apptainer build` cannot run here (no apptainer to install): the definition it builds is checked as its
    parser reads it (tests/test_containers.py, called here too)."""
    from test_containers import test_the_definition_is_well_formed_and_installs_the_projects_torch as definition_ok

    assert "apptainer build pipeline.sif containers/pipeline.def" in readme_commands()
    assert (REPO / "containers/pipeline.def").is_file()
    definition_ok()


def test_fetch_the_chains_models(tmp_path):
    out = pipeline(tmp_path, "python -m pipeline stage=fetch generator=llama31-8b judge=llama70b-8bit")
    assert "generator gguf:" in out.stdout and "judge gguf:" in out.stdout and "fetched 2 models" in out.stdout


def test_submit_dry_run_with_the_sites_set_up_lines(tmp_path):
    command = ("python -m pipeline stage=submit judge=llama70b-8bit hardware=4xA100-40GB slurm.partition=gpu "
               "slurm.report.partition=cpu 'slurm.setup=[\"module load cuda/12.4\"]' slurm.dry_run=true")
    out = sh([*readme_command(command), f"runs_dir={tmp_path / 'runs'}"], cwd=tmp_path)
    gen, jud, rep = [x for x in out.stdout.splitlines() if x.startswith("sbatch")]
    assert "#   module load cuda/12.4" in out.stdout and all("PIPELINE_SETUP=" in x for x in (gen, jud, rep))
    assert "--partition=gpu" in gen and "--partition=gpu" in jud and "--partition=cpu" in rep
    command = ("python -m pipeline stage=submit judge=llama70b-8bit hardware=4xA100-40GB slurm.partition=gpu "
               "slurm.python=containers/apptainer-python slurm.dry_run=true")
    out = sh([*readme_command(command), f"runs_dir={tmp_path / 'runs'}"], cwd=REPO)
    jobs = [x for x in out.stdout.splitlines() if x.startswith("sbatch")]
    assert len(jobs) == 3 and all("PIPELINE_PYTHON=containers/apptainer-python," in x for x in jobs)


def test_bench_engines_without_vllm(tmp_path):
    """Without vLLM's environment the engines benchmark prints one line naming the missing python and the install
    command, and no figure."""
    absent = tmp_path / "no-vllm" / "bin" / "python"
    argv = readme_command("python -m pipeline.bench engines")
    out = sh([*argv, "--n", "4"], cwd=REPO, env=venv_env(PIPELINE_VLLM_PYTHON=str(absent)))
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"benchmark engines: skipped: engine=vllm: no vLLM environment at "
                                                   f"{absent}. `make vllm` installs one"), lines
