"""Runs a sampler once per outcome of its random draws, with each outcome's probability.

Stands in for a random generator (numpy's `Generator.integers`, the legacy
`RandomState.randint` and `choice`, all uniform): depth-first over the tree of
draws, each run replays a prefix of choices (later draws take 0) and records
how many outcomes each draw had; the next prefix is the odometer increment of
the last run's choices. Used by `make_replay_golden.py` on the release's
sampler and by `tests/test_reference_replay.py` on ours.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from fractions import Fraction


class DrawTree:
    def __init__(self) -> None:
        self.prefix: list[int] = []
        self.sizes: list[int] = []

    def _draw(self, n: int) -> int:
        n = int(n)
        assert n >= 1, n
        depth = len(self.sizes)
        if depth == len(self.prefix):
            self.prefix.append(0)
        self.sizes.append(n)
        return self.prefix[depth]

    def integers(self, low, high=None) -> int:
        if high is None:
            low, high = 0, low
        return int(low) + self._draw(int(high) - int(low))

    def randint(self, low, high=None, size=None) -> int:
        assert size is None
        return self.integers(low, high)

    def choice(self, seq, size=None, replace=True, p=None):
        assert size is None and p is None
        return seq[self._draw(len(seq))]

    def runs(self, fn: Callable[[DrawTree], object]) -> Iterator[tuple[object, Fraction]]:
        """Yields (fn(self), probability) for every path of draws."""
        while True:
            self.sizes = []
            result = fn(self)
            del self.prefix[len(self.sizes) :]
            probability = Fraction(1)
            for n in self.sizes:
                probability /= n
            yield result, probability
            while self.prefix and self.prefix[-1] + 1 >= self.sizes[len(self.prefix) - 1]:
                self.prefix.pop()
            if not self.prefix:
                return
            self.prefix[-1] += 1
