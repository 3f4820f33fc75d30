"""hlrs_tf.experiments.stats against values computed by hand (t quantiles from a printed t table)."""

import dataclasses
import math

import pytest

from hlrs_tf.experiments.stats import Interval, paired_differences, paired_interval, t_interval, verdict

# Two-sided 95% Student-t quantiles t(0.975, dof), from a t table.
T975 = {1: 12.706205, 2: 4.302653, 3: 3.182446, 4: 2.776445}
T950_4 = 2.131847  # one-sided 95% (two-sided 90%) quantile, 4 dof


def test_t_interval_of_one_to_five():
    s = t_interval([1, 2, 3, 4, 5])
    # mean 3, std sqrt(10 / 4) = 1.581139, half width 2.776445 * 1.581139 / sqrt(5) = 1.963243
    assert (s.n, s.mean, s.std) == (5, 3.0, pytest.approx(1.5811388, rel=1e-7))
    assert s.low == pytest.approx(3 - 1.963243, abs=1e-6) and s.high == pytest.approx(3 + 1.963243, abs=1e-6)
    assert s.half_width == pytest.approx(1.963243, abs=1e-6)


def test_t_interval_two_values_and_other_level():
    s = t_interval([0.5, 0.7])
    # std sqrt(0.02) = 0.141421, half width 12.706205 * 0.141421 / sqrt(2) = 1.2706205
    assert s.half_width == pytest.approx(T975[1] * 0.1, rel=1e-6)
    s90 = t_interval([0.5, 0.7], confidence=0.90)
    assert s90.half_width == pytest.approx(6.313752 * 0.1, rel=1e-6)  # t(0.95, 1) = 6.313752


def test_degenerate_inputs():
    one = t_interval([0.4])
    assert (one.n, one.mean, one.std) == (1, 0.4, 0.0) and math.isnan(one.low) and math.isnan(one.high)
    none = t_interval([None, float("nan"), float("inf")])
    assert none.n == 0 and math.isnan(none.mean) and none.format() == "n/a"
    assert t_interval([1.0, float("nan"), 3.0]).n == 2  # NaN left out, not propagated
    with pytest.raises(ValueError, match="confidence"):
        t_interval([1, 2], confidence=1.0)


def test_format():
    assert t_interval([0.50, 0.70, 0.60]).format() == "60.0 ± 10.0 [35.2, 84.8]"  # 4.302653 * 10 / sqrt(3)
    assert t_interval([0.4]).format() == "40.0 ± 0.0"
    assert t_interval([2, 4]).format(scale=1.0, digits=2).startswith("3.00 ± 1.41 [")


def test_paired_differences_use_common_finite_seeds():
    a = {0: 0.6, 1: 0.7, 2: 0.8, 3: float("nan")}
    b = {0: 0.5, 1: 0.5, 3: 0.4, 4: 0.9}
    assert paired_differences(a, b) == {0: pytest.approx(0.1), 1: pytest.approx(0.2)}
    d = paired_interval(a, b)
    # differences 0.1, 0.2: mean 0.15, std 0.0707107, half width 12.706205 * 0.0707107 / sqrt(2) = 0.635310
    assert d.n == 2 and d.mean == pytest.approx(0.15) and d.half_width == pytest.approx(0.635310, rel=1e-5)


def test_verdict_boundaries():
    assert verdict(Interval(3, 0.1, 0.01, 0.05, 0.15)) == "helps"
    assert verdict(Interval(3, -0.1, 0.01, -0.15, -0.05)) == "hurts"
    assert verdict(Interval(3, 0.1, 0.1, -0.01, 0.2)) == "no clear difference"
    assert verdict(Interval(3, 0.0, 0.0, 0.0, 0.0)) == "no clear difference"  # 0 is in [0, 0]
    assert verdict(t_interval([0.3])) == "too few seeds"


def test_other_confidence_and_mapping_input():
    s = t_interval({"seed0": 1, "seed1": 2, "seed2": 3, "seed3": 4, "seed4": 5}, confidence=0.90)
    # half width 2.131847 * sqrt(2.5) / sqrt(5) = 2.131847 * 0.7071068 = 1.507443
    assert s.n == 5 and s.mean == 3.0 and s.half_width == pytest.approx(1.507443, abs=1e-6)


def test_degenerate_intervals_have_nan_ends():
    one, none = t_interval([0.4]), t_interval([])
    assert math.isnan(one.half_width) and math.isnan(none.std) and math.isnan(none.low)
    assert (none.n, verdict(none)) == (0, "too few seeds")
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.mean = 0.5


def test_paired_interval_with_missing_and_diverged_seeds():
    a = {0: 0.70, 1: 0.72, 2: 0.71, 3: float("nan"), 4: 0.69, 6: 0.75}
    b = {0: 0.68, 1: 0.69, 2: 0.70, 3: 0.70, 4: 0.70, 5: 0.50, 6: None}
    d = paired_interval(a, b)
    # seeds 0, 1, 2, 4 (3 diverged in a, 5 only in b, 6 missing in b): differences .02 .03 .01 -.01,
    # mean 0.0125, squared deviations sum to 8.75e-4, std sqrt(8.75e-4 / 3) = 0.01707825,
    # half width 3.182446 * 0.01707825 / 2 = 0.0271753 -> [-0.0146753, 0.0396753]
    assert list(paired_differences(a, b)) == [0, 1, 2, 4]
    assert d.n == 4 and d.mean == pytest.approx(0.0125, abs=1e-12)
    assert d.std == pytest.approx(0.01707825, rel=1e-6)
    assert d.low == pytest.approx(-0.0146753, abs=1e-6) and d.high == pytest.approx(0.0396753, abs=1e-6)
    assert verdict(d) == "no clear difference"
    assert d.format(digits=2) == "1.25 ± 1.71 [-1.47, 3.97]"


def test_verdict_of_paired_seeds_both_ways():
    better = {0: 0.72, 1: 0.73, 2: 0.725}
    base = {0: 0.70, 1: 0.70, 2: 0.70}
    # differences .02 .03 .025: mean 0.025, std 0.005, half width 4.302653 * 0.005 / sqrt(3) = 0.0124207
    up = paired_interval(better, base)
    assert up.low == pytest.approx(0.025 - 0.0124207, abs=1e-6) and verdict(up) == "helps"
    assert verdict(paired_interval(base, better)) == "hurts"
    assert verdict(paired_interval({0: 0.7}, {0: 0.6})) == "too few seeds"  # one common seed


def test_verdict_at_the_exact_boundaries():
    # an end exactly at 0 means 0 is inside the (closed) interval
    assert verdict(Interval(3, 0.1, 0.05, 0.0, 0.2)) == "no clear difference"
    assert verdict(Interval(3, -0.1, 0.05, -0.2, 0.0)) == "no clear difference"
    assert verdict(Interval(2, 0.1, 0.0, 0.1, 0.1)) == "helps"  # identical differences: zero width, above 0
    assert verdict(Interval(1, 0.1, 0.0, math.nan, math.nan)) == "too few seeds"
