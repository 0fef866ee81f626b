"""Running layers on the core: :func:`run_layer`, :func:`run_layers`, :func:`run_plans`.

The same plans (:func:`psc.host.scheduler.plan_layer`) feed the simulators
(``target`` = ``"verilator"`` or ``"icarus"``, through :mod:`psc.host.sim`
and the cocotb bench :mod:`psc.host.core_bench`) and a board behind the UART
bridge (``target`` = ``"serial:PORT"`` or ``"serial:PORT@BAUD"``, through
:mod:`psc.host.serial_link`).
"""

from psc.hw.core import CoreConfig
from psc.host.scheduler import LayerError, plan_layer
from psc.host.sim import TARGETS, run_job
from psc.model.checks import BadTypeError, check_bool, check_int, check_real, show

__all__ = ["SERIAL_PREFIX", "LAYER_ARGS", "LAYER_OPTIONS", "run_plans", "run_layers",
           "run_layer"]

#: Prefix of a board target: ``"serial:PORT[@BAUD]"`` (:mod:`psc.host.serial_link`).
SERIAL_PREFIX = "serial:"


#: Arguments of one layer (:func:`run_layer`): required, then optional.
LAYER_ARGS = ("x", "w_pos", "w_neg", "bias", "mult", "shift")
LAYER_OPTIONS = ("stride", "padding", "groups", "relu")


def _check_target(target):
    if not isinstance(target, str) or (target not in TARGETS
                                       and not target.startswith(SERIAL_PREFIX)):
        raise ValueError(f"target must be one of {', '.join(TARGETS)} or 'serial:PORT[@BAUD]', "
                         f"not {show(target)}")
    if target.startswith(SERIAL_PREFIX):
        from psc.host.serial_link import parse_target
        parse_target(target)
    return target


def _check_run(config, target, stall, seed, waves, max_cycles=None):
    """The run's own arguments, checked before any layer is planned or anything is sent."""
    if config is not None and not isinstance(config, CoreConfig):
        raise BadTypeError(f"config must be a psc.config.CoreConfig or None, not {show(config)}")
    _check_target(target)
    check_real("stall", stall, 0.0, 1.0)
    check_int("seed", seed, 0, (1 << 32) - 1)
    if waves is not None:
        check_bool("waves", waves)
    if max_cycles is not None:
        check_int("max_cycles", max_cycles, 1)


def _layer_args(layers):
    """``layers`` as a list of dicts of :func:`plan_layer` arguments, checked for their keys."""
    if isinstance(layers, (str, bytes, dict)) or not hasattr(layers, "__iter__"):
        raise LayerError(f"layers must be a list of dicts of run_layer arguments, "
                         f"not {show(layers)}")
    layers = list(layers)
    if not layers:
        raise LayerError("layers must hold at least one layer, not none")
    out = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict):
            raise LayerError(f"layers[{i}] must be a dict of run_layer arguments, "
                             f"not {show(layer)}")
        missing = [n for n in LAYER_ARGS if n not in layer]
        unknown = sorted(map(str, set(layer) - set(LAYER_ARGS) - set(LAYER_OPTIONS)))
        if missing or unknown:
            raise LayerError(f"layers[{i}] must have the keys {', '.join(LAYER_ARGS)} (and "
                             f"optionally {', '.join(LAYER_OPTIONS)}); "
                             + (f"missing {missing}" if missing else f"unknown {unknown}"))
        out.append(layer)
    return out


def _plan_all(layers, config):
    plans = []
    for i, layer in enumerate(layers):
        layer = dict(layer)
        args = [layer.pop(n) for n in LAYER_ARGS]
        try:
            plans.append(plan_layer(*args, config=config, **layer))
        except LayerError as e:
            raise LayerError(f"layers[{i}]: {e}" if len(layers) > 1 else str(e)) from None
    return plans


def run_plans(plans, *, config=None, target="verilator", stall=0.0, seed=0, waves=None,
              keep_dir=False, max_cycles=None):
    """Run the tiles of ``plans`` (a list of lists of :class:`~psc.host.scheduler.Tile`) in one
    simulation.

    Returns, per plan, the list of per-tile results: ``outputs`` (output
    words), ``error``, ``done``, ``total``, ``compute``, ``stall`` and the
    number of beats each input stream accepted. ``waves`` defaults to
    ``PSC_WAVES`` (:func:`psc.host.sim.waves_requested`).
    """
    _check_run(config, target, stall, seed, waves, max_cycles)
    if isinstance(target, str) and target.startswith(SERIAL_PREFIX):
        raise ValueError(f"target must be a simulator ({', '.join(TARGETS)}) for run_plans, "
                         f"not {target!r}; run_layers drives a board")
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

    Every argument is checked before anything runs: the run's own
    (``ValueError``, :class:`~psc.model.checks.BadTypeError` for a wrong type)
    and each layer's, against the build (:class:`~psc.host.scheduler.LayerError`,
    naming ``layers[i]``), before the simulator is built or a byte of a layer
    is sent.
    """
    _check_run(config, target, stall, seed, waves)
    layers = _layer_args(layers)
    serial = target.startswith(SERIAL_PREFIX)
    # Every layer is checked against the build before the simulator is built or a
    # byte goes to a board; only a board whose build the host does not name is asked
    # for it (PING, no layer data) first.
    plans = None if serial and config is None else _plan_all(layers, config or CoreConfig())
    if serial:
        from psc.host.serial_link import SerialLink
        link = SerialLink.open(target, config)
        try:
            if plans is None:
                plans = _plan_all(layers, link.config)
            results = link.run_plans([p.tiles for p in plans])
        finally:
            link.close()
    else:
        results = run_plans([p.tiles for p in plans], config=config or CoreConfig(),
                            target=target, stall=stall, seed=seed, waves=waves)
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
        When an argument of the layer is of the wrong type, shape or range, or
        the build cannot run the layer (before anything is sent).
    ValueError
        For a bad ``config``, ``target``, ``stall``, ``seed`` or ``waves``
        (:class:`~psc.model.checks.BadTypeError`, also a ``TypeError``, for a
        wrong type), or a serial port that does not exist.
    """
    layer = dict(x=x, w_pos=w_pos, w_neg=w_neg, bias=bias, mult=mult, shift=shift,
                 stride=stride, padding=padding, groups=groups, relu=relu)
    return run_layers([layer], config=config, target=target, stall=stall, seed=seed,
                      waves=waves)[0]
