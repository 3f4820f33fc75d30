"""Small-sample statistics for comparing runs over seeds: Student-t intervals and paired differences.

A method is run with a few seeds (typically 3-5); its mean accuracy alone says nothing about whether it beats
another. :func:`t_interval` gives the mean with a Student-t confidence interval (``n - 1`` degrees of
freedom, sample standard deviation); :func:`paired_interval` does the same for the per-seed differences of two
methods run on the same seeds (pairing removes the seed-to-seed variance both share), and :func:`verdict`
reads the interval: it "helps" only if the whole interval is above 0.

Pure: numpy and ``scipy.stats.t`` (the quantile), no TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats as _scipy_stats

__all__ = ["Interval", "t_interval", "paired_differences", "paired_interval", "verdict"]

NAN = float("nan")


@dataclass(frozen=True)
class Interval:
    """A sample mean with its confidence interval.

    Attributes:
        n: Number of (finite) values.
        mean: Their mean (NaN when ``n == 0``).
        std: Sample standard deviation (``ddof=1``); 0 when ``n == 1``, NaN when ``n == 0``.
        low: Lower end of the confidence interval (NaN when ``n < 2``).
        high: Upper end (NaN when ``n < 2``).
    """

    n: int
    mean: float
    std: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        """Half the interval's width, ``t * std / sqrt(n)`` (NaN when ``n < 2``)."""
        return (self.high - self.low) / 2.0

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        """``"mean ± std [low, high]"``, each times ``scale``, e.g. ``"71.3 ± 2.1 [68.9, 73.7]"``.

        ``±`` is the sample standard deviation; the brackets are the confidence interval. One value has no
        interval: ``"71.3 ± 0.0"``; no value gives ``"n/a"``.

        Args:
            scale: Multiplies every number (100: fractions as percentage points).
            digits: Decimals.
        """
        f = lambda v: f"{v * scale:.{digits}f}"  # noqa: E731
        if self.n == 0:
            return "n/a"
        if self.n == 1:
            return f"{f(self.mean)} ± {f(self.std)}"
        return f"{f(self.mean)} ± {f(self.std)} [{f(self.low)}, {f(self.high)}]"


def _check_confidence(confidence: float) -> float:
    confidence = float(confidence)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return confidence


def t_interval(values: Iterable[float] | Mapping, confidence: float = 0.95) -> Interval:
    """Mean and two-sided Student-t confidence interval of the finite values.

    ``mean ± t_{(1 + confidence) / 2, n - 1} * std / sqrt(n)`` with the sample standard deviation (``ddof=1``).
    ``None``, NaN and infinite values (e.g. a missing or diverged run) are dropped first.

    Args:
        values: Numbers or ``None`` (a mapping: its values, e.g. seed -> accuracy).
        confidence: Coverage of the interval, in ``(0, 1)``.

    Returns:
        The :class:`Interval`; with one value ``std = 0`` and no interval (NaN ends), with none all NaN.

    Raises:
        ValueError: ``confidence`` outside ``(0, 1)``.
    """
    confidence = _check_confidence(confidence)
    if isinstance(values, Mapping):
        values = values.values()
    x = np.asarray([float(v) for v in values if v is not None], np.float64)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return Interval(0, NAN, NAN, NAN, NAN)
    mean = float(x.mean())
    if n == 1:
        return Interval(1, mean, 0.0, NAN, NAN)
    std = float(x.std(ddof=1))
    half = float(_scipy_stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * std / math.sqrt(n)
    return Interval(n, mean, std, mean - half, mean + half)


def paired_differences(a: Mapping, b: Mapping) -> dict:
    """``{key: a[key] - b[key]}`` over the keys in both whose two values are finite (``None`` counts as
    missing), in ``a``'s order.

    Args:
        a: E.g. seed -> accuracy of one method.
        b: Seed -> accuracy of the other.
    """
    out = {}
    for key, va in a.items():
        if key not in b or va is None or b[key] is None:
            continue
        va, vb = float(va), float(b[key])
        if math.isfinite(va) and math.isfinite(vb):
            out[key] = va - vb
    return out


def paired_interval(a: Mapping, b: Mapping, confidence: float = 0.95) -> Interval:
    """Student-t interval of the paired differences ``a - b`` (see :func:`paired_differences`)."""
    return t_interval(list(paired_differences(a, b).values()), confidence)


def verdict(interval: Interval) -> str:
    """Reads a difference's interval: ``"helps"`` if it lies above 0, ``"hurts"`` if below, else
    ``"no clear difference"``; ``"too few seeds"`` with fewer than two values."""
    if interval.n < 2:
        return "too few seeds"
    if interval.low > 0:
        return "helps"
    if interval.high < 0:
        return "hurts"
    return "no clear difference"
