"""In-order scoreboard: every output beat against the next expected one.

Expected values come from ``psc.model.golden`` (via :mod:`tb.psc_model`); the
scoreboard only compares. On the first mismatch it raises with the output, the
expected value, the differing lanes and a description of the INPUTS that
produced the expected value, so a failure can be reproduced without a waveform.
"""

from collections import deque

import numpy as np

__all__ = ["ScoreboardError", "Scoreboard"]


class ScoreboardError(AssertionError):
    """An output beat differed from the reference, was not expected, or never came."""


def _norm(value):
    arr = np.asarray(value, dtype=object).reshape(-1)
    return tuple(int(v) for v in arr)


def _describe(inputs):
    if inputs is None:
        return "(no input record)"
    describe = getattr(inputs, "describe", None)
    return describe() if callable(describe) else repr(inputs)


class Scoreboard:
    """Compare output beats, in order, with expected values queued by :meth:`expect`.

    Parameters
    ----------
    name : str
        Names the checked stream in messages.
    element : str
        What one value of a beat is called in messages ("row", "lane").

    Attributes
    ----------
    matched : int
        Output beats that matched.
    """

    def __init__(self, name="scoreboard", element="lane"):
        self.name = name
        self.element = element
        self._expected = deque()
        self.matched = 0
        self.received = 0

    @property
    def pending(self):
        """Expected beats that have not arrived yet."""
        return len(self._expected)

    def expect(self, value, inputs=None):
        """Queue the value the next output beat must have, and the inputs that produce it."""
        self._expected.append((_norm(value), inputs))

    def clear(self):
        """Forget every expected beat (after a reset of the DUT)."""
        self._expected.clear()

    def check(self, got):
        """Compare one output beat (a sequence of lane values, or an int) with the next expectation."""
        got = _norm(got)
        index = self.received
        self.received += 1
        if not self._expected:
            raise ScoreboardError(
                f"{self.name}: output beat #{index} = {list(got)} arrived but no output was "
                f"expected (a duplicated or spurious beat; {self.matched} beats matched before it)")
        exp, inputs = self._expected.popleft()
        if got != exp:
            diff = [f"{self.element} {i}: got {g}, expected {e} (diff {g - e:+d})"
                    for i, (g, e) in enumerate(zip(got, exp)) if g != e]
            raise ScoreboardError(
                f"{self.name}: output beat #{index} differs from psc.model.golden "
                f"({self.matched} beats matched before it)\n"
                f"  got      {list(got)}\n  expected {list(exp)}\n  " + "\n  ".join(diff) +
                f"\n  inputs that produced the expected value:\n{_describe(inputs)}")
        self.matched += 1

    def assert_done(self):
        """Raise if expected beats never arrived (lost beats)."""
        if self._expected:
            exp, inputs = self._expected[0]
            raise ScoreboardError(
                f"{self.name}: {len(self._expected)} expected output beat(s) never arrived "
                f"({self.matched} matched); the first missing one is {list(exp)}, from inputs:\n"
                f"{_describe(inputs)}")
