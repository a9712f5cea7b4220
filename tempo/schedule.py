"""When a run's periodic duties happen: one trigger kind for all of them.

The released code decides when to update, log and report with small `Every`
objects (`common/when.py`), and its grid is part of what a run computes: the
first update comes on the first step after the prefill, not `train_every`
steps later. `Every` here keeps those semantics so that a run of ours updates,
logs and evaluates at the release's steps (`tests/test_reference_schedule.py`).
"""

from __future__ import annotations


class Every:
    """Fires on its first call, then whenever `every` more steps have passed
    since the last point of its grid.

    The grid starts where the trigger first fired and advances by exactly
    `every` per firing, so a call that comes late (a multi-environment step
    that jumps over a grid point) fires once and the following calls catch up
    one period at a time, as the release's trigger does. `every = 0` never
    fires. `last` resumes a grid whose last point is known (no first-call
    firing then).
    """

    def __init__(self, every: int, last: int | None = None) -> None:
        if int(every) != every or every < 0:
            raise ValueError(f"a period must be a non-negative integer, got {every!r}")
        self.every = int(every)
        self.last = None if last is None else int(last)

    def __call__(self, step: int) -> bool:
        if not self.every:
            return False
        step = int(step)
        if self.last is None:
            self.last = step
            return True
        if step >= self.last + self.every:
            self.last += self.every
            return True
        return False
