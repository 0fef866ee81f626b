"""A single-port RAM: the iCE40 UltraPlus SPRAM cells (SB_SPRAM256KA), or a generic memory."""

from pathlib import Path

from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from psc.config import MAX_VALUE_WIDTH
from psc.model.checks import check_choice, check_int

__all__ = ["SinglePortRAM", "KINDS", "SPRAM_WIDTH", "SPRAM_DEPTH", "UP5K_SPRAMS", "spram_cells",
           "sb_spram256ka_sim_model"]

#: Implementations :class:`SinglePortRAM` accepts as ``kind``.
KINDS = ("generic", "spram")
#: Bits of a SB_SPRAM256KA word.
SPRAM_WIDTH = 16
#: Words of a SB_SPRAM256KA.
SPRAM_DEPTH = 16384
#: SB_SPRAM256KA cells of an iCE40 UltraPlus (UP3K and UP5K alike).
UP5K_SPRAMS = 4

SIM_MODEL_PATH = Path(__file__).resolve().parent / "sim_models" / "sb_spram256ka_sim.v"


def _ceil_div(a, b):
    return -(-a // b)


def spram_cells(width, depth):
    """SB_SPRAM256KA cells a ``width`` x ``depth`` :class:`SinglePortRAM` of kind ``"spram"`` takes.

    ``ceil(width / 16)`` cells side by side for the width, times
    ``ceil(depth / 16384)`` banks for the depth. A configuration fits an
    iCE40 UltraPlus when the cells of all its SPRAM memories together are at
    most :data:`UP5K_SPRAMS`.
    """
    check_int("width", width, 1)
    check_int("depth", depth, 1)
    return _ceil_div(width, SPRAM_WIDTH) * _ceil_div(depth, SPRAM_DEPTH)


class SinglePortRAM(wiring.Component):
    """``depth`` words of ``width`` bits behind one port that reads or writes each cycle.

    Port protocol (one operation per cycle, all in the ``sync`` domain):

    * ``en`` high and ``we`` high: ``wdata`` is written at ``addr``.
    * ``en`` high and ``we`` low: the word at ``addr`` appears on ``rdata``
      in the next cycle (read latency one cycle; one read per cycle).
    * ``en`` low: nothing happens; ``rdata`` keeps the last word read.

    Throughput: one read or one write per cycle, never both. ``addr`` must
    be below ``depth``. After a write ``rdata`` is undefined until the next
    read: the generic kind keeps the last word read, while Lattice does not
    say what the SPRAM cell outputs during a write and Yosys's model of the
    cell, like the project's (:func:`sb_spram256ka_sim_model`), makes it
    unknown. As a read and a write never share a cycle, there is no
    read/write collision rule. The contents start undefined (the SPRAM
    cells have no initial value; the generic kind happens to start at zero)
    and reset touches neither the contents nor ``rdata``.

    Kinds:

    * ``"spram"``: ``ceil(width / 16)`` SB_SPRAM256KA cells side by side
      (the last one's unused bits written as zero) per bank of 16384 words,
      and ``ceil(depth / 16384)`` banks; ``addr[14:]`` picks the bank whose
      cells are selected, and a register holding the bank of the last read
      picks the bank whose output is ``rdata``, so ``rdata`` holds while
      ``en`` is low as each cell's output does. The power-saving inputs are tied off (``STANDBY`` and
      ``SLEEP`` low, ``POWEROFF`` high, as it is active low). Needs at most
      :data:`UP5K_SPRAMS` cells (:func:`spram_cells`). The Amaranth simulator
      cannot run it: simulate its Verilog with :func:`sb_spram256ka_sim_model`
      on Icarus or Verilator.
    * ``"generic"``: an :class:`amaranth.lib.memory.Memory` with one write
      port and one non-transparent read port, enabled by ``en & we`` and
      ``en & ~we``; for the Amaranth simulator and other FPGAs.

    Parameters
    ----------
    width : int
        Bits of a word, at least 1 (at most Amaranth's widest value,
        :data:`psc.config.MAX_VALUE_WIDTH`).
    depth : int
        Words, at least 1; at most 65536 (four banks) for ``"spram"``.
    kind : str
        One of :data:`KINDS`.

    Attributes
    ----------
    addr : Signal(range(depth)), in
    wdata : Signal(width), in
    we : Signal(1), in
        Write (high) or read (low) when ``en`` is high.
    en : Signal(1), in
    rdata : Signal(width), out
        The word of the last read, from the cycle after it.
    """

    #: Cycles from a read's ``addr`` and ``en`` to its word on ``rdata``.
    LATENCY = 1

    def __init__(self, width, depth, *, kind="generic"):
        self._width = check_int("width", width, 1, MAX_VALUE_WIDTH)
        self._kind = check_choice("kind", kind, KINDS)
        if kind == "spram":
            self._depth = check_int("depth", depth, 1, UP5K_SPRAMS * SPRAM_DEPTH)
            cells = spram_cells(width, depth)
            if cells > UP5K_SPRAMS:
                raise ValueError(
                    f"width={width} x depth={depth} needs {cells} SB_SPRAM256KA cells with "
                    f"kind='spram', and an iCE40 UltraPlus has {UP5K_SPRAMS}; "
                    f"ceil(width / {SPRAM_WIDTH}) * ceil(depth / {SPRAM_DEPTH}) must be at "
                    f"most {UP5K_SPRAMS}")
        else:
            self._depth = check_int("depth", depth, 1)
        super().__init__({
            "addr": In(range(self._depth)),
            "wdata": In(width),
            "we": In(1),
            "en": In(1),
            "rdata": Out(width),
        })

    @property
    def width(self):
        return self._width

    @property
    def depth(self):
        return self._depth

    @property
    def kind(self):
        return self._kind

    @property
    def latency(self):
        """Cycles from a read to its word on ``rdata``: :attr:`LATENCY` (1)."""
        return self.LATENCY

    @property
    def cells(self):
        """SB_SPRAM256KA cells instantiated: :func:`spram_cells` for ``"spram"``, 0 otherwise."""
        return spram_cells(self._width, self._depth) if self._kind == "spram" else 0

    def elaborate(self, platform):
        if self._kind == "generic":
            return self._elaborate_generic()
        return self._elaborate_spram()

    def _elaborate_generic(self):
        m = Module()
        m.submodules.mem = mem = Memory(shape=self._width, depth=self._depth, init=[])
        wp = mem.write_port()
        rp = mem.read_port()
        m.d.comb += [
            wp.addr.eq(self.addr),
            wp.data.eq(self.wdata),
            wp.en.eq(self.en & self.we),
            rp.addr.eq(self.addr),
            # Disabled on a write, the port keeps its word, as the cells keep
            # theirs while not selected.
            rp.en.eq(self.en & ~self.we),
            self.rdata.eq(rp.data),
        ]
        return m

    def _elaborate_spram(self):
        m = Module()
        columns = _ceil_div(self._width, SPRAM_WIDTH)
        banks = _ceil_div(self._depth, SPRAM_DEPTH)
        address = Signal(14)
        datain = Signal(columns * SPRAM_WIDTH)
        m.d.comb += [address.eq(self.addr), datain.eq(self.wdata)]
        bank = self.addr[14:]
        bank_outs = []
        for b in range(banks):
            select = Signal(name=f"select_{b}")
            m.d.comb += select.eq(self.en if banks == 1 else self.en & (bank == b))
            outs = []
            for c in range(columns):
                dataout = Signal(SPRAM_WIDTH, name=f"dataout_{b}_{c}")
                m.submodules[f"spram_{b}_{c}"] = Instance(
                    "SB_SPRAM256KA",
                    i_ADDRESS=address,
                    i_DATAIN=datain[c * SPRAM_WIDTH:(c + 1) * SPRAM_WIDTH],
                    i_MASKWREN=Const(0b1111, 4),
                    i_WREN=self.we,
                    i_CHIPSELECT=select,
                    i_CLOCK=ClockSignal(),
                    i_STANDBY=Const(0, 1),
                    i_SLEEP=Const(0, 1),
                    i_POWEROFF=Const(1, 1),
                    o_DATAOUT=dataout,
                )
                outs.append(dataout)
            bank_outs.append(Cat(*outs))
        if banks == 1:
            m.d.comb += self.rdata.eq(bank_outs[0])
            return m
        # The bank of the last read, not of the current address: rdata must
        # keep that read's word while en is low or the port writes. Reset
        # leaves it alone, as it leaves the cells' outputs.
        read_bank = Signal(range(banks), reset_less=True)
        with m.If(self.en & ~self.we):
            m.d.sync += read_bank.eq(bank)
        with m.Switch(read_bank):
            for b, out in enumerate(bank_outs):
                with m.Case(b):
                    m.d.comb += self.rdata.eq(out)
        return m


def sb_spram256ka_sim_model():
    """Verilog text of the project's SB_SPRAM256KA model (``psc/hw/sim_models/sb_spram256ka_sim.v``).

    Lets Icarus and Verilator simulate a design that instantiates the cell
    (:class:`SinglePortRAM` of kind ``"spram"``). Written from Lattice's
    description of the cell (TN1314), checked cycle by cycle against the model
    Yosys ships (``share/ice40/cells_sim.v``), and clean under Verilator's
    ``-Wall``. Read latency one cycle,
    nibble write mask ``MASKWREN``, ``CHIPSELECT`` gating, ``DATAOUT``
    unknown after a write and in standby, 0 in sleep and power-off, the
    contents lost on power-off.
    """
    return SIM_MODEL_PATH.read_text()
