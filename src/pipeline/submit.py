"""stage=submit: one command submits the whole chain to SLURM.

    python -m pipeline stage=submit generator=llama31-8b dataset=nq_open judge=llama70b-8bit \\
        hardware=4xA100-40GB slurm.partition=gpu slurm.account=myproj slurm.generate_shards=8
    python -m pipeline stage=submit ... slurm.dry_run=true      # print the sbatch commands, submit nothing
    slurm/submit.sh --dry-run ...                               # the same from a shell

    generate array (slurm/generate.sbatch, one data-set shard per task, slurm.generate_gpus GPUs each)
      -> judge array (slurm/judge.sbatch, afterok; GPUs per task from the judge's placement plan)
      -> report (slurm/report.sbatch, afterok; merges the shards and writes the CSVs)

Every job runs this checkout's `python -m pipeline` with the overrides given here and a fixed run_id, from the
directory submit ran in, logging to runs/<run_id>/slurm/. Dependents are submitted with --kill-on-invalid-dep,
so a failed task cancels what waits on it instead of leaving it pending forever. If SLURM refuses any job, its
message is shown and the jobs of the chain already submitted are cancelled.

`hardware=<profile>` (and any `hardware.*` override) sizes the submission and stays here: submit plans the judge on
that node to choose the GPUs per judge task, and each task then places the judge on the GPUs SLURM allocated to it
(stage=judge detects them and refuses a declared profile). submit.json records what the chain was sized on.

When slurm.judge_gpus asks for more GPUs per task than one copy of the judge needs (a site that allocates whole
nodes), each judge task runs as many copies as fit, on disjoint groups of its GPUs: the judge command gets
judge.placement.replicas=<that many> (a number, not auto, so that every task of the array writes shards of one
count; replicas.py), and the sizing line says "N replicas per task".
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from .config import conf_dir
from .errors import PipelineError
from .files import write_atomic, write_json
from .hardware import ALLOW_CPU_TORCH, for_profile
from .overrides import command_line_overrides, override_key, override_root
from .runs import create_run, move_aside, new_run_id

log = logging.getLogger(__name__)

# Overrides that belong to this submit process, not to the jobs it submits, by the first part of their key
# (`slurm.partition=gpu` -> slurm). `hardware` is the node profile the chain is sized on; the tasks detect the GPUs
# SLURM gives them instead, and stage=judge refuses a declared profile.
NOT_FORWARDED = frozenset({"stage", "slurm", "shard", "overwrite", "run_id", "runs_dir", "hydra", "progress",
                           "hardware"})


def slurm_dir() -> Path:
    return conf_dir().parent / "slurm"


def forwarded_overrides(overrides: list[str] | None = None) -> list[str]:
    """The command-line overrides of this submit, minus those that are submit's own (NOT_FORWARDED)."""
    overrides = command_line_overrides() if overrides is None else overrides
    return [o for o in overrides if override_root(o) not in NOT_FORWARDED]


def held_back_overrides(overrides: list[str] | None = None) -> list[str]:
    """The command-line overrides that stay with this submit process."""
    overrides = command_line_overrides() if overrides is None else overrides
    return [o for o in overrides if override_root(o) in NOT_FORWARDED]


def gpus_per_copy(cfg, hardware) -> int | None:
    """The fewest GPUs of the hardware profile's kind that hold one copy of the judge, or None when no count of
    them does."""
    from .models import choose_precision
    from .placement import Workload, fewest_gpus, load_model_config

    j = cfg.judge
    return fewest_gpus(load_model_config(j.model, j), j.name, choose_precision(j, on_gpu=True), hardware.gpu_kind,
                       j.placement, Workload(j.batch_size, j.placement.max_seq_len))


