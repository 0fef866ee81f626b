"""cocotb verification library and benches of the PSC gateware.

- :mod:`psc.host.cocotb_stream`: valid/ready stream driver and monitor (checks the stream contract);
- :mod:`tb.scoreboard`: in-order scoreboard that reports the inputs of a mismatch;
- :mod:`tb.psc_model`: stimulus, expected values (``psc.model.golden``) and packing (``psc.model.packing``);
- :mod:`tb.bench`: clock/reset/stall scaffolding for a DUT's ``TB`` class;
- :mod:`tb.runner`: ``run_cocotb`` on Icarus or Verilator from pytest;
- :mod:`tb.formal`: SymbiYosys (YoWASP) runs of Amaranth formal harnesses;
- ``tb.test_*``: the cocotb benches (run by ``tests/test_cocotb_primitives.py``).

Waveforms: ``PSC_WAVES=1`` (see :mod:`tb.runner`).
"""
