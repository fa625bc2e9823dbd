"""The KLD budget a budgeted scheme loops on: mean, p99 or both, and the next target it
aims for after a measurement."""

from __future__ import annotations

import pytest

from tokenomy.compress.auto.budget import P99_OVER_MEAN, KldBudget, KldMeasure, check_budget
from tokenomy.errors import InvalidInputError


def test_met_needs_every_limit_given():
    both = KldBudget(mean=0.02, p99=0.3)
    assert both.met(KldMeasure(0.02, 0.3))
    assert not both.met(KldMeasure(0.021, 0.1))
    assert not both.met(KldMeasure(0.01, 0.31))
    assert KldBudget(p99=0.3).met(KldMeasure(5.0, 0.3))
    assert not KldBudget().given and KldBudget(p99=0.1).given


def test_start_aims_at_the_tighter_of_the_mean_and_the_p99_by_a_typical_ratio():
    assert KldBudget(mean=0.02).start() == 0.02
    assert KldBudget(p99=0.3).start() == pytest.approx(0.3 / P99_OVER_MEAN)
    assert KldBudget(mean=0.001, p99=0.3).start() == 0.001
    assert KldBudget().start() is None


def test_next_target_scales_each_limit_by_how_far_the_estimate_was_off():
    # estimated 0.01, measured mean 0.02 (2x the estimate), p99 0.4 (40x)
    m = KldMeasure(0.02, 0.4)
    assert KldBudget(mean=0.015).next_target(0.01, m) == pytest.approx(0.95 * 0.015 / 2)
    assert KldBudget(p99=0.2).next_target(0.01, m) == pytest.approx(0.95 * 0.2 / 40)
    both = KldBudget(mean=0.015, p99=0.2)
    assert both.next_target(0.01, m) == pytest.approx(min(0.95 * 0.015 / 2, 0.95 * 0.2 / 40))


def test_mean_aim_carries_the_p99_budget_over_the_ratio_measured_on_a_file():
    m = KldMeasure(0.01, 0.05)  # p99 5x the mean on this file
    assert KldBudget(p99=0.1).mean_aim(m) == pytest.approx(0.95 * 0.1 / 5)
    assert KldBudget(mean=0.01, p99=0.1).mean_aim(m) == pytest.approx(0.95 * 0.01)


def test_a_missed_budget_names_the_closest_try_with_both_figures():
    b = KldBudget(mean=0.01, p99=0.1)
    err = b.missed([(KldMeasure(0.05, 0.5), 80_000_000), (KldMeasure(0.012, 0.12), 90_000_000)])
    assert "--max-kld 0.01 and --max-kld-p99 0.1" in str(err)
    assert "mean KLD of 0.012 and p99 0.12 (90.00 MB) after 2 tries" in str(err)


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(mean=0.0), "--max-kld must be positive"),
    (dict(p99=-1.0), "--max-kld-p99 must be positive"),
])
def test_a_budget_that_is_not_positive_is_refused(kwargs, fragment):
    with pytest.raises(InvalidInputError, match=fragment):
        KldBudget(**kwargs)


def test_a_budgeted_scheme_needs_a_budget_or_a_size():
    with pytest.raises(InvalidInputError, match="--max-kld-p99"):
        check_budget("auto", KldBudget(), None)
    with pytest.raises(InvalidInputError, match="--size-mb must be positive"):
        check_budget("auto", KldBudget(), -1.0)
    check_budget("auto", KldBudget(p99=0.1), None)