def judge_gpus(cfg) -> int:
    """GPUs per judge task: slurm.judge_gpus, else none for a served judge (engine=openai: the task only sends
    requests), else the fewest GPUs of the hardware profile's kind that fit (engine=vllm: and divide the model's
    attention heads, as its tensor parallelism needs)."""
    if cfg.slurm.judge_gpus is not None:
        return cfg.slurm.judge_gpus
    j = cfg.judge
    if j.placement.devices == "cpu" or j.engine == "openai":
        return 0
    hardware = for_profile(cfg.hardware)
    if not hardware.gpus:
        raise PipelineError(
            "cannot tell how many GPUs each judge task needs: hardware=auto found no GPU on this machine (a login "
            "node?). Pass hardware=<one node of the partition> (profiles in conf/hardware/, e.g. hardware=4xA100-40GB) "
            "or slurm.judge_gpus=N."
        )
    n = gpus_per_copy(cfg, hardware)
    if n is not None and n <= len(hardware.gpus) and j.engine == "vllm":
        heads = tensor_parallel_heads(cfg)
        tp = next((t for t in range(n, len(hardware.gpus) + 1) if heads % t == 0), None)
        if tp is None:
            raise PipelineError(
                f"judge.engine=vllm: a copy of judge {j.name!r} needs {n} GPUs of {hardware.describe()}, but vLLM's "
                f"tensor parallelism needs a count that divides its {heads} attention heads, and none from {n} to "
                f"{len(hardware.gpus)} does. Use judge.engine=hf (it places layers over any count) or a node with "
                "more GPUs.")
        n = tp
    if n is None or n > len(hardware.gpus):
        raise PipelineError(f"judge {j.name!r} does not fit on one node of {hardware.describe()}; see "
                            f"`python -m pipeline stage=plan judge={j.name} hardware={cfg.hardware.name}`.")
    return n


def tensor_parallel_heads(cfg) -> int:
    """The judge's attention heads, which vLLM's tensor parallelism must divide evenly."""
    from .placement import load_model_config

    j = cfg.judge
    return int(load_model_config(j.model, j).get_text_config().num_attention_heads)


def generate_gpus(cfg) -> int:
    """GPUs per generate task: none for a served generator (engine=openai), else slurm.generate_gpus."""
    return 0 if cfg.generator.engine == "openai" else cfg.slurm.generate_gpus


def replicas_per_task(cfg, gpus: int) -> tuple[int, str | None]:
    """(copies of the judge each judge task runs, why): judge.placement.replicas when given as a number; else, when
    slurm.judge_gpus is more than one copy needs on the hardware profile, as many copies as fit; else 1."""
    from .replicas import AUTO, parse_requested

    if cfg.judge.engine != "hf":  # vLLM runs its own copies (data parallelism); a served judge has none
        return 1, None
    given = parse_requested(cfg.judge.placement.replicas)
    on_gpus = gpus > 0 and cfg.judge.placement.devices != "cpu"
    usable = min(gpus, cfg.judge.placement.gpus or gpus)  # judge.placement.gpus: only the first ones
    if given not in (None, AUTO):
        hardware = for_profile(cfg.hardware) if on_gpus else None
        per = gpus_per_copy(cfg, hardware) if hardware is not None and hardware.gpus else None
        if per and given * per > usable:
            raise PipelineError(
                f"judge.placement.replicas={given}: {given} copies of judge {cfg.judge.name} need {given * per} GPUs "
                f"({per} each on {hardware.gpu_kind[0]}), but each judge task gets {usable}. Ask for "
                f"slurm.judge_gpus={given * per}, or fewer replicas.")
        return given, "judge.placement.replicas"
    if cfg.slurm.judge_gpus is None or gpus < 2 or not on_gpus:
        return 1, None
    hardware = for_profile(cfg.hardware)
    if not hardware.gpus:  # hardware=auto on a login node: nothing to tell one copy's size from
        return 1, None
    per = gpus_per_copy(cfg, hardware)
    if per is None or per * 2 > usable:
        return 1, None
    kind = hardware.gpu_kind[0]
    return usable // per, (f"judge {cfg.judge.name} needs {per} GPU(s) of {kind} a copy, "
                           f"{usable} per task from slurm.judge_gpus")


