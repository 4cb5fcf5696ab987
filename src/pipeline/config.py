"""Typed schema behind the Hydra config.

The YAML files under `conf/` only set values; the dataclasses here say which keys exist and what type each has,
so a misspelt key (`generator.batchsize=8`) or a wrong type fails when the config is composed, before any model
is loaded. Config groups mirror code: `generator` -> generate.py, `judge` + `judge_prompt` -> judge.py,
`dataset` -> data.py, `judge.placement` -> placement/.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from .choice import Choice
from .engines.settings import ApiConfig, EngineName, VllmConfig
from .errors import PipelineError


def conf_dir() -> Path:
    """conf/ of the checkout this package runs from, or $PIPELINE_CONF_DIR."""
    path = Path(os.environ.get("PIPELINE_CONF_DIR") or Path(__file__).resolve().parents[2] / "conf")
    if not (path / "config.yaml").is_file():
        sys.exit(f"error: no Hydra config at {path}/config.yaml. Run from a checkout of the repository "
                 "(pip install -e .), or set PIPELINE_CONF_DIR to its conf/ folder.")
    return path


Stage = Choice("Stage", [(s, s) for s in ("generate", "import", "judge", "label", "jury", "report", "merge", "plan",
                                          "doctor", "submit", "fetch")])
PrecisionName = Choice("PrecisionName", [(p, p) for p in ("auto", "fp32", "bf16", "fp16", "int8", "nf4", "fp4")])
ComputeDtype = Choice("ComputeDtype", [(p, p) for p in ("auto", "fp32", "bf16", "fp16")])
JudgeMode = Choice("JudgeMode", [(m, m) for m in ("logprob", "generate")])
JuryMethod = Choice("JuryMethod", [(m, m) for m in ("mean", "majority")])
Strategy = Choice("Strategy", [(s, s) for s in ("balanced", "sequential", "balanced_low_0")])
Devices = Choice("Devices", [(d, d) for d in ("auto", "gpu", "cpu")])


@dataclass
class ModelConfig:
    """What both the generator and the judge need to load a causal language model."""

    # Preset name; used in paths (runs/<id>/judge/<name>/) and in the result CSVs.
    name: str = MISSING
    # A Hugging Face id ("meta-llama/Llama-3.1-8B-Instruct"), a local model folder, or a GGUF file converted once
    # into a cached safetensors folder: "gguf:<python package>/<file>.gguf" (file shipped inside an installed
    # package) or "gguf:/path/to/file.gguf".
    model: str = MISSING
    revision: Optional[str] = None
    # auto: bf16 on a GPU (fp16 where bf16 is unsupported), fp32 on CPU. int8/nf4/fp4 use bitsandbytes.
    precision: PrecisionName = PrecisionName.auto
    # Compute dtype of the int8/nf4/fp4 layers; auto: bf16 on GPU, fp32 on CPU.
    compute_dtype: ComputeDtype = ComputeDtype.auto
    # nf4/fp4 only: quantise the quantisation constants too (saves ~0.4 bit per parameter).
    double_quant: bool = True
    # A model folder that ships its own Python code (auto_map in config.json) is refused unless this is true: the
    # code then runs to plan and load it. Read its .py files first.
    trust_remote_code: bool = False
    # null: use the tokenizer's chat template when it has one.
    use_chat_template: Optional[bool] = None
    batch_size: int = 32
    # What runs the model: hf (loaded here through transformers, placed by the plan), vllm (a vLLM server this stage
    # starts in its own environment and stops), openai (any OpenAI-compatible server, at api.base_url). The prompts,
    # records, resume and reports are the same for every engine (engines/).
    engine: EngineName = EngineName.hf
    api: ApiConfig = field(default_factory=ApiConfig)
    vllm: VllmConfig = field(default_factory=VllmConfig)


@dataclass
class GeneratorConfig(ModelConfig):
    # Tokens each answer may have (the judge's reply length is judge_prompt.reply_tokens).
    max_new_tokens: int = 32
    # auto: cuda:0 when a GPU is visible, else cpu. Or "cpu", "cuda", "cuda:1", ...
    device: str = "auto"
    # System message for chat models (null: the template's own default).
    system_prompt: Optional[str] = None
    # User message; {question} is replaced by the question.
    prompt_template: str = "{question}"
    # Stop a row at the end of its first non-empty line (and always at EOS).
    stop_at_newline: bool = True


@dataclass
class PlacementConfig:
    """How the judge is spread over the devices of one node (see placement/)."""

    # auto: every visible GPU, or the CPU when there is none; gpu: refuse to run without GPUs; cpu: CPU only.
    devices: Devices = Devices.auto
    # Use only the first N GPUs; null: all of them.
    gpus: Optional[int] = None
    # balanced | sequential | balanced_low_0 (keeps GPU 0 light), as in transformers' device_map planning.
    strategy: Strategy = Strategy.balanced
    # Explicit per-device memory, e.g. {0: 30GiB, 1: 40GiB, cpu: 64GiB}: replaces each device's capacity (what
    # the plan may use there, reserves included). 40GiB is 40 x 2^30 bytes, 40GB is 40 x 10^9. Empty: detected.
    max_memory: Any = None
    # Count what the stock plan leaves out (KV cache, activations, logits, quantisation state, CUDA context).
    # false: weights only, exactly as transformers' own device_map planning (for comparison).
    reserves: bool = True
    # Tokens per row (prompt + reply) the KV cache and activations are sized for.
    max_seq_len: int = 512
    # Per GPU: the CUDA context, cuBLAS workspaces and the allocator's slack.
    cuda_context: str = "512MiB"
    # Fraction of each device's capacity kept free on top of everything counted.
    margin: float = 0.05
    # Let layers that do not fit on the GPUs go to CPU RAM or disk (slow; bf16/fp16/fp32 and int8 only).
    allow_offload: bool = False
    # Copies of the judge that share one stage=judge (replicas.py): the visible GPUs are split into groups that
    # each hold a whole plan, one process per group judges its share of the answers, and the shares are merged as
    # array shards are. auto: on GPUs, as many groups as whole plans fit (1 in a sharded run: an array's tasks
    # must agree on the count, so give it as a number there; stage=submit does); on the CPU, 1. N >= 1: exactly
    # N (on the CPU, N processes sharing the threads).
    replicas: Any = "auto"


@dataclass
class GpuSpec:
    name: str = MISSING
    # Total memory per GPU, as torch reports it (e.g. "79.6GiB").
    memory: str = MISSING
    count: int = 1


@dataclass
class HardwareConfig:
    """A node to plan for: this machine (auto) or a declared profile (conf/hardware/)."""

    name: str = "auto"
    # true: detect this machine's GPUs (CUDA_VISIBLE_DEVICES and SLURM's allocation apply) and free RAM.
    detect: bool = True
    gpus: List[GpuSpec] = field(default_factory=list)
    cpu_memory: Optional[str] = None


@dataclass
class ShardConfig:
    """Which slice of the data set this process handles (generate and judge)."""

    # null: from the SLURM array (SLURM_ARRAY_TASK_ID minus SLURM_ARRAY_TASK_MIN), else 0.
    index: Optional[int] = None
    # null: SLURM_ARRAY_TASK_COUNT inside an array job, else 1 (unsharded).
    count: Optional[int] = None


@dataclass
class SlurmJob:
    """One job's own sbatch settings (slurm.generate, slurm.judge, slurm.report); null: the shared slurm.* value."""

    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    # Replaces slurm.extra_args for this job when given (an empty list: none).
    extra_args: Optional[List[str]] = None


