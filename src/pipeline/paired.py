"""Paired comparisons: two systems (runs) or two judges scored on the same ids, as a reviewer expects them.

For one criterion (exact match, the judge's verdict, ...) the ids where both are defined make a 2x2 table:
    both     A right, B right          a
    only_a   A right, B wrong          b
    only_b   A wrong, B right          c
    neither  A wrong, B wrong          d
and give
  - the difference in accuracy, (b - c) / n, with Newcombe's hybrid score interval for paired proportions (his
    method 10, 1998: each accuracy's Wilson interval, combined with the continuity-corrected correlation of the
    pairs; it does not collapse to a point when the two agree on every id, unlike a bootstrap; exact coverage at
    n = 30 pairs 0.957 on average over 24 random tables, never below 0.944: tests/test_paired.py);
  - McNemar's exact test of "A and B are equally often right": two-sided, the binomial probability of a split of
    the b + c discordant ids at least as uneven as the one seen, under a fair coin (statsmodels' `mcnemar(exact=True)`
    computes the same; tests/test_paired.py checks it);
  - the counts b and c: on how many ids each one wins.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .stats import proportion_interval


@dataclass(frozen=True)
class Paired:
    n: int  # ids where both are defined
    both: int
    only_a: int  # A right where B is wrong: A's wins
    only_b: int
    neither: int
    acc_a: float
    acc_b: float
    difference: float  # acc_a - acc_b
    lo: float
    hi: float
    mcnemar_p: float

    def to_dict(self) -> dict:
        return asdict(self)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: 2 P(X <= min(b, c)) for X ~ Binomial(b + c, 1/2), at most 1; 1 when there is
    no discordant pair."""
    m = only_a + only_b
    if m == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2 ** m
    return float(min(1.0, 2 * tail))


def newcombe_interval(both: int, only_a: int, only_b: int, neither: int, level: float = 0.95) -> tuple[float, float]:
    """Newcombe's method 10 interval of acc_a - acc_b from a paired 2x2 table; (NaN, NaN) without pairs."""
    n = both + only_a + only_b + neither
    if n == 0:
        return float("nan"), float("nan")
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    l1, u1 = proportion_interval(both + only_a, n, level)
    l2, u2 = proportion_interval(both + only_b, n, level)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    cross = both * neither - only_a * only_b
    # Newcombe's correlation estimate with his continuity correction of a positive one (ad - bc - n/2, not below 0):
    # without it, exact coverage at n = 30 dips to 0.83 (tests/test_paired.py); with it, it stays above 0.94.
    phi = (max(cross - n / 2, 0.0) if cross > 0 else cross) / math.sqrt(margins) if margins > 0 else 0.0
    d = p1 - p2
    lower = d - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    upper = d + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return float(max(-1.0, lower)), float(min(1.0, upper))


def compare(a, b) -> Paired | None:
    """The paired comparison of two yes/no vectors over the same ids (NaN where undefined: left out); None when no id
    has both."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep] > 0.5, b[keep] > 0.5
    n = int(len(a))
    if n == 0:
        return None
    both, only_a = int(np.sum(a & b)), int(np.sum(a & ~b))
    only_b, neither = int(np.sum(~a & b)), int(np.sum(~a & ~b))
    lo, hi = newcombe_interval(both, only_a, only_b, neither)
    return Paired(n=n, both=both, only_a=only_a, only_b=only_b, neither=neither, acc_a=(both + only_a) / n,
                  acc_b=(both + only_b) / n, difference=(only_a - only_b) / n, lo=lo, hi=hi,
                  mcnemar_p=mcnemar_exact(only_a, only_b))