def sizing(cfg, gpus: int, replicas: int = 1) -> dict:
    """What the judge tasks' GPU request was worked out from, for submit.json: the hardware profile is used here
    only and never reaches the jobs."""
    if cfg.slurm.judge_gpus is not None:
        source = "slurm.judge_gpus"
    elif cfg.judge.placement.devices == "cpu":
        source = "judge.placement.devices=cpu"
    elif cfg.judge.engine == "openai":
        source = "judge.engine=openai (the tasks only send requests to judge.api.base_url)"
    else:
        source = f"placement plan of judge {cfg.judge.name} on hardware={cfg.hardware.name}"
    return {
        "judge_gpus_per_task": gpus,
        "judge_gpus_from": source,
        "judge_replicas_per_task": replicas,
        "hardware": cfg.hardware.name,
        "hardware_profile": OmegaConf.to_container(cfg.hardware, resolve=True),
        "hardware_overrides": [o for o in held_back_overrides() if override_root(o) == "hardware"],
        "forwarded_to_jobs": False,
    }


def job_setting(s, kind: str, key: str):
    """slurm.<kind>.<key> (generate, judge or report) when set, else the shared slurm.<key>."""
    own = getattr(getattr(s, kind), key)
    return own if own is not None else getattr(s, key)


def common_args(s, kind: str, job: str, time_limit: str, cpus: int, mem: str, gpus: int, output: Path,
                setup: Path | None) -> list[str]:
    exports = f"ALL,PIPELINE_PYTHON={s.python or sys.executable},HF_HUB_OFFLINE=1" \
        + (f",PIPELINE_SETUP={setup}" if setup else "") + (f",{ALLOW_CPU_TORCH}=1" if s.allow_cpu_torch else "")
    args = [f"--job-name={job}", f"--time={time_limit}", f"--cpus-per-task={cpus}", f"--mem={mem}",
            f"--output={output}", f"--chdir={os.getcwd()}", f"--export={exports}"]
    if gpus:
        args.append(f"--gres=gpu:{s.gpu_type + ':' if s.gpu_type else ''}{gpus}")
    for flag in ("partition", "account", "qos", "constraint"):
        if value := job_setting(s, kind, flag):
            args.append(f"--{flag}={value}")
    return args + [str(a) for a in job_setting(s, kind, "extra_args")]