@dataclass
class SlurmConfig:
    """What `stage=submit` asks SLURM for: generate array -> judge array -> report, chained with afterok."""

    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    # sbatch --constraint for every job (node features, e.g. "a100"); null: none.
    constraint: Optional[str] = None
    # Shell lines every job runs before Python starts ("module load cuda/12.4", "source ~/miniconda3/bin/activate
    # judge"): written to runs/<run_id>/slurm/setup.sh, sourced by the job scripts, shown by the dry run. A failing
    # line fails the job.
    setup: List[str] = field(default_factory=list)
    # Per-job settings over the shared ones above, e.g. slurm.report.partition=cpu (the report needs no GPU).
    generate: SlurmJob = field(default_factory=SlurmJob)
    judge: SlurmJob = field(default_factory=SlurmJob)
    report: SlurmJob = field(default_factory=SlurmJob)
    # Array sizes: data-set shards for the generate and judge stages.
    generate_shards: int = 4
    judge_shards: int = 4
    # At most this many array tasks at once (sbatch --array=...%N); null: no limit.
    max_parallel: Optional[int] = None
    generate_time: str = "02:00:00"
    judge_time: str = "04:00:00"
    report_time: str = "00:30:00"
    # GPUs per generate task (0 for a CPU-only partition).
    generate_gpus: int = 1
    # GPUs per judge task; null: the fewest GPUs of the `hardware` profile's kind that fit the judge's plan.
    judge_gpus: Optional[int] = None
    # GRES type (gpu:<type>:N), for partitions with several GPU kinds; null: any.
    gpu_type: Optional[str] = None
    cpus_per_task: int = 8
    # Memory per node for generate / judge tasks, and for the report job.
    mem: str = "64G"
    report_cpus: int = 2
    report_mem: str = "8G"
    # Seconds before the time limit at which SLURM sends SIGUSR1; the task then stops cleanly and requeues itself.
    signal_seconds: int = 120
    # Further sbatch options for every job, e.g. ["--constraint=a100", "--mail-type=FAIL"].
    extra_args: List[str] = field(default_factory=list)
    # The interpreter the jobs run; null: this one (sys.executable).
    python: Optional[str] = None
    # Print the sbatch commands instead of submitting them.
    dry_run: bool = False
    # Submit GPU jobs even when the jobs' torch is a CPU build (a test cluster with fake GPUs); otherwise refused.
    allow_cpu_torch: bool = False


