"""Benches of the SB_SPRAM256KA simulation model and of psc.hw.spram.SinglePortRAM.

Run from tests/test_spram.py.

- ``models_agree`` (top ``spram_models``): the project's model of the cell
  and Yosys's, side by side on the same inputs (outputs ``ours`` and
  ``theirs``); a random sequence of reads, masked writes, idle cycles,
  standby, sleep and power-off, with every output compared, unknown bits
  included, before and after each clock edge.
- ``ram_random`` (top ``spram_ram``): a SinglePortRAM (``rdata``) against a
  dictionary, and, when the top has one, a generic SinglePortRAM on the same
  inputs (``rdata_generic``). ``PSC_SPRAM_DEPTH`` is the RAM's depth.

``PSC_SEED`` (or cocotb's seed) makes a run reproducible (:func:`tb.bench.bench_rng`).
"""

import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from tb.bench import bench_rng

CELL_WORDS = 16384


def _pool(rng, size, n, *edges):
    """``n`` distinct addresses below ``size``, with ``edges`` among them: a small pool
    makes reads find what earlier writes left."""
    pool = {e for e in edges if 0 <= e < size}
    while len(pool) < min(n, size):
        pool.add(int(rng.integers(0, size)))
    return sorted(pool)


@cocotb.test()
async def models_agree(dut):
    rng = bench_rng()
    cocotb.start_soon(Clock(dut.CLOCK, 10, unit="ns").start())
    addresses = _pool(rng, CELL_WORDS, 24, 0, 1, CELL_WORDS - 1)
    masks = [0x0, 0xF, 0xF, 0xF, 0x1, 0x2, 0x4, 0x8, 0x5, 0xA, 0x3, 0xC]
    inputs = dict(ADDRESS=0, DATAIN=0, MASKWREN=0, WREN=0, CHIPSELECT=0, STANDBY=0, SLEEP=0,
                  POWEROFF=1)
    history = []
    known_reads = 0
    asleep = off = 0

    def compare(when):
        ours, theirs = str(dut.ours.value), str(dut.theirs.value)
        if ours != theirs:
            recent = "\n".join(history[-8:])
            raise AssertionError(f"{when}: DATAOUT {ours} (ours) != {theirs} (Yosys's); "
                                 f"last inputs, oldest first:\n{recent}")

    for cycle in range(3000):
        await FallingEdge(dut.CLOCK)
        # Power states come in short runs, so the cell is mostly awake and
        # reads find what the writes left.
        if asleep == 0 and off == 0:
            r = rng.random()
            if r < 0.004:
                off = int(rng.integers(1, 4))
            elif r < 0.03:
                asleep = int(rng.integers(1, 4))
        inputs.update(
            ADDRESS=addresses[int(rng.integers(0, len(addresses)))],
            DATAIN=int(rng.integers(0, 1 << 16)),
            MASKWREN=masks[int(rng.integers(0, len(masks)))],
            WREN=int(rng.random() < 0.4),
            CHIPSELECT=int(rng.random() < 0.85),
            STANDBY=int(rng.random() < 0.03),
            SLEEP=int(asleep > 0),
            POWEROFF=int(off == 0),
        )
        asleep, off = max(asleep - 1, 0), max(off - 1, 0)
        for name, value in inputs.items():
            getattr(dut, name).value = value
        history.append(f"cycle {cycle}: " + " ".join(f"{k}={v:x}" for k, v in inputs.items()))
        await ReadOnly()
        compare(f"cycle {cycle}, before the edge")
        await RisingEdge(dut.CLOCK)
        await ReadOnly()
        compare(f"cycle {cycle}, after the edge")
        is_read = (inputs["CHIPSELECT"] and not inputs["WREN"] and not inputs["STANDBY"]
                   and not inputs["SLEEP"] and inputs["POWEROFF"])
        # Nibbles never written since the last power-off stay unknown in a word.
        known_reads += bool(is_read and "x" not in str(dut.ours.value).lower())
    # Reads of written words, not only unknowns and zeros, must have been compared.
    assert known_reads > 300, f"only {known_reads} reads returned a fully known word"
    dut._log.info("3000 cycles agree; %d reads returned a fully known word", known_reads)


@cocotb.test()
async def ram_random(dut):
    rng = bench_rng()
    depth = int(os.environ["PSC_SPRAM_DEPTH"])
    width = len(dut.rdata)
    generic = hasattr(dut, "rdata_generic")
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 0
    dut.en.value = 0
    # Both ends of every bank, so the bank select is exercised at its edges.
    edges = [b + d for b in range(0, depth, CELL_WORDS) for d in (0, CELL_WORDS - 1)]
    addresses = _pool(rng, depth, 40, depth - 1, *edges)
    mem = {}
    # What rdata must show; None while undefined (before a read of a written
    # word, and after a write on the SPRAM kind).
    expect = expect_generic = None
    checked = 0
    for cycle in range(2500):
        await FallingEdge(dut.clk)
        addr = addresses[int(rng.integers(0, len(addresses)))]
        # Any width: numpy's integers stop at 64 bits, signed.
        wdata = int.from_bytes(rng.bytes((width + 7) // 8), "little") & ((1 << width) - 1)
        en, we = int(rng.random() < 0.8), int(rng.random() < 0.4)
        dut.addr.value, dut.wdata.value, dut.en.value, dut.we.value = addr, wdata, en, we
        await RisingEdge(dut.clk)
        await ReadOnly()
        if en and we:
            mem[addr] = wdata
            expect = None
        elif en:
            expect = expect_generic = mem.get(addr)
        for name, want in (("rdata", expect), ("rdata_generic", expect_generic)):
            if want is None or (name == "rdata_generic" and not generic):
                continue
            got = getattr(dut, name).value
            op = "read" if en and not we else ("write" if en else "idle")
            assert got.is_resolvable and got.to_unsigned() == want, (
                f"cycle {cycle} ({op} at {addr:#x}): {name} = {got}, expected {want:#x}")
            checked += 1
        if generic and expect is not None:
            assert dut.rdata.value == dut.rdata_generic.value, f"cycle {cycle}: kinds differ"
    assert checked > 1000, f"only {checked} words checked"
    dut._log.info("2500 cycles, %d words checked, %d addresses written", checked, len(mem))
