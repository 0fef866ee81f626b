"""Every build configuration the project ships, in one table.

A *preset* is a named :class:`~psc.config.CoreConfig`: the MAC array's
:class:`~psc.config.PSCConfig` (``preset.pe``, which the primitive tops of
``psc generate`` use) and the core's buffers. Synthesis targets and boards
name a preset; nothing else spells out a configuration, so a board always
runs exactly the core its target's figures were measured on.

* ``default``: 8 lanes x 8 rows, 8-bit activations and weights, 32-bit
  accumulators, depthwise layers on the whole array (``depthwise="pixels"``).
  ``rtl/`` holds its primitives; ``psc demo`` and ``psc bench`` use it.
* ``tiny``: 4 x 4 with small buffers, so that the host scheduler cuts even
  small layers into several tiles and splits their reductions; the test
  build for tiling.
* ``ice40-up5k``: 6 lanes x 2 rows, 12 MACs per cycle on six of the
  UP5K's 8 SB_MAC16 (two signed 8x8 products each, hand-instantiated, fully
  registered), two registers in the adder tree, and one time-shared
  requantiser multiplying on the other two in their 16x16 mode
  (``requant_multiplier="ice40_mac16"``: one value per cycle, so an output
  beat of 2 channels takes 2 cycles). A requantiser in LUTs as fast costs
  far more LUTs, and a digit-serial one (8 cycles per beat at 4 bits of the
  multiplier) bounds every layer whose reduction is shorter than that:
  ``psc explore`` measures the alternatives. The input buffer is in three of the four
  single-ported SPRAMs (16384 lane words of 48 bits; a tile's input loads
  before it computes), the block RAMs hold the weights (256 blocks of 192
  bits: 12 block RAMs), the parameters, the partial sums (256 beats of two
  32-bit sums) and the UART bridge. The 256 weight blocks bound one
  command's reduction to 256 * 6 = 1536 products, so ``max_reduction=1536``
  and the 26-bit accumulator that holds them (``required_acc_width(8, 8,
  1536)``); longer reductions are split and summed in the partial-sum
  buffer. The input buffer's one port gives one lane word per cycle, so a
  depthwise layer runs with ``depthwise="shifted"``: the two rows compute two
  neighbouring output pixels from the same input word, each with its kernel
  shifted by the stride, on per-lane accumulators. A command computes while
  its weights load (``early_weights``), as on the ECP5, and carries its
  derived sizes (``given_sizes``), so the core has no size multipliers and,
  with the UART bridge, fits the iCEBreaker's logic cells.
* ``ecp5-25k``: 7 lanes x 4 rows on all 28 MULT18X18D of the LFE5U-25F,
  hand-instantiated with their registers (``ecp5_mult18``), one adder-tree
  stage, a register stage after the buffers, a pipelined requantiser per
  row, a partial-sum buffer of 512 beats. Depthwise layers run on the whole
  array with ``depthwise="channels"`` (28 channels of one pixel per beat;
  the input buffer is four banks of 1024 lane words); a command computes while
  its weights load (``early_weights``), so a fully connected layer is not
  bound by loading its weights before its MACs.

A board's network-mode build (:data:`ENGINES`) may change its preset's
array to suit whole networks; :func:`board_core` gives the core of either
mode, :func:`shipped_cores` every core a build ships.
"""

from psc.config import CoreConfig, PSCConfig

__all__ = ["PRESETS", "TARGETS", "BOARDS", "ENGINES", "OP_VALUES", "DEFAULT_BAUD", "preset",
           "board_engine", "board_core", "shipped_cores", "op_values", "given_sizes"]

PRESETS = {
    "default": CoreConfig(),
    "tiny": CoreConfig(pe=PSCConfig(lanes=4, rows=4), fmap_depth=64, weight_depth=64, param_depth=4,
                       psum_depth=16),
    "ice40-up5k": CoreConfig(pe=PSCConfig(lanes=6, rows=2, multiplier="ice40_dual8x8",
                                          tree_stages=2, requantizers=1,
                                          requant_multiplier="ice40_mac16",
                                          max_reduction=1536, acc_width=26,
                                          depthwise="shifted"),
                             fmap_depth=16384, weight_depth=256, param_depth=64, psum_depth=256,
                             fmap_ram="spram", early_weights=True, given_sizes=True),
    "ecp5-25k": CoreConfig(pe=PSCConfig(lanes=7, rows=4, multiplier="ecp5_mult18", tree_stages=1,
                                        depthwise="channels"),
                           fmap_depth=4096, weight_depth=512, param_depth=64, read_register=True,
                           psum_depth=512, early_weights=True),
}

#: Synthesis target -> the preset it ships (``psc synth``/``psc compare --target``).
TARGETS = {"ice40-up5k": "ice40-up5k", "ecp5-25k": "ecp5-25k"}