@dataclass
class FetchConfig:
    # stage=fetch: these models (Hub ids, GGUF specs, folders) instead of the generator's and the judge's.
    models: List[str] = field(default_factory=list)


@dataclass
class DoctorConfig:
    # Also load the generator and answer one question.
    smoke: bool = False


@dataclass
class JudgeConfig(ModelConfig):
    # The Hugging Face id of the same model, when `model` is a GGUF or local copy of it: planning (stage=plan,
    # judge, doctor, submit) then uses the config shipped for that id instead of converting or reading the weights.
    hub_id: Optional[str] = None
    # logprob: one forward pass per answer; P(correct) from the next-token probabilities of the verdict words.
    # generate: the judge writes a reply (greedy) whose last verdict marker is parsed.
    mode: JudgeMode = JudgeMode.logprob
    # logprob mode: the verdict is correct when P(correct) >= threshold.
    threshold: float = 0.5
    # logprob mode: a verdict whose words get less than this share of the next-token probability is invalid.
    min_verdict_mass: float = 0.001
    placement: PlacementConfig = field(default_factory=PlacementConfig)


@dataclass
class JudgePromptConfig:
    """The judge's instructions; versioned, and recorded with every verdict."""

    name: str = MISSING
    version: int = MISSING
    system: Optional[str] = None
    # User message with {question}, {references} and {candidate} (the fenced, length-capped answer).
    template: str = MISSING
    # Words that count as each verdict; matching is case-insensitive and on whole words.
    correct_words: List[str] = field(default_factory=lambda: ["correct"])
    incorrect_words: List[str] = field(default_factory=lambda: ["incorrect"])
    # Marker before the verdict word in longer replies ("Verdict: correct"); the last one counts.
    marker: str = "verdict:"
    # Text the judge's reply starts with, put in its mouth (e.g. "Verdict:"): the judge then only writes the
    # verdict word. Stored replies include it. null: the judge writes the whole reply.
    reply_prefix: Optional[str] = None
    # Longer candidate answers are cut to this many characters inside the prompt (the record keeps them whole).
    max_candidate_chars: int = 600
    # Likewise for the question, and for each reference answer: nothing inserted into the prompt is unbounded.
    max_question_chars: int = 1000
    max_reference_chars: int = 300
    stop_at_newline: bool = False
    # judge.mode=generate: the most tokens the judge may write in its reply (at least 1). Required: the reply's
    # length belongs to the prompt that asks for it (logprob mode reads only the next token).
    reply_tokens: int = MISSING
    # Worked examples shown before the real case, as earlier turns of the conversation: each a mapping with
    # question, references (a list), candidate and reply (what the judge should answer).
    examples: List[Any] = field(default_factory=list)
    # The judge.mode values the prompt is written for. A prompt that has the judge reason before its verdict is
    # [generate]: logprob mode reads only the reply's first token, which would be the start of the reasoning, so
    # stage=judge refuses the pair before loading anything. Not part of the stage's fingerprint (it decides no record).
    modes: List[str] = field(default_factory=lambda: ["logprob", "generate"])


