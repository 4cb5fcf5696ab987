"""A command line's Hydra overrides, as the stages that start other processes read them (submit's jobs, a judge's
replicas): their keys, and the overrides this process was started with."""

from __future__ import annotations

import re


def override_root(override: str) -> str:
    """The first part of an override's key: '+hardware.gpus.0.count=2' -> 'hardware', 'slurm.qos=x' -> 'slurm'."""
    key = override.lstrip("+~").split("=", 1)[0]
    return re.split(r"[./@]", key, maxsplit=1)[0].strip()


def override_key(override: str) -> str:
    """An override's whole key: '+judge.placement.replicas=2' -> 'judge.placement.replicas'."""
    return override.lstrip("+~").split("=", 1)[0].strip()


def command_line_overrides() -> list[str]:
    """The overrides this process was started with (empty when not started through the Hydra entry point)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


def given_on_command_line(*keys: str) -> bool:
    """Whether the command line set one of `keys` (a group such as `dataset`, or a key such as `dataset.name`), for a
    default that should yield to the user's word only (stage=import names the data set after the file unless told).
    False outside a command (a config composed in Python)."""
    return any(override_key(o) in keys for o in command_line_overrides())