#: Board -> the synthesis target whose preset it runs (``psc build --board``).
BOARDS = {"icebreaker": "ice40-up5k", "ulx3s": "ecp5-25k"}

#: Board -> its network-mode build (``psc build --mode network``): ``core``, the changes to
#: the board's preset (:meth:`psc.config.CoreConfig.replace`), and the engine's memories
#: (:class:`psc.hw.network.EngineConfig`). The ULX3S's network engine runs 24 of its 28
#: MULT18X18D as 8 lanes x 3 rows: networks' channel counts are mostly multiples of 8,
#: which 7 lanes pad (16 channels take 21 lanes), while its tile mode keeps the preset's
#: 7 x 4 (``depthwise="channels"`` needs an input bank per row, so ``fmap_depth`` is
#: 3 x 1024; its weights are resident, so no command loads any: no ``early_weights``).
#: Its instructions carry their commands' derived sizes
#: (:attr:`~psc.hw.network.EngineConfig.given_sizes`): the command store has block RAM to
#: spare, and a command's setup then skips its multipliers. The iCEBreaker has
#: none: the UP5K's block RAM and SPRAM already hold its core's buffers.
ENGINES = {"ulx3s": {"core": {"lanes": 8, "rows": 3, "fmap_depth": 3072, "early_weights": False},
                     "act_depth": 1024, "cmd_depth": 64, "param_store_depth": 256,
                     "given_sizes": True}}
#: Target -> activations per beat of its network engine's add and pooling unit
#: (:attr:`psc.hw.network.EngineConfig.op_values`; 1 where not listed). The ECP5's
#: requantiser rows are pipelined, so a second value per beat halves the adds' time, for
#: two more LUT multipliers per value of an add; the UP5K's engine is already over its
#: device's logic cells.
OP_VALUES = {"ecp5-25k": 2}

#: UART baud rate of the board builds and the serial driver.
DEFAULT_BAUD = 1_000_000


def preset(name):
    """The :class:`~psc.config.CoreConfig` of preset, target or board ``name``."""
    if not isinstance(name, str):
        raise ValueError(f"preset must be one of {sorted(PRESETS) + sorted(BOARDS)}, "
                         f"not {name!r}")
    if name in BOARDS:
        name = BOARDS[name]
    if name in TARGETS:
        name = TARGETS[name]
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS) + sorted(BOARDS)}, not {name!r}")
    return PRESETS[name]


def board_engine(board):
    """The :class:`psc.hw.network.EngineConfig` of ``board``'s network-mode build."""
    from psc.hw.network.engine import EngineConfig
    if board not in ENGINES:
        raise ValueError(f"network mode is built for {', '.join(ENGINES)}, not for board "
                         f"{board!r}: its device has no memory left for the engine "
                         f"(use the tile-mode build)")
    memories = {k: v for k, v in ENGINES[board].items() if k != "core"}
    return EngineConfig(board_core(board, "network"), op_values=OP_VALUES.get(BOARDS[board], 1),
                        **memories)


def board_core(board, mode="tile"):
    """The :class:`~psc.config.CoreConfig` of ``board``'s build in ``mode`` (``"tile"``: its
    preset; ``"network"``: its preset with :data:`ENGINES`' changes)."""
    if mode not in ("tile", "network"):
        raise ValueError(f"mode must be 'tile' or 'network', not {mode!r}")
    base = preset(board)
    if mode == "network":
        if board not in ENGINES:
            board_engine(board)             # the error that says why
        return base.replace(**ENGINES[board].get("core", {}))
    return base


def shipped_cores():
    """Name -> :class:`~psc.config.CoreConfig` of every core a build ships: the presets, then
    each board's network-mode core (``"<board> network"``) where it differs from them."""
    cores = dict(PRESETS)
    for board in ENGINES:
        core = board_core(board, "network")
        if core not in cores.values():
            cores[f"{board} network"] = core
    return cores


def given_sizes(config):
    """The :attr:`~psc.hw.network.EngineConfig.given_sizes` of a network engine around core
    ``config``: True for a core whose commands carry their sizes
    (:attr:`~psc.config.CoreConfig.given_sizes`), else :data:`ENGINES`' of the board whose
    network-mode core is exactly that core; else False."""
    return config.given_sizes or any(config == board_core(board, "network") and ENGINES[board].get("given_sizes",
                                                                             False)
               for board in ENGINES)


def op_values(config):
    """The :attr:`~psc.hw.network.EngineConfig.op_values` of a network engine around core
    ``config``: :data:`OP_VALUES` of the target whose preset, or whose board's network-mode
    core, is exactly that core; else 1."""
    for board in ENGINES:
        if config == board_core(board, "network"):
            return OP_VALUES.get(BOARDS[board], 1)
    return next((OP_VALUES.get(t, 1) for t, p in TARGETS.items() if PRESETS[p] == config), 1)
