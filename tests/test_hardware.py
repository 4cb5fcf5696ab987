"""hardware.py: declared hardware profiles (conf/hardware/) as the GPUs their names say, memory sizes that mean
exactly what they say (GiB is 2^30, GB is 10^9) or are refused naming the key, and this machine as torch sees it."""

import pytest
import torch
from omegaconf import OmegaConf

from pipeline.errors import PipelineError
from pipeline.hardware import GiB, detect, from_profile, parse_bytes
from pipeline.placement import plan_for

from conftest import CONF, PROFILES, gpus, judge_cfg, make_cfg, profile_hardware

# the profiles that declare their GPUs rather than detect them (hardware=auto detects)
DECLARED = sorted(p for p in (CONF / "hardware").glob("*.yaml") if OmegaConf.load(p).get("detect") is False)


def test_shipped_profiles_declare_what_their_names_say(tmp_path):
    assert len(PROFILES) >= 7
    for name in PROFILES:
        hw = profile_hardware(tmp_path, name)
        count, rest = name.split("x", 1)
        assert len(hw.gpus) == int(count) and [g.index for g in hw.gpus] == list(range(int(count)))
        assert abs(hw.gpus[0].total_bytes / GiB - int(rest.rsplit("-", 1)[1].removesuffix("GB"))) < 1


@pytest.mark.parametrize("path", DECLARED, ids=lambda p: p.stem)
def test_every_declared_hardware_profile_resolves(tmp_path, path):
    cfg = make_cfg(tmp_path / "runs", f"hardware={path.stem}")
    hw = from_profile(cfg.hardware)
    assert len(hw.gpus) == sum(g.count for g in cfg.hardware.gpus) >= 1


@pytest.mark.parametrize("text, value", [("40GiB", 40 * GiB), ("40GB", 40 * 10**9), ("512 MiB", 512 << 20),
                                         ("1.5GiB", int(1.5 * GiB)), (1024, 1024), ("2048", 2048)])
def test_memory_sizes_mean_exactly_what_they_say(text, value):
    assert parse_bytes(text) == value


def test_memory_size_that_does_not_parse(tmp_path):
    with pytest.raises(PipelineError, match="40GiB .* 40GB"):
        parse_bytes("forty gigs")
    with pytest.raises(PipelineError, match="judge.placement.max_memory.0"):
        plan_for(judge_cfg(tmp_path, "llama8b", "judge.placement.max_memory={0: lots}"), gpus(1, 80))


def test_this_machine_is_detected_and_described():
    hw = detect()
    assert hw.source == "detected" and hw.cpu_bytes > 0
    if not torch.cuda.is_available():
        assert hw.gpus == [] and hw.backend == "none" and hw.notes