@dataclass
class DatasetFields:
    """Where each field lives in the data set's rows (dotted paths reach into nested fields)."""

    # null: ids are made from the row index, "<dataset.name>-000042".
    id: Optional[str] = None
    question: str = "question"
    # One or more fields; each may hold a string or a list of strings; all are collected as references.
    answers: List[str] = field(default_factory=lambda: ["answers"])
    # Split each reference string at this separator ("|" for "William Shakespeare|Shakespeare"); pieces are
    # stripped and empty ones dropped. null: a string is one reference.
    answers_sep: Optional[str] = None
    # Your own columns, carried with each answer into the records and samples.csv (by their names here, dotted
    # paths as written) for breakdowns with report.by: [topic,difficulty]. Each must hold one value per row (text,
    # a number, true/false, or empty).
    keep: List[str] = field(default_factory=list)


@dataclass
class ImportFields:
    """Columns of a predictions file for stage=import (dotted paths reach into nested fields)."""

    # null: ids are made from the row number.
    id: Optional[str] = "id"
    question: str = "question"
    answers: List[str] = field(default_factory=lambda: ["references"])
    # As dataset.fields.answers_sep: split each reference string at this separator; null: a string is one reference.
    answers_sep: Optional[str] = None
    prediction: str = "prediction"
    # A human correctness label (true/false, 1/0, yes/no, correct/incorrect, right/wrong); auto: the file's
    # `human_label` or `label` column if it has one; null: none.
    label: Optional[str] = "auto"
    # Another judge's verdicts on these answers (an API judge, an old run, a spreadsheet): the column holding them
    # (the same accepted forms as the label; an empty cell is an invalid verdict), and optionally its P(correct)
    # column. They become the judge run runs/<run_id>/judge/<verdict_judge>/, reported like any other. null: none.
    verdict: Optional[str] = None
    p_correct: Optional[str] = None
    verdict_judge: str = "external"
    # As dataset.fields.keep: columns of the file carried with each answer ([topic,latency_ms]).
    keep: List[str] = field(default_factory=list)


@dataclass
class ReportConfig:
    # Several runs for a leaderboard (one row per run x judge): [run_a, run_b], or [all]; null: run_id only.
    runs: Optional[List[str]] = None
    # Where the leaderboard goes; null: <runs_dir>/leaderboard.csv.
    leaderboard: Optional[str] = None
    # Bootstrap resamples for the 95% intervals of agreement and kappa, and their seed (accuracies, shares of yes
    # among n answers, get the Wilson score interval, which needs no resampling).
    bootstrap: int = 1000
    seed: int = 0
    # A prediction is correct by token F1 when F1 >= f1_threshold, by ROUGE-L when ROUGE-L > rouge_threshold.
    f1_threshold: float = 0.5
    rouge_threshold: float = 0.5
    # Write PNG figures next to the CSVs.
    plots: bool = True
    # With human labels: how many labels an interval of this half-width needs (from the measured variances).
    target_halfwidth: float = 0.02
    # The length breakdown splits answers at this many words (<= words, > words).
    length_words: int = 5
    # Equal-width bins of P(correct) for the expected calibration error.
    calibration_bins: int = 10
    # Every statistic against the human labels (PPI++, labels needed, kappa and agreement with humans, also by
    # answer length, calibrated thresholds, calibration error) needs at least this many labels among the answers it
    # rests on, of both classes; with fewer it reads "too few labels (n)". Why 30: PPI++ and the human-only estimate
    # use normal intervals, and a kappa or threshold from a handful of labels is noise (2 labels gave
    # [-0.19, 1.19], 3 gave a kappa of 1.000); about 30 is where a normal interval of a share starts to hold.
    min_labels: int = 30
    # Break every result down by these columns of samples.csv (columns kept with dataset.fields.keep or
    # import_fields.keep, or finish_reason): accuracy, agreement and kappa per value, and the stratified PPI++
    # estimate when there are human labels. [topic] or [topic,difficulty]; empty: none.
    by: List[str] = field(default_factory=list)
    # A judge whose share of invalid verdicts is above this is flagged (digest, report.html, summary.csv, the
    # leaderboard, where it ranks below the others): its accuracy rests on the few valid verdicts, so the report
    # also gives it with every invalid verdict counted wrong and counted right.
    max_invalid_share: float = 0.05


