"""A loop counter for the network units' address generators: it counts the iterations left
down to zero and keeps "this is the last one" in a flip-flop of its own, so that the end of
a loop steers the address registers from a register instead of through a comparator (or
``i + 1 < n``, a carry chain)."""

from amaranth.hdl import Mux, Signal

__all__ = ["Countdown", "loop_widths"]


def loop_widths(config, addr_width):
    """Bits of a gather's or scatter's loop counts, ``(count, channels)``: pixels, rows and
    words per pixel, each at most the activation memory's depth (``2**addr_width``
    words), and channels or beats per pixel, at most ``lanes`` per word. A program's
    values fit by construction; the packer refuses any other."""
    count = addr_width + 1
    return count, count + (config.lanes - 1).bit_length()


class Countdown:
    """Iterations left in a loop of ``n``: :meth:`load` starts it, :attr:`last` is high on
    the loop's last iteration, :meth:`step` goes to the next one and :meth:`restart`
    starts the loop over (the ``n`` of the last :meth:`load`). A loop of 0 runs once.

    Parameters
    ----------
    width : int
        Bits of ``n``.
    name : str
    """

    def __init__(self, width, name):
        self.left = Signal(width, name=f"{name}_left")
        self._first = Signal(width, name=f"{name}_first")
        self._last = Signal(name=f"{name}_last")
        self._first_last = Signal(name=f"{name}_first_last")    # a loop of one iteration

    def load(self, n):
        """Statements that start a loop of ``n`` iterations."""
        first = Mux(n == 0, 0, n - 1)
        one = n <= 1
        return [self.left.eq(first), self._first.eq(first),
                self._last.eq(one), self._first_last.eq(one)]

    @property
    def last(self):
        return self._last

    def step(self):
        """Statements that go to the next iteration (not past the last)."""
        return [self.left.eq(self.left - 1), self._last.eq(self.left == 1)]

    def restart(self):
        """Statements that start the loop over."""
        return [self.left.eq(self._first), self._last.eq(self._first_last)]
