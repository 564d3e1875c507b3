"""The statistics of rows that are distributions: a configuration trained over several seeds.

A difference between two single runs of a CIFAR model (0.2 pp) is often
inside the seed-to-seed noise, so a replicated row is compared as a sample:
Welch's t-test (no equal-variance assumption: a bad configuration is often
also a noisier one) and the Welch–Satterthwaite interval of the difference of
the means, the interval scipy's ``ttest_ind(equal_var=False)`` reports. Both
are computed from (mean, std, n), so a row whose replicate runs are gone still
compares through the aggregates its trial's run holds. A row of one run has no
spread: it gets no interval and no test, never a made-up one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

ALPHA = 0.05
LEVEL = 1 - ALPHA
TEST_NAME = "Welch's t-test (two-sided, unequal variances)"


@dataclass(frozen=True)
class Dist:
    """A metric over a row's replicates; ``std`` is the sample std (ddof=1)."""

    mean: float
    std: float
    n: int

    @property
    def sem(self) -> float:
        return self.std / math.sqrt(self.n)

    @property
    def ci95(self) -> tuple[float, float]:
        """mean ± t(0.975, n-1)·sem, the interval the trainer logs as ``*_ci95_low/high``."""
        from scipy import stats

        half = stats.t.ppf(1 - ALPHA / 2, self.n - 1) * self.sem
        return self.mean - half, self.mean + half


def dist(samples: Sequence[float]) -> Dist | None:
    """The distribution of at least two values, else None (one run is no distribution)."""
    values = [float(v) for v in samples if v is not None and not math.isnan(float(v))]
    if len(values) < 2:
        return None
    mean = math.fsum(values) / len(values)
    var = math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return Dist(mean, math.sqrt(var), len(values))


@dataclass(frozen=True)
class Diff:
    """``a - b`` of two rows' means, its 95% interval and Welch's p-value."""

    diff: float
    low: float
    high: float
    p: float
    df: float

    @property
    def significant(self) -> bool:
        return self.p < ALPHA


def welch(a: Dist, b: Dist) -> Diff:
    """Welch's test of a's mean against b's, and the Welch–Satterthwaite CI of a - b."""
    from scipy import stats

    diff = a.mean - b.mean
    va, vb = a.std ** 2 / a.n, b.std ** 2 / b.n
    se = math.sqrt(va + vb)
    if se == 0.0:  # every replicate of both rows scored the same: the difference is exact
        return Diff(diff, diff, diff, 1.0 if diff == 0 else 0.0, float(a.n + b.n - 2))
    df = (va + vb) ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1))
    half = stats.t.ppf(1 - ALPHA / 2, df) * se
    p = float(stats.ttest_ind_from_stats(a.mean, a.std, a.n, b.mean, b.std, b.n, equal_var=False).pvalue)
    return Diff(diff, diff - half, diff + half, p, df)


def tied(a: Dist | None, b: Dist | None) -> bool:
    """Whether two rows are not told apart by the test; a row of one run is never tied (no test)."""
    return a is not None and b is not None and not welch(a, b).significant