def jobs_torch(cfg) -> tuple[str, str] | None:
    """(torch version, CUDA or ROCm version or "") of the Python the jobs will run, or None when it cannot be told
    from here (a bare name that slurm.setup's lines may change, or a Python that does not start)."""
    python = cfg.slurm.python or sys.executable
    if not os.path.isabs(python) and cfg.slurm.setup:
        return None
    exe = python if os.path.isabs(python) else shutil.which(python)
    if not exe:
        return None
    code = "import torch; print(torch.__version__); print(torch.version.cuda or getattr(torch.version, 'hip', None) or '')"
    try:
        out = subprocess.run([exe, "-c", code], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.splitlines()
    return (lines[0], lines[1] if len(lines) > 1 else "") if out.returncode == 0 and lines else None


def check_jobs_torch(cfg, judge_gpus_per_task: int) -> str | None:
    """Refuse to queue GPU jobs whose Python has a CPU build of torch (`make setup` on a login node installs that
    one): they would all run on the CPU. A note (returned) when it cannot be checked from here."""
    s = cfg.slurm
    asked = [f"generate {s.generate_gpus}" if s.generate_gpus and cfg.generator.engine == "hf" else "",
             f"judge {judge_gpus_per_task} per task" if judge_gpus_per_task and cfg.judge.engine == "hf" else ""]
    asked = [a for a in asked if a]
    if not asked or s.allow_cpu_torch or os.environ.get(ALLOW_CPU_TORCH):
        return None
    found = jobs_torch(cfg)
    python = s.python or sys.executable
    if found is None:
        return f"could not check the torch of the jobs' Python ({python}) from here; each GPU job checks it itself"
    version, accelerator = found
    if not accelerator:
        raise PipelineError(
            f"the jobs would run {python}, whose torch {version} is a CPU build, but they ask for GPUs "
            f"({', '.join(asked)}): install the CUDA build for the GPU nodes (`TORCH=cuda make setup`, from this "
            "machine too) or set slurm.python to a Python that has it; slurm.allow_cpu_torch=true submits anyway. "
            "Nothing was submitted.")
    return None


def models_missing(cfg) -> list[str]:
    """The chain's models that are not on this machine (fetch.missing; nothing is downloaded)."""
    from .fetch import missing
    from .models import cache_root

    return missing(cfg, cache_root(cfg.cache_dir))


def fetch_overrides() -> list[str]:
    """This submit's overrides that choose the models, for the stage=fetch command it suggests."""
    return [o for o in forwarded_overrides() if override_root(o) in ("generator", "judge", "cache_dir")]


def setup_script(cfg, run_id: str) -> str:
    """runs/<run_id>/slurm/setup.sh: slurm.setup's lines, which every job sources before Python starts."""
    lines = [str(x) for x in cfg.slurm.setup]
    return ("# slurm.setup of run " + run_id + ": sourced by every job of the chain before Python starts (a failing "
            "line fails the job)\nset -e\n" + "\n".join(lines) + "\nset +e\n")


def array(n: int, max_parallel: int | None) -> str:
    return f"--array=0-{n - 1}" + (f"%{max_parallel}" if max_parallel else "")


def chain(cfg, run_id: str, run_dir: Path, gpus: int | None = None,
          replicas: int | None = None) -> list[tuple[str, list[str]]]:
    """The three sbatch commands; '{generate}' and '{judge}' stand for the job ids they depend on. `gpus`: GPUs per
    judge task (default: judge_gpus(cfg)); `replicas`: copies of the judge per task (default: replicas_per_task)."""
    s = cfg.slurm
    if s.generate_shards < 1 or s.judge_shards < 1:
        raise PipelineError("slurm.generate_shards and slurm.judge_shards must be at least 1.")
    if gpus is None:
        gpus = judge_gpus(cfg)
    if replicas is None:
        replicas = replicas_per_task(cfg, gpus)[0]
    logs = run_dir.resolve() / "slurm"
    setup = logs / "setup.sh" if cfg.slurm.setup else None
    tail = [*forwarded_overrides(), f"run_id={run_id}", f"runs_dir={Path(cfg.runs_dir).resolve()}"]
    # more than one copy per task: the count itself (auto in an array task is one copy; see replicas.py)
    judge_tail = [o for o in tail if override_key(o) != "judge.placement.replicas"] + \
        [f"judge.placement.replicas={replicas}"] if replicas > 1 else tail
    signal = [f"--signal=B:USR1@{s.signal_seconds}", "--requeue"]
    scripts = slurm_dir()
    gen = ["sbatch", "--parsable", array(s.generate_shards, s.max_parallel), *signal,
           *common_args(s, "generate", f"gen-{run_id}", s.generate_time, s.cpus_per_task, s.mem, generate_gpus(cfg),
                        logs / "generate-%A_%a.out", setup),
           str(scripts / "generate.sbatch"), *tail]
    jud = ["sbatch", "--parsable", array(s.judge_shards, s.max_parallel), *signal,
           "--dependency=afterok:{generate}", "--kill-on-invalid-dep=yes",
           *common_args(s, "judge", f"judge-{run_id}", s.judge_time, s.cpus_per_task, s.mem, gpus,
                        logs / "judge-%A_%a.out", setup),
           str(scripts / "judge.sbatch"), *judge_tail]
    rep = ["sbatch", "--parsable", "--dependency=afterok:{judge}", "--kill-on-invalid-dep=yes",
           *common_args(s, "report", f"report-{run_id}", s.report_time, s.report_cpus, s.report_mem, 0,
                        logs / "report-%j.out", setup),
           str(scripts / "report.sbatch"), *tail]
    return [("generate", gen), ("judge", jud), ("report", rep)]


def cancel(job_ids: list[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, text=True, timeout=60)


def run(cfg) -> dict[str, str]:
    run_id = cfg.run_id or new_run_id(cfg.generator.name, cfg.dataset.name)
    run_dir = Path(cfg.runs_dir) / run_id
    gpus = judge_gpus(cfg)
    replicas, why = replicas_per_task(cfg, gpus)
    commands = chain(cfg, run_id, run_dir, gpus, replicas)
    sized = sizing(cfg, gpus, replicas)
    if not cfg.slurm.dry_run and (note := check_jobs_torch(cfg, gpus)):
        log.info("%s", note)
    absent = models_missing(cfg)
    if absent and not cfg.slurm.dry_run:
        raise PipelineError(f"{', '.join(absent)}: not in the cache, and the jobs run offline (HF_HUB_OFFLINE=1): run "
                            f"`python -m pipeline stage=fetch {shlex.join(fetch_overrides())}` here first (it "
                            "downloads each model once), then submit again. Nothing was submitted.")
    if cfg.slurm.dry_run:
        if absent:
            print(f"# not in the cache yet (the jobs run offline): {', '.join(absent)}: "
                  f"python -m pipeline stage=fetch {shlex.join(fetch_overrides())}")
        print(f"# dry run: the chain for run {run_id} (nothing submitted)")
        print(f"# {gpus} GPU(s) per judge task, from the {sized['judge_gpus_from']}; hardware={cfg.hardware.name} "
              "sizes the chain only and is not passed to the jobs")
        if replicas > 1:
            print(f"# {replicas} replicas per task ({why}): each judge task runs {replicas} copies of the judge on "
                  "disjoint groups of its GPUs (judge.placement.replicas)")
        if cfg.slurm.setup:
            print(f"# every job first sources {run_dir.resolve() / 'slurm' / 'setup.sh'} (slurm.setup):")
            print("\n".join(f"#   {line}" for line in cfg.slurm.setup))
        for name, cmd in commands:
            print(f"# {name}\n{shlex.join(cmd)}")
        return {}
    if shutil.which("sbatch") is None:
        raise PipelineError("sbatch is not on PATH: run stage=submit on a SLURM login node (or use "
                            "slurm.dry_run=true to see the commands).")

    run_dir = create_run(Path(cfg.runs_dir), run_id)
    if cfg.overwrite:  # done here, once, so that no array task has to touch what the others share
        judge_dir = run_dir / "judge" / cfg.judge.name
        move_aside(run_dir, [p for p in (run_dir / "generate", judge_dir, run_dir / "metrics.csv") if p.exists()])
    (run_dir / "slurm").mkdir(exist_ok=True)
    if cfg.slurm.setup:
        write_atomic(run_dir / "slurm" / "setup.sh", setup_script(cfg, run_id))
    jobs: dict[str, str] = {}
    for name, cmd in commands:
        cmd = [part.format(**jobs) if "{" in part and part.startswith("--dependency") else part for part in cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            cancel(list(jobs.values()))
            already = f" The {', '.join(jobs)} job(s) already submitted ({', '.join(jobs.values())}) were cancelled." \
                if jobs else ""
            raise PipelineError(f"SLURM refused the {name} job: {out.stderr.strip() or out.stdout.strip()} "
                                f"(command: {shlex.join(cmd)}).{already} Fix the request (slurm.* settings) and "
                                "submit again.")
        jobs[name] = out.stdout.strip().split(";")[0]
    write_json(run_dir / "slurm" / "submit.json", {"run_id": run_id, "jobs": jobs, "submitted": time.time(),
                                                   "commands": {n: c for n, c in commands}, "sizing": sized,
                                                   "not_forwarded": held_back_overrides()})
    judge = cfg.judge.name
    print(f"submitted run {run_id}:\n"
          f"  generate  array job {jobs['generate']} ({cfg.slurm.generate_shards} tasks)\n"
          f"  judge     array job {jobs['judge']} ({cfg.slurm.judge_shards} tasks"
          f"{f', {replicas} replicas per task' if replicas > 1 else ''}, after generate succeeds)\n"
          f"  report    job {jobs['report']} (after judge succeeds)\n"
          f"watch:   squeue -j {','.join(jobs.values())}    logs: {run_dir}/slurm/\n"
          f"results: {run_dir}/judge/{judge}/samples.csv and summary.csv once job {jobs['report']} completes\n"
          f"a failed task cancels the jobs after it; resubmit the same command to resume (finished shards are kept)")
    return jobs
