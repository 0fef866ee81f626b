"""Valid/ready stream driver and monitor for cocotb 2.

Both follow the stream contract of ``amaranth.lib.stream``: a beat transfers at
a rising clock edge where ``valid`` and ``ready`` are both high; once a source
raises ``valid`` it keeps ``valid`` and the payload unchanged until the beat
transfers. The monitor checks that contract on every cycle.

Timing discipline (the same in every coroutine here): drive right after a
rising edge, sample in ``ReadOnly`` of the same cycle, act on the sample at the
next edge. The sample is then exactly what the flip-flops see at that edge, on
Icarus and on Verilator alike.

A *pause generator* is any iterator of truthy/falsy values, consumed one per
cycle (``True`` = pause): for a source, do not start a new beat this cycle (a
beat already on the wires is never withdrawn); for a sink, hold ``ready`` low.
"""

import itertools
import random
from collections import deque

import cocotb
from cocotb.simtime import get_sim_time
from cocotb.triggers import ReadOnly, RisingEdge

__all__ = ["StreamProtocolError", "read_int", "random_pause", "cycle_pause", "no_pause",
           "StreamDriver", "StreamMonitor", "play_job"]


class StreamProtocolError(AssertionError):
    """A stream broke the valid/ready contract."""


def read_int(handle, what=None):
    """The unsigned integer value of ``handle``; raises naming the signal if it holds X or Z."""
    value = handle.value
    try:
        return int(value)
    except ValueError:
        raise StreamProtocolError(
            f"{what or handle._name} is {value!s}, not a 0/1 value") from None


def random_pause(probability, rng=None):
    """Pause with ``probability`` per cycle (``rng``: a ``random.Random``; default the seeded module RNG)."""
    if not 0 <= probability <= 1:
        raise ValueError(f"probability must be within [0, 1], not {probability!r}")
    rng = rng or random
    while True:
        yield rng.random() < probability


def cycle_pause(pattern=(1, 1, 1, 0)):
    """Repeat ``pattern`` forever (the verilog-axis ``cycle_pause``)."""
    return itertools.cycle(pattern)


def no_pause():
    return itertools.repeat(False)


def _as_dict(payload):
    return payload if isinstance(payload, dict) else {None: payload}


class _Endpoint:
    def __init__(self, clock, valid, payload, ready, reset, name):
        self.clock = clock
        self.valid = valid
        self.ready = ready
        self.reset = reset
        self._single = not isinstance(payload, dict)
        self.payload = _as_dict(payload)
        self.name = name or valid._name
        self._pause = no_pause()

    def _in_reset(self):
        return self.reset is not None and read_int(self.reset) == 1

    def _paused(self):
        return bool(next(self._pause, False))

    def _unwrap(self, beat):
        return beat[None] if self._single else beat

    def _wrap(self, beat):
        return {None: beat} if self._single else beat


class StreamDriver(_Endpoint):
    """Drive ``valid`` and the payload signals of a stream input of the DUT.

    Parameters
    ----------
    clock, valid : signal handles
    payload : handle, or dict ``name -> handle``
        With one handle a beat is an int; with a dict a beat is a dict of ints
        with the same keys.
    ready : handle, optional
        Sampled to decide when a beat transfers (``None``: always ready).
    reset : handle, optional
        Active-high synchronous reset: while it is high no beat transfers and the
        beat on the wires is dropped.
    idle : callable, optional
        Returns a beat to put on the payload wires while ``valid`` is low (for
        example random data, to show the DUT ignores it). Default: keep the
        last value.

    Attributes
    ----------
    count : int
        Beats transferred so far.
    """

    def __init__(self, clock, valid, payload, ready=None, *, reset=None, idle=None, name=None):
        super().__init__(clock, valid, payload, ready, reset, name)
        self.idle_value = idle
        self.queue = deque()
        self.count = 0
        self.sent = []            # (index, beat) of transferred beats, if record=True
        self.record = False
        self._current = None
        self._flush = False
        self.valid.value = 0
        self._task = cocotb.start_soon(self._run())

    def set_pause_generator(self, generator=None):
        self._pause = generator if generator is not None else no_pause()

    def send(self, beat):
        """Queue one beat (an int, or a dict of ints, see ``payload``)."""
        self.queue.append(beat)

    def send_many(self, beats):
        self.queue.extend(beats)

    def clear(self):
        """Drop every queued beat and, at the next edge, the beat on the wires."""
        self.queue.clear()
        self._flush = True

    @property
    def idle(self):
        return not self.queue and self._current is None

    async def wait(self):
        """Return once every queued beat has transferred."""
        while not self.idle:
            await RisingEdge(self.clock)

    def _drive(self, beat):
        for key, value in self._wrap(beat).items():
            self.payload[key].value = value

    async def _run(self):
        accepted = False
        while True:
            await RisingEdge(self.clock)
            if self._current is not None and accepted:
                if self.record:
                    self.sent.append((self.count, self._current))
                self.count += 1
                self._current = None
            if self._flush:
                self._current = None
                self._flush = False
            if self._current is None and self.queue and not self._paused():
                self._current = self.queue.popleft()
            if self._current is not None:
                self._drive(self._current)
                self.valid.value = 1
            else:
                self.valid.value = 0
                if self.idle_value is not None:
                    self._drive(self.idle_value())
            await ReadOnly()
            if self._in_reset():
                # The DUT and its upstream both reset at this edge: the beat is gone.
                accepted = False
                self._flush = True
            else:
                accepted = self._current is not None and (
                    self.ready is None or read_int(self.ready, f"{self.name} ready") == 1)


