"""Running layers on the core: :func:`run_layer`, :func:`run_layers`, :func:`run_plans`.

The same plans (:func:`psc.host.scheduler.plan_layer`) feed the simulators
(``target`` = ``"verilator"`` or ``"icarus"``, through :mod:`psc.host.sim`
and the cocotb bench :mod:`psc.host.core_bench`) and a board behind the UART
bridge (``target`` = ``"serial:PORT"`` or ``"serial:PORT@BAUD"``, through
:mod:`psc.host.serial_link`).
"""

from psc.hw.core import CoreConfig
from psc.host.scheduler import plan_layer
from psc.host.sim import TARGETS, run_job

__all__ = ["SERIAL_PREFIX", "run_plans", "run_layers", "run_layer"]

#: Prefix of a board target: ``"serial:PORT[@BAUD]"`` (:mod:`psc.host.serial_link`).
SERIAL_PREFIX = "serial:"


def _check_target(target):
    if target not in TARGETS and not (isinstance(target, str) and target.startswith(SERIAL_PREFIX)):
        raise ValueError(f"target must be one of {TARGETS} or 'serial:PORT[@BAUD]', "
                         f"not {target!r}")


def run_plans(plans, *, config=None, target="verilator", stall=0.0, seed=0, waves=None,
              keep_dir=False, max_cycles=None):
    """Run the tiles of ``plans`` (a list of lists of :class:`~psc.host.scheduler.Tile`) in one
    simulation.

    Returns, per plan, the list of per-tile results: ``outputs`` (output
    words), ``error``, ``done``, ``total``, ``compute``, ``stall`` and the
    number of beats each input stream accepted. ``waves`` defaults to
    ``PSC_WAVES`` (:func:`psc.host.sim.waves_requested`).
    """
    job = {"seed": int(seed), "stall": float(stall), "max_cycles": max_cycles,
           "tiles": [t.as_json() for tiles in plans for t in tiles]}
    res = run_job(job, config=config, target=target, waves=waves, keep_dir=keep_dir)
    out, i = [], 0
    for tiles in plans:
        out.append(res["tiles"][i:i + len(tiles)])
        i += len(tiles)
    return out


def _counters(plan, results):
    cc = plan.config
    tot = sum(r["total"] for r in results)
    ideal = plan.macs / (cc.rows * cc.lanes)
    return {"total": tot, "compute": sum(r["compute"] for r in results),
            "stall": sum(r["stall"] for r in results), "tiles": len(results),
            "macs": plan.macs, "ideal": ideal, "utilisation": ideal / tot if tot else 0.0,
            "per_tile": [{k: r[k] for k in ("total", "compute", "stall")} for r in results]}


def run_layers(layers, *, config=None, target="verilator", stall=0.0, seed=0, waves=None):
    """Run several layers (dicts of :func:`run_layer` arguments) in one simulation.

    Returns a list of ``(y, counters)``. With a ``"serial:..."`` target the
    board's build is checked against ``config`` (or, when ``config`` is None,
    taken from the board) and ``stall``/``seed``/``waves`` are ignored.
    """
    _check_target(target)
    link = None
    if target.startswith(SERIAL_PREFIX):
        from psc.host.serial_link import SerialLink
        link = SerialLink.open(target, config)
        cc = link.config
    else:
        cc = config or CoreConfig()
    try:
        plans = []
        for layer in layers:
            layer = dict(layer)
            args = [layer.pop(n) for n in ("x", "w_pos", "w_neg", "bias", "mult", "shift")]
            plans.append(plan_layer(*args, config=cc, **layer))
        if link is not None:
            results = link.run_plans([p.tiles for p in plans])
        else:
            results = run_plans([p.tiles for p in plans], config=cc, target=target,
                                stall=stall, seed=seed, waves=waves)
    finally:
        if link is not None:
            link.close()
    out = []
    for plan, res in zip(plans, results):
        for r in res:
            if r["error"] or not r["done"]:
                raise RuntimeError(f"the core refused or did not finish a tile: {r}")
        out.append((plan.assemble(res), _counters(plan, res)))
    return out


def run_layer(x, w_pos, w_neg, bias, mult, shift, *, stride=1, padding=0, groups=1, relu=False,
              config=None, target="verilator", stall=0.0, seed=0, waves=None):
    """Run one PSC layer on the core; returns ``(y, counters)``.

    Parameters
    ----------
    x : int array ``(Cin, H, W)``
    w_pos, w_neg : int arrays ``(Cout, Cin // groups, K, K)`` (``W+``, ``W-``)
    bias : int array ``(Cout,)`` or None
    mult, shift : int or int array ``(Cout,)``
        Requantisation (:func:`psc.model.golden.requantize`).
    stride, padding, groups, relu
        As in :func:`psc.model.golden.psc_conv2d` / :func:`psc.model.golden.requantize`;
        ``groups`` is 1 or ``Cin`` (depthwise, ``Cout == Cin``).
    config : psc.config.CoreConfig
        The build (default ``CoreConfig()``; for a board, the board's own).
    target : ``"verilator"``, ``"icarus"`` or ``"serial:PORT[@BAUD]"``
        A simulator, or a board running the UART bridge (:mod:`psc.flow.board`,
        ``psc build``) on serial port ``PORT`` (default baud
        :data:`psc.presets.DEFAULT_BAUD`).
    stall : float
        Probability of a random pause on every stream, every beat (tests).
    seed : int
        Seed of the random pauses.
    waves : bool, optional
        Record waveforms (default: ``PSC_WAVES``); the run directory is kept.

    Returns
    -------
    y : int64 array ``(Cout, Ho, Wo)``, requantised activations
    counters : dict
        ``total``, ``compute``, ``stall`` cycles summed over the tiles,
        ``tiles``, ``macs``, ``ideal`` (``macs / (rows * lanes)``),
        ``utilisation`` (``ideal / total``), ``per_tile``.

    Raises
    ------
    LayerError
        When the build cannot run the layer (before anything is sent).
    """
    layer = dict(x=x, w_pos=w_pos, w_neg=w_neg, bias=bias, mult=mult, shift=shift,
                 stride=stride, padding=padding, groups=groups, relu=relu)
    return run_layers([layer], config=config, target=target, stall=stall, seed=seed,
                      waves=waves)[0]
