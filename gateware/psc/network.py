"""Running a whole :class:`~psc.model.network.Network` on the golden model, a simulated core or a board.

:func:`run` walks the network's layers in order. On a core target every
convolution runs on the core through :func:`psc.host.api.run_layers`, one
simulation (or one board exchange) per layer with all the images' copies of
that layer batched, on one simulator build for the whole network; the
operations the core does not have (residual add, global average pooling,
flatten) run on the host with the golden model's definitions, and the
per-layer report says where each layer ran.
"""

from dataclasses import dataclass, field

import numpy as np

from psc.config import CoreConfig
from psc.host.api import SERIAL_PREFIX, run_layers
from psc.host.scheduler import LayerError, plan_layer
from psc.host.sim import TARGETS
from psc.model.checks import BadTypeError, check_real, check_int, show
from psc.model.network import Network

__all__ = ["RUN_TARGETS", "NetworkRun", "run"]

#: Targets of :func:`run`, besides ``"serial:PORT[@BAUD]"``.
RUN_TARGETS = ("golden",) + tuple(TARGETS)


@dataclass
class NetworkRun:
    """What :func:`run` returns.

    Attributes
    ----------
    outputs : numpy.ndarray
        The network's output, ``(N, ...)``.
    layers : list of dict
        Per layer: ``name``, ``op``, ``where`` (``"core"``, ``"host"`` or
        ``"golden"``), ``macs`` per image and, for a layer on the core, per
        inference (averaged over the images): ``cycles`` (total), ``compute``,
        ``stall``, ``tiles`` and ``utilisation`` (``macs / (rows * lanes)``
        over ``cycles``).
    totals : dict
        Per inference: ``cycles`` on the core, ``macs`` of all convolutions,
        ``core_macs`` of those on the core, ``utilisation``; and the names of
        the layers that ran on the host (``host_layers``).
    target : str
    config : psc.config.CoreConfig or None
        The build the core layers ran on (None for ``"golden"``).
    """
    outputs: np.ndarray
    layers: list
    totals: dict
    target: str
    config: CoreConfig | None = None
    tensors: dict = field(default_factory=dict, repr=False)


def _check_target(target):
    if not isinstance(target, str) or (target not in RUN_TARGETS
                                       and not target.startswith(SERIAL_PREFIX)):
        raise ValueError(f"target must be one of {', '.join(RUN_TARGETS)} or "
                         f"'serial:PORT[@BAUD]', not {show(target)}")
    return target


def _check_build(net, cc):
    """The network's widths against the build's, and every convolution against the build
    (:func:`psc.host.scheduler.plan_layer` on a zero input), before anything runs."""
    pe = cc.pe
    for name, ours, theirs in (("act_width", net.act_width, pe.act_width),
                               ("weight_width", net.weight_width, pe.weight_width),
                               ("mult_width", net.mult_width, pe.mult_width)):
        if ours != theirs:
            raise LayerError(f"the network has {name}={ours}; the build has {theirs}")
    for layer in net.layers:
        if layer.op != "conv":
            continue
        x = np.zeros(net.shapes[layer.inputs[0]], dtype=np.int64)
        try:
            plan_layer(x, config=cc, **layer.conv_args())
        except LayerError as e:
            raise LayerError(f"layer {layer.name!r} cannot run on this build: {e}") from None


def run(net, images, target="golden", *, config=None, stall=0.0, seed=0, keep=False,
        progress=None):
    """Run ``images`` through ``net``; returns a :class:`NetworkRun`.

    Parameters
    ----------
    net : psc.model.network.Network
    images : int array ``(N, C, H, W)`` (or one ``(C, H, W)``)
        In the network's input shape and ``act_width`` range
        (:meth:`~psc.model.network.Network.quantize_input` makes them from
        real values).
    target : ``"golden"``, ``"verilator"``, ``"icarus"`` or ``"serial:PORT[@BAUD]"``
        ``"golden"`` runs every layer on the golden model; the others run the
        convolutions on the core (:func:`psc.host.api.run_layers`) and the
        other layers on the host.
    config : psc.config.CoreConfig, optional
        The build (default ``CoreConfig()``; for a board, the board's own).
    stall, seed
        Random stream pauses in simulation (:func:`psc.host.api.run_layers`).
    keep : bool
        Keep every tensor of the run in :attr:`NetworkRun.tensors`.
    progress : callable, optional
        Called as ``progress(i, n, layer_name)`` before each layer.

    Raises
    ------
    LayerError
        When a convolution of the network cannot run on the build (naming the
        layer), before anything runs.
    ValueError
        For a bad network, image batch, target or run argument
        (:class:`~psc.model.checks.BadTypeError` for a wrong type).
    """
    if not isinstance(net, Network):
        raise BadTypeError(f"net must be a psc.model.network.Network, not {show(net)}")
    _check_target(target)
    x = net.check_images(images)
    if config is not None and not isinstance(config, CoreConfig):
        raise BadTypeError(f"config must be a psc.config.CoreConfig or None, not {show(config)}")
    check_real("stall", stall, 0.0, 1.0)
    check_int("seed", seed, 0, (1 << 32) - 1)
    if progress is not None and not callable(progress):
        raise BadTypeError(f"progress must be callable or None, not {show(progress)}")
    golden = target == "golden"
    serial = target.startswith(SERIAL_PREFIX)
    cc = None if golden else (config if config is not None or serial else CoreConfig())
    if cc is not None:
        _check_build(net, cc)
    n = x.shape[0]
    tensors = {net.input: x}
    rows = []
    for i, layer in enumerate(net.layers):
        if progress is not None:
            progress(i, len(net.layers), layer.name)
        xs = [tensors[t] for t in layer.inputs]
        row = {"name": layer.name, "op": layer.op, "macs": net.macs(layer)}
        if golden or layer.op != "conv":
            tensors[layer.output] = net.apply(layer, xs)
            row["where"] = "golden" if golden else "host"
        else:
            args = layer.conv_args()
            try:
                res = run_layers([dict(x=img, **args) for img in xs[0]], config=cc,
                                 target=target, stall=stall, seed=seed)
            except LayerError as e:
                raise LayerError(f"layer {layer.name!r}: {e}") from None
            tensors[layer.output] = np.stack([y for y, _ in res])
            counters = [c for _, c in res]
            cycles = sum(c["total"] for c in counters) / n
            row.update(where="core", cycles=cycles,
                       compute=sum(c["compute"] for c in counters) / n,
                       stall=sum(c["stall"] for c in counters) / n,
                       tiles=counters[0]["tiles"],
                       utilisation=counters[0]["ideal"] / cycles if cycles else 0.0)
        rows.append(row)
    core = [r for r in rows if r["where"] == "core"]
    cycles = sum(r["cycles"] for r in core)
    totals = {"macs": sum(r["macs"] for r in rows),
              "core_macs": sum(r["macs"] for r in core),
              "cycles": cycles,
              "host_layers": [r["name"] for r in rows if r["where"] == "host"]}
    if cc is not None and cycles:
        totals["utilisation"] = totals["core_macs"] / (cc.rows * cc.lanes) / cycles
    return NetworkRun(outputs=tensors[net.output], layers=rows, totals=totals, target=target,
                      config=cc, tensors=tensors if keep else {})