class StreamMonitor(_Endpoint):
    """Receive a stream output of the DUT, apply backpressure and check the stream contract.

    Parameters
    ----------
    clock, valid, payload, reset : as for :class:`StreamDriver`
    ready : handle, optional
        The DUT's ready input. Driven by this monitor from its backpressure
        generator when ``drive_ready`` (default), otherwise only sampled.
    callback : callable, optional
        Called with every received beat (an int, or a dict of ints). Without
        one, beats accumulate in :attr:`queue`.
    check : bool
        Raise :class:`StreamProtocolError` when ``valid`` drops, or the payload
        changes, before the beat transferred (default on).

    Attributes
    ----------
    count : int
        Beats received.
    stalls : int
        Cycles with ``valid`` high and ``ready`` low (to show backpressure happened).
    """

    def __init__(self, clock, valid, payload, ready=None, *, reset=None, drive_ready=True,
                 callback=None, check=True, name=None):
        super().__init__(clock, valid, payload, ready, reset, name)
        self.drive_ready = drive_ready and ready is not None
        self.callback = callback
        self.check = check
        self.queue = deque()
        self.count = 0
        self.stalls = 0
        self.cycle = 0
        self.errors = []
        if self.drive_ready:
            self.ready.value = 0
        self._task = cocotb.start_soon(self._run())

    def set_pause_generator(self, generator=None):
        self._pause = generator if generator is not None else no_pause()

    def clear(self):
        self.queue.clear()

    def _read_payload(self):
        return self._unwrap({k: read_int(h, f"{self.name} payload {h._name}")
                             for k, h in self.payload.items()})

    def _violation(self, message):
        err = StreamProtocolError(f"{self.name}: stream contract broken at cycle {self.cycle} "
                                  f"(sim time {get_sim_time('ns')} ns): {message}")
        self.errors.append(err)
        if self.check:
            raise err

    async def _run(self):
        held = None  # payload of a beat that was offered and not taken last cycle
        while True:
            await RisingEdge(self.clock)
            self.cycle += 1
            if self.drive_ready:
                self.ready.value = 0 if self._paused() else 1
            await ReadOnly()
            if self._in_reset():
                held = None
                continue
            valid = read_int(self.valid, f"{self.name} valid")
            ready = 1 if self.ready is None else read_int(self.ready, f"{self.name} ready")
            payload = self._read_payload() if valid else None
            if held is not None:
                if not valid:
                    self._violation("valid fell before the beat was accepted "
                                    f"(payload was {_fmt(held)})")
                elif payload != held:
                    self._violation(f"payload changed from {_fmt(held)} to {_fmt(payload)} "
                                    "while valid was high and ready low")
            if valid and ready:
                self.count += 1
                if self.callback is not None:
                    self.callback(payload)
                else:
                    self.queue.append(payload)
            if valid and not ready:
                self.stalls += 1
            held = payload if valid and not ready else None


def _fmt(beat):
    if isinstance(beat, dict):
        return "{" + ", ".join(f"{k}={v:#x}" for k, v in beat.items()) + "}"
    return f"{beat:#x}"


async def play_job(dut, body, key):
    """The frame of a host-driven bench: read the job (JSON at ``PSC_JOB``), ``await
    body(dut, job, results)``, write ``{key: results}`` to ``PSC_RESULT``; on any failure
    write what went wrong (and the results so far) there too, then raise."""
    import json
    import os
    import traceback
    job = json.loads(open(os.environ["PSC_JOB"]).read())
    result_path = os.environ["PSC_RESULT"]
    results = []
    try:
        await body(dut, job, results)
    except BaseException as e:
        with open(result_path, "w") as f:
            json.dump({"failure": f"{type(e).__name__}: {e}\n{traceback.format_exc()}",
                       key: results}, f)
        raise
    with open(result_path, "w") as f:
        json.dump({key: results}, f)