@dataclass
class LabelConfig:
    """stage=label: a sheet of randomly drawn answers for people to label, and reading the filled sheet back."""

    # How many answers to draw (uniformly at random, without replacement), and the seed of the draw. The draw is a
    # prefix of one fixed random order per seed, so a larger n with the same seed extends a sheet already labelled.
    n: int = 200
    seed: int = 0
    # A filled sheet to read back (its id and human_label columns); null: write a new sheet.
    sheet: Optional[str] = None


@dataclass
class JuryConfig:
    """stage=jury: judges already run on a run, combined into a judge of their own."""

    judges: List[str] = field(default_factory=list)
    # The new judge's name (its folder under runs/<run_id>/judge/); null: "jury-" + the members joined by "_".
    name: Optional[str] = None
    # mean: the mean P(correct) of the members (their votes' share where one has no P(correct)); majority: votes.
    method: JuryMethod = JuryMethod.mean
    # mean: the verdict is correct when the mean is at least this.
    threshold: float = 0.5


@dataclass
class DatasetConfig:
    name: str = MISSING
    # A local .json/.jsonl/.csv/.parquet file, "package:<file>" for data shipped with this package,
    # or a Hugging Face Hub data set name (with `config` and `split`).
    path: str = MISSING
    config: Optional[str] = None
    split: str = "train"
    revision: Optional[str] = None
    fields: DatasetFields = field(default_factory=DatasetFields)
    # Take only the first N rows (after loading, before sharding); null: all.
    limit: Optional[int] = None


@dataclass
class Config:
    stage: Stage = Stage.generate
    # generate: null makes a new timestamped id; judge/report: null means the newest run.
    run_id: Optional[str] = None
    runs_dir: str = "runs"
    # Converted models and other caches; null: $PIPELINE_CACHE_DIR or ~/.cache/pipeline.
    cache_dir: Optional[str] = None
    # Replace a finished stage's outputs (the old ones are moved aside under runs/<id>/replaced/, not deleted).
    overwrite: bool = False
    # CPU threads for torch; null: torch's default.
    threads: Optional[int] = None
    # Show a progress bar (tqdm); set false for log files.
    progress: bool = True
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    judge_prompt: JudgePromptConfig = field(default_factory=JudgePromptConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    doctor: DoctorConfig = field(default_factory=DoctorConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    label: LabelConfig = field(default_factory=LabelConfig)
    jury: JuryConfig = field(default_factory=JuryConfig)
    # stage=import: a JSONL/JSON/CSV/Parquet file of answers produced elsewhere, and its columns.
    predictions: Optional[str] = None
    import_fields: ImportFields = field(default_factory=ImportFields)
    # Free-form notes stored in the manifest (e.g. +meta.purpose=ablation).
    meta: Dict[str, Any] = field(default_factory=dict)


def register() -> None:
    """Put the schema in Hydra's ConfigStore; conf/config.yaml names it first in its defaults list."""
    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)


# ------------------------------------------------------------------------------------- checks before any work

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAME_LIMIT = 128  # run ids and judge names are folder names
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_name(key: str, value: str) -> str:
    """A run id or judge name is one folder name: letters, digits, '.', '_', '-', at most NAME_LIMIT characters."""
    value = str(value)
    if len(value) > NAME_LIMIT:
        raise PipelineError(f"{key}={value[:40]}... is not allowed: it is {len(value)} characters long, and as it "
                            f"names a folder, at most {NAME_LIMIT} characters are allowed. Choose a shorter one.")
    if ".." in value or not NAME_PATTERN.fullmatch(value):
        raise PipelineError(f"{key}={value!r} is not allowed: it names one folder, made of letters, digits, '.', '_' "
                            "and '-' (starting with a letter or digit), with no path separators and no '..'.")
    return value
