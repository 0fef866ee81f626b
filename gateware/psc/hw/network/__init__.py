"""Network mode's gateware: the activation memory and the units that move a tile's data
between it and the core (:mod:`psc.host.program` defines what they do, value by value).

* :class:`~psc.hw.network.act_memory.ActivationMemory`: lane words in one or two banks;
* :class:`~psc.hw.network.gather.Gather`: a tile's input window into the core's ``act_in``;
* :class:`~psc.hw.network.scatter.Scatter`: the core's output beats into a tensor's region;
* :class:`~psc.hw.network.op_unit.OpUnit`: residual add and global average pooling;
* :class:`~psc.hw.network.unroll.Unroll`: a stem's input unrolled (im2col);
* :class:`~psc.hw.network.engine.NetworkEngine`: the core, these units and the stores of a
  program's commands, weights and parameters, with the sequencer that runs it.
"""

from psc.hw.network.act_memory import ActivationMemory
from psc.hw.network.gather import Gather, gather_layout
from psc.hw.network.scatter import Scatter, scatter_layout
from psc.hw.network.op_unit import OpUnit, op_layout
from psc.hw.network.unroll import Unroll, unroll_layout
from psc.hw.network.engine import EngineConfig, NetworkEngine, instruction_layout

__all__ = ["ActivationMemory", "Gather", "gather_layout", "Scatter", "scatter_layout",
           "OpUnit", "op_layout", "Unroll", "unroll_layout", "EngineConfig", "NetworkEngine",
           "instruction_layout"]
