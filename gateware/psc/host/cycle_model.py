"""The core's cycles, predicted from a plan without simulating it.

:func:`tile_cycles` predicts the cycles :class:`~psc.hw.core.PSCConvCore`
is busy with one command when no stream pauses (``cycles_total`` of its
counters), from the command's fields and the number of beats of each
stream; :func:`plan_cycles` sums a :class:`~psc.host.scheduler.LayerPlan`,
:func:`layers_cycles` a list of layers. ``psc explore`` uses it to rank
builds without a simulator per point; ``tests/test_cycle_model.py`` keeps
it within 2% of the simulated core over whole networks.

The model follows the core's docstring, stage by stage:

* setup: the derived sizes by the shift-and-add multipliers, their chains
  side by side (:func:`~psc.hw.core.setup.setup_cycles`);
* loading: the weights and parameters arrive on their own streams at one
  beat per cycle; the first beat waits for the longer of the two (and for
  all of the tile's input on a ``fmap_ram="spram"`` build, which loads
  before it computes), or with ``early_weights`` for the parameters, the
  first output pixel then ending no sooner than its weights have arrived;
* compute, output pixel by output pixel: a pixel starts when the input rows
  its output row needs have arrived or the input words up to the next
  pixel's window (a row's last pixel: the next row's second pixel's), and
  lasts the longer of its MAC beats and the requantiser's time for its
  output beats (``Requantizer.rate_of`` cycles each), as the array stalls
  behind a slower requantiser (a depthwise layer on a ``depthwise="pixels"``
  or ``"shifted"`` build: output row by output row, on its input rows);
* the pipeline's latency after the last beat (the MAC array's, the
  requantiser's for a command that makes outputs, the read register's) and
  a few cycles of handshakes.

What it leaves out: stalls of the streams (the host's or the board link's
pace), which the simulator's ``stall`` adds.
"""

from psc.hw.core import KIND_DEPTHWISE
from psc.hw.core.layouts import output_groups
from psc.hw.core.setup import setup_cycles
from psc.hw.pe import pe_latency
from psc.hw.requantize import Requantizer

__all__ = ["tile_cycles", "tiles_cycles", "plan_cycles", "layers_cycles"]

# Cycles of a command outside its setup, loads, beats and pipeline: the
# command's handshakes and the end of command (measured on the simulated
# core); the SPRAM input buffer adds its load-to-compute turnaround.
_HANDSHAKES = 9
_SPRAM_TURNAROUND = 4


def tile_cycles(config, fields, n_weights, n_params, n_acts, n_out):
    """Predicted ``cycles_total`` of one command of ``config`` (a
    :class:`~psc.config.CoreConfig`) with ``fields`` (the scheduler's
    :attr:`Tile.fields`), ``n_weights`` weight blocks, ``n_params``
    parameter beats, ``n_acts`` input words and ``n_out`` output beats."""
    pe = config.pe
    rows, k, stride = pe.rows, fields["k"], fields["stride"]
    depthwise = fields["kind"] == KIND_DEPTHWISE
    # blocks of rows pixels: depthwise on a pixels or shifted build
    pixels = depthwise and pe.depthwise in ("pixels", "shifted") and rows > 1
    channels = depthwise and pe.depthwise == "channels"
    gin_e = 1 if depthwise else fields["gin"]
    out_cols = -(-fields["out_w"] // rows) if pixels else fields["out_w"]
    # a shifted build's kernel row spans the block's windows
    span = pe.kernel_span(k, stride) if depthwise else k
    row_beats = out_cols * fields["gout"] * k * span * gin_e
    gout_o = output_groups(config, fields["kind"], fields["gout"])
    row_requant = fields["out_w"] * gout_o * Requantizer.rate_of(pe) if n_out else 0
    # per-lane accumulators drain lanes beats per reduction, one per cycle
    row_drain = (out_cols * fields["gout"] * pe.lanes
                 if pe.lane_accumulators and depthwise and rows > 1 else 0)
    # stream words per input row (a depthwise group on a channels build is rows lane words)
    words_per_row = fields["in_w"] * fields["gin"] * (rows if channels else 1)
    spram = config.fmap_ram == "spram"
    # with early weights the first output pixel reads the blocks as they arrive (two cycles
    # behind), and ends no sooner than the last of them
    early = config.early_weights
    t = max(0 if early else n_weights, n_params, n_acts if spram else 0)
    first = n_weights + 2 if early else 0
    row_time = max(row_beats, row_requant, row_drain)
    pixel_time = row_time / out_cols
    # stream words per input pixel
    word = words_per_row // fields["in_w"]
    for oy in range(fields["out_h"]):
        if spram:
            t = max(t + row_time, first)
            continue
        rows_needed = oy * stride - fields["pad_top"] + k
        full = min(fields["in_h"], rows_needed) * words_per_row
        if pixels:
            t = max(max(t, full) + row_time, first)
            continue
        # Pixel by pixel: each waits for its rows or for the words of the next pixel
        # (the row's last for the next row's second pixel's)
        base = ((rows_needed - 1) * words_per_row
                + min(fields["in_w"], k - fields["pad_left"]) * word)
        for ox in range(out_cols):
            ahead = (ox + 1) * stride * word if ox + 1 < out_cols else stride * (words_per_row
                                                                                 + word)
            t = max(max(t, min(full, base + ahead)) + pixel_time, first)
    latency = (pe_latency(pe) + (Requantizer.latency_of(pe) if n_out else 0)
               + 2 * config.read_register + config.sums_fifo + _HANDSHAKES
               + _SPRAM_TURNAROUND * spram)
    return setup_cycles(config, fields) + round(t) + latency


def tiles_cycles(config, tiles):
    """Predicted cycles of ``tiles`` (:class:`~psc.host.scheduler.Tile`) on ``config``."""
    return sum(tile_cycles(config, t.fields, len(t.weights), len(t.params), len(t.acts),
                           t.n_out) for t in tiles)


def plan_cycles(plan):
    """Predicted cycles of every tile of a :class:`~psc.host.scheduler.LayerPlan`."""
    return tiles_cycles(plan.config, plan.tiles)


def layers_cycles(layers, config):
    """Predicted cycles of each layer of ``layers`` (dicts of
    :func:`psc.host.run_layer` arguments) on ``config``; a list. Raises
    :class:`~psc.host.scheduler.LayerError` for a layer the build cannot run."""
    # the scheduler uses this model to choose between mappings: imported here, not above
    from psc.host.scheduler import plan_layer
    return [plan_cycles(plan_layer(**layer, config=config)) for layer in layers]
