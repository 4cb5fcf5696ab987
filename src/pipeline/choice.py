"""Settings with a fixed set of values (config.py and engines/settings.py)."""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """A setting with a fixed set of values. Hydra refuses any other value when it composes the config, naming the
    key and the choices; a member compares equal to, formats and serialises as its plain string."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    def __repr__(self) -> str:
        return repr(self.value)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(m.value for m in cls)
