"""checks.check: every range and form check of a composed config that needs no file, model or device.

The schema (config.py) fixes each key's type and choices; this adds what a type cannot say (at least 1, within
[0, 1], a folder name, a device), and runs before a stage writes anything.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from .config import DEVICE_PATTERN, Config, check_name
from .errors import PipelineError
from .replicas import parse_requested
from .rows import SAMPLE_COLUMNS


def check(cfg: Config) -> None:
    """Every range and form check that needs no file, model or device: run before a stage writes anything, so a
    bad value never leaves a folder, a moved runs/latest or a stage.json behind. Choice-valued settings are already
    enforced by the schema's enums when Hydra composes the config."""
    problems: list[str] = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    for key, value in (("generator.batch_size", cfg.generator.batch_size),
                       ("generator.max_new_tokens", cfg.generator.max_new_tokens),
                       ("judge.batch_size", cfg.judge.batch_size),
                       ("judge_prompt.max_candidate_chars", cfg.judge_prompt.max_candidate_chars),
                       ("judge_prompt.max_question_chars", cfg.judge_prompt.max_question_chars),
                       ("judge_prompt.max_reference_chars", cfg.judge_prompt.max_reference_chars),
                       ("judge.placement.max_seq_len", cfg.judge.placement.max_seq_len),
                       ("slurm.generate_shards", cfg.slurm.generate_shards),
                       ("slurm.judge_shards", cfg.slurm.judge_shards),
                       ("label.n", cfg.label.n), ("report.length_words", cfg.report.length_words),
                       ("report.calibration_bins", cfg.report.calibration_bins)):
        need(value >= 1, f"{key}={value} must be at least 1")
    reply_tokens = OmegaConf.select(cfg, "judge_prompt.reply_tokens", throw_on_missing=False)
    need(reply_tokens is not None and reply_tokens >= 1,
         f"judge_prompt.reply_tokens={reply_tokens} must be at least 1" if reply_tokens is not None else
         f"judge_prompt.reply_tokens is not set in judge_prompt={cfg.judge_prompt.name}: give the most tokens the "
         "judge may write (at least 1)")
    for key, value in (("dataset.limit", cfg.dataset.limit), ("judge.placement.gpus", cfg.judge.placement.gpus),
                       ("threads", cfg.threads), ("slurm.max_parallel", cfg.slurm.max_parallel)):
        need(value is None or value >= 1, f"{key}={value} must be at least 1, or null")
    for key, value in (("judge.threshold", cfg.judge.threshold), ("judge.min_verdict_mass", cfg.judge.min_verdict_mass),
                       ("report.f1_threshold", cfg.report.f1_threshold),
                       ("report.rouge_threshold", cfg.report.rouge_threshold),
                       ("jury.threshold", cfg.jury.threshold)):
        need(0.0 <= value <= 1.0, f"{key}={value} must lie in [0, 1]")
    need(0.0 <= cfg.judge.placement.margin < 1.0,
         f"judge.placement.margin={cfg.judge.placement.margin} must lie in [0, 1) (a fraction kept free)")
    need(0.0 < cfg.report.target_halfwidth < 0.5,
         f"report.target_halfwidth={cfg.report.target_halfwidth} must lie in (0, 0.5) (half an interval's width)")
    need(cfg.report.bootstrap >= 0, f"report.bootstrap={cfg.report.bootstrap} must be 0 (no intervals) or more")
    need(cfg.report.min_labels >= 2, f"report.min_labels={cfg.report.min_labels} must be at least 2 (a kappa or an "
         "interval needs two labels, one of each class)")
    need(0.0 <= cfg.report.max_invalid_share <= 1.0,
         f"report.max_invalid_share={cfg.report.max_invalid_share} must lie in [0, 1] (a share of the verdicts)")
    need(cfg.label.seed >= 0, f"label.seed={cfg.label.seed} must be 0 or more")
    need(cfg.slurm.signal_seconds >= 0, f"slurm.signal_seconds={cfg.slurm.signal_seconds} must be 0 or more")
    replicas = OmegaConf.select(cfg, "judge.placement.replicas", default="auto")
    need(parse_requested(replicas) is not None,
         f"judge.placement.replicas={replicas!r} must be auto or a whole number at least 1")
    for key, sep in (("dataset.fields.answers_sep", cfg.dataset.fields.answers_sep),
                     ("import_fields.answers_sep", cfg.import_fields.answers_sep)):
        need(sep != "", f"{key}='' is no separator: give the text between references (e.g. '|'), or null for none")
    for key, kept in (("dataset.fields.keep", cfg.dataset.fields.keep), ("import_fields.keep", cfg.import_fields.keep)):
        clash = [c for c in kept if c in SAMPLE_COLUMNS]
        need(not clash, f"{key}=[{','.join(kept)}] names {clash[0]!r}, a column samples.csv has already: keep your "
             "own columns only (the question, references and id are kept anyway)" if clash else "")
        need(len(set(kept)) == len(kept), f"{key}=[{','.join(kept)}] names a column twice")
    need(all(str(c).strip() for c in cfg.report.by) and len(set(cfg.report.by)) == len(cfg.report.by),
         f"report.by=[{','.join(cfg.report.by)}] must name each column once (a column of samples.csv kept with "
         "dataset.fields.keep, or finish_reason)")
    modes = list(cfg.judge_prompt.modes)
    need(cfg.stage not in ("judge", "submit") or str(cfg.judge.mode) in modes,
         f"judge_prompt={cfg.judge_prompt.name}-v{cfg.judge_prompt.version} is written for judge.mode="
         f"{'/'.join(modes)}, not judge.mode={cfg.judge.mode}"
         + (" (the judge reasons before its verdict, and logprob mode reads only the first token of its reply): pass "
            "judge.mode=generate, or use a prompt that ends where the verdict starts (judge_prompt=verdict-v2)"
            if str(cfg.judge.mode) == "logprob" else f": pass judge.mode={modes[0]}" if modes else ""))
    for mode in modes:
        need(mode in ("logprob", "generate"), f"judge_prompt.modes holds {mode!r}: the modes are logprob and generate")
    need(DEVICE_PATTERN.fullmatch(str(cfg.generator.device)) is not None,
         f"generator.device={cfg.generator.device!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
    if problems:
        raise PipelineError(f"{'; '.join(problems)}. Nothing was written; fix the value and run again.")
    if cfg.run_id is not None and str(cfg.run_id) != "latest":
        check_name("run_id", cfg.run_id)
    check_name("judge.name", cfg.judge.name)
    check_name("import_fields.verdict_judge", cfg.import_fields.verdict_judge)
    if cfg.jury.name is not None:
        check_name("jury.name", cfg.jury.name)
    runs_dir = Path(cfg.runs_dir).expanduser()
    if runs_dir.exists() and not runs_dir.is_dir():
        raise PipelineError(f"runs_dir={cfg.runs_dir!r} is a file, not a folder; point runs_dir at a folder "
                            "(it is made if missing).")
