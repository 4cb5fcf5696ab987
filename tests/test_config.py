"""Every YAML under conf/ composes, exactly as the CLI composes it, into the values it sets, and passes
checks.check; every judge prompt builds a real prompt for the embedded judge. Pure config refusals (a misspelt
key, a value outside its choices or range) are checked here in-process, without running a stage.

Option files are found with a glob, so a new preset is covered as soon as it exists.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from conftest import CONF, make_cfg
from pipeline import checks, config
from pipeline.errors import PipelineError
from pipeline.rows import GenerationRow

GROUPS = ("dataset", "generator", "hardware", "judge", "judge_prompt")
OPTION_FILES = sorted(p for p in CONF.rglob("*.yaml") if p.parent != CONF)
ANSWER = GenerationRow.answer(id="fq-0001", references=["Steve Jobs", "Jobs"], prediction="Steve Jobs",
                              question="Who co-founded Apple with Steve Wozniak and became its public face?")


def group_of(path: Path) -> str:
    return path.parent.relative_to(CONF).as_posix()


def package_of(path: Path) -> str:
    """Where a group file's values land: its `# @package` header, else the group's own path."""
    header = re.match(r"#\s*@package\s+(\S+)", path.read_text())
    return header.group(1) if header else group_of(path).replace("/", ".")


def yaml_values(path: Path) -> dict:
    """The values a YAML file sets itself (its defaults list is not a value)."""
    values = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    values.pop("defaults", None)
    return values


def with_hydra(*overrides: str):
    """As make_cfg, with the `hydra` node kept (the CLI reads it; the stages never see it)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def assert_sets(composed, expected, where: str) -> None:
    """Every value the YAML sets is in the composed config, under the same key (so a dropped or renamed key fails)."""
    if isinstance(expected, dict):
        assert isinstance(composed, dict), f"{where}: the YAML sets a mapping, the config holds {composed!r}"
        for key, value in expected.items():
            assert key in composed, f"{where}.{key}: set in the YAML, absent from the composed config"
            assert_sets(composed[key], value, f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(composed, list) and len(composed) == len(expected), \
            f"{where}: composed {composed!r}, the YAML says {expected!r}"
        for i, (got, want) in enumerate(zip(composed, expected)):
            assert_sets(got, want, f"{where}[{i}]")
    else:
        assert composed == expected, f"{where}: composed {composed!r}, the YAML says {expected!r}"


def node(cfg, dotted: str):
    return OmegaConf.to_container(OmegaConf.select(cfg, dotted), resolve=False, enum_to_str=True)


def test_every_config_group_is_discovered():
    assert set(GROUPS) <= {group_of(p) for p in OPTION_FILES}
    assert "hydra/launcher" in {group_of(p) for p in OPTION_FILES}


@pytest.mark.parametrize("path", OPTION_FILES, ids=lambda p: str(p.relative_to(CONF)))
def test_every_option_file_composes_into_its_own_values_and_passes_the_checks(tmp_path, path):
    if group_of(path).startswith("hydra/launcher"):
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    choice = f"{group_of(path)}={path.stem}"
    cfg = make_cfg(tmp_path / "runs", choice)
    checks.check(cfg)
    composed = with_hydra(choice) if package_of(path).startswith("hydra") else cfg
    assert_sets(node(composed, package_of(path)), yaml_values(path), package_of(path))


def test_the_root_config_composes_into_its_values_and_its_defaults(tmp_path):
    cfg = make_cfg(tmp_path / "runs")
    checks.check(cfg)
    values = yaml_values(CONF / "config.yaml")
    assert_sets(node(with_hydra(), "hydra"), values.pop("hydra"), "hydra")
    assert_sets(OmegaConf.to_container(cfg, resolve=False, enum_to_str=True), values, "config")
    defaults = OmegaConf.to_container(OmegaConf.load(CONF / "config.yaml"))["defaults"]
    chosen = [d for d in defaults if isinstance(d, dict)]
    chosen = [(group, option) for d in chosen for group, option in d.items() if not group.startswith("override ")]
    assert {group for group, _ in chosen} == set(GROUPS)
    for group, option in chosen:
        assert_sets(node(cfg, group), yaml_values(CONF / group / f"{option}.yaml"), group)


# ------------------------------------------------------------------------------ judge prompts, built for real

@pytest.mark.parametrize("path", [p for p in OPTION_FILES if group_of(p) == "judge_prompt"], ids=lambda p: p.stem)
def test_every_judge_prompt_builds_a_real_prompt_and_its_verdict_tokens(tmp_path, tokenizer, path):
    from pipeline.models import use_chat_template
    from pipeline.verdict import PromptBuilder, VerdictTokens

    cfg = make_cfg(tmp_path / "runs", f"judge_prompt={path.stem}")
    prompt = cfg.judge_prompt
    text, ids = PromptBuilder(tokenizer, prompt, use_chat_template(tokenizer, cfg.judge.use_chat_template))(ANSWER)
    assert ANSWER.question in text and ANSWER.prediction in text and all(ref in text for ref in ANSWER.references)
    assert all(example["question"] in text for example in prompt.examples)
    assert text.endswith(prompt.reply_prefix or "") and len(ids) > 0
    tokens = VerdictTokens.build(tokenizer, prompt)
    assert tokens.correct and tokens.incorrect and not set(tokens.correct) & set(tokens.incorrect)
    words = {w.lower() for w in [*prompt.correct_words, *prompt.incorrect_words]}
    assert {s.strip().lower() for s in tokens.spellings.values()} <= words


# --------------------------------------------------------------------------- refusals before any work is done

@pytest.mark.parametrize("overrides, says", [
    (["generator.device=gpu0"], "generator.device='gpu0' is not a device"),
    (["judge_prompt.max_candidate_chars=0"], "judge_prompt.max_candidate_chars=0 must be at least 1"),
    (["judge_prompt.reply_tokens=0"], "judge_prompt.reply_tokens=0 must be at least 1"),
    (["judge.min_verdict_mass=2"], "judge.min_verdict_mass=2.0 must lie in [0, 1]"),
    (["judge.threshold=1.5"], "judge.threshold=1.5 must lie in [0, 1]"),
    (["judge.placement.margin=1"], "judge.placement.margin=1.0 must lie in [0, 1)"),
    (["generator.batch_size=0", "dataset.limit=0"],
     "generator.batch_size=0 must be at least 1; dataset.limit=0 must be at least 1"),
    (["slurm.max_parallel=0"], "slurm.max_parallel=0 must be at least 1, or null"),
    (["judge.name=" + "j" * 300], "at most 128 characters"),
    (["run_id=" + "r" * 300], "at most 128 characters"),
    (["run_id=../../etc"], "is not allowed"),
    (["report.min_labels=1"], "report.min_labels=1 must be at least 2"),
    (["report.max_invalid_share=1.5"], "report.max_invalid_share=1.5 must lie in [0, 1]"),
])
def test_a_bad_value_is_refused_by_the_checks_in_one_line(tmp_path, overrides, says):
    with pytest.raises(PipelineError) as refused:
        checks.check(make_cfg(tmp_path / "runs", *overrides))
    assert says in str(refused.value) and "\n" not in str(refused.value)


def test_a_prompt_without_reply_tokens_is_refused_naming_the_key(tmp_path):
    cfg = make_cfg(tmp_path / "runs")
    cfg.judge_prompt.reply_tokens = MISSING
    with pytest.raises(PipelineError, match=r"judge_prompt.reply_tokens is not set in judge_prompt=verdict"):
        checks.check(cfg)


def test_runs_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    with pytest.raises(PipelineError, match="is a file, not a folder"):
        checks.check(make_cfg(tmp_path / "runs"))


@pytest.mark.parametrize("overrides, says", [
    (["stage=generte"], "Invalid value 'generte'"),
    (["generator.precision=bf61"], "Invalid value 'bf61'"),
    (["judge=llama70b-4bit", "judge.compute_dtype=f16"], "Invalid value 'f16'"),
    (["judge.mode=logprb"], "Invalid value 'logprb'"),
    (["judge.placement.strategy=even"], "Invalid value 'even'"),
    (["judge.placement.devices=gpu0"], "Invalid value 'gpu0'"),
    (["generator.batchsize=4"], "batchsize"),
    (["hardware=5xB200"], "Could not find 'hardware/5xB200'"),
    (["judge_prompt.reply_tokens=null"], "reply_tokens"),
    # keys that were dead and are gone: the judge's reply length is judge_prompt.reply_tokens, and only the judge
    # has a hub_id (its placement plan reads the shipped config of the model it is a copy of)
    (["judge.max_new_tokens=8"], "max_new_tokens"),
    (["generator.hub_id=HuggingFaceTB/SmolLM2-135M-Instruct"], "hub_id"),
])
def test_a_key_or_choice_outside_the_schema_is_refused_while_composing(tmp_path, overrides, says):
    with pytest.raises((HydraException, OmegaConfBaseException)) as refused:
        make_cfg(tmp_path / "runs", *overrides)
    cause = refused.value.__cause__ or refused.value.__context__
    assert says in f"{refused.value}\n{cause}"
