"""Host side of :class:`psc.hw.core.PSCConvCore`: scheduler, simulation and the layer API.

* :mod:`psc.host.scheduler`: :func:`plan_layer` checks a layer against a
  build and cuts it into :class:`Tile` commands (:class:`LayerPlan`);
  :class:`LayerError` is raised before anything is sent;
* :mod:`psc.host.sim`: the one path that builds and runs cocotb benches on
  Icarus or Verilator (:func:`build_simulation` for the core);
* :mod:`psc.host.api`: :func:`run_layer`, :func:`run_layers` and
  :func:`run_plans` on a simulator or, through :mod:`psc.host.serial_link`,
  on a board;
* :mod:`psc.host.core_bench` and :mod:`psc.host.cocotb_stream`: the cocotb
  side of the simulations; :mod:`psc.host.bench`: ``psc bench``.
"""

from psc.host.scheduler import LayerError, LayerPlan, Tile, encode_command, plan_layer
from psc.host.sim import TARGETS, TOPLEVEL, build_simulation, generate_verilog
from psc.host.api import SERIAL_PREFIX, run_layer, run_layers, run_plans

__all__ = ["LayerError", "Tile", "LayerPlan", "plan_layer", "encode_command", "run_plans",
           "run_layer", "run_layers", "build_simulation", "generate_verilog", "TARGETS",
           "TOPLEVEL", "SERIAL_PREFIX"]

