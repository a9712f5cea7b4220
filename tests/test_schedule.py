"""tempo.schedule.Every against hand-worked grids (the released trigger's rules)."""

import pytest

from tempo.schedule import Every


def fired(trigger, steps):
    return [step for step in steps if trigger(step)]


def test_fires_first_then_on_a_grid_from_that_step():
    assert fired(Every(5), range(60, 80)) == [60, 65, 70, 75]


def test_a_late_call_fires_once_and_the_grid_catches_up_period_by_period():
    # Steps of 4 (four environments) past a grid of 5 from 0: points 5, 10, 15, 20
    # are each fired once, at the first call at or after them, never twice in a call.
    trigger = Every(5)
    assert fired(trigger, [0, 4, 8, 12, 16, 20, 24]) == [0, 8, 12, 16, 20]
    assert trigger.last == 20


def test_a_jump_over_several_periods_fires_on_following_calls():
    trigger = Every(10, last=0)
    assert fired(trigger, [35, 36, 37, 38]) == [35, 36, 37]  # grid points 10, 20, 30
    assert trigger.last == 30


def test_a_resumed_grid_does_not_fire_on_its_first_call():
    assert fired(Every(40, last=100), [100, 120, 139, 140, 141, 180]) == [140, 180]


def test_zero_never_fires_and_bad_periods_are_refused():
    assert fired(Every(0), range(10)) == []
    for bad in (-1, 2.5):
        with pytest.raises(ValueError, match="non-negative integer"):
            Every(bad)
