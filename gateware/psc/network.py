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
from psc.hw.link.network_bridge import PROTOCOL_VERSION as NETWORK_VERSION
from psc.model.checks import BadTypeError, check_choice, check_int, check_real, show
from psc.model.network import Network

__all__ = ["RUN_TARGETS", "MODES", "NetworkRun", "run"]

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


#: How :func:`run` runs a network on a core target: layer by layer (the host between the
#: layers) or in network mode (the whole network on chip), or ``auto``.
MODES = ("auto", "layers", "network")


def run(net, images, target="golden", *, config=None, feed="core", stall=0.0, seed=0,
        keep=False, progress=None, mode="auto"):
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
    feed : ``"core"`` or ``"golden"``
        Where each layer's input comes from. ``"core"``: from the layers run
        before it, so the images pass through the core end to end, one
        simulation (or board exchange) per convolution layer with all the
        images batched. ``"golden"``: from the golden model, so every
        convolution of every image runs in one simulation; each core layer's
        ``exact`` says whether its outputs equal the golden model's. When
        every layer is exact the two feeds give the same outputs (each
        layer's input is then the same), which makes ``"golden"`` a check of
        the end-to-end run at the cost of one simulation.
    stall, seed
        Random stream pauses in simulation (:func:`psc.host.api.run_layers`).
    keep : bool
        Keep every tensor of the run in :attr:`NetworkRun.tensors`.
    progress : callable, optional
        Called as ``progress(i, n, layer_name)`` before each layer (``feed="core"``).
    mode : ``"auto"``, ``"layers"`` or ``"network"``
        ``"layers"``: as above, one convolution at a time. ``"network"``: the whole
        network compiled for network mode (:func:`psc.host.program.compile_network`)
        and run on chip, only its input and output crossing: on a simulator the
        network engine (:meth:`psc.host.program.Program.simulate`), on a board its
        network-mode bridge (:func:`psc.host.network_link.network_session`: the
        program is loaded unless the board holds it already, and refused before
        anything is sent if it does not fit). ``"auto"`` is ``"network"`` on a
        board built for network mode (it answers PING with protocol 7), else
        ``"layers"``. In network mode ``layers`` has one row per layer, ``where``
        ``"chip"``, and ``totals`` the engine's ``cycles`` per inference (median),
        ``compute``, ``utilisation``, and ``window`` (the cycles after the input was
        received: every layer and the output) with ``window_utilisation`` over them.

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
    check_choice("feed", feed, ("core", "golden"))
    check_real("stall", stall, 0.0, 1.0)
    check_int("seed", seed, 0, (1 << 32) - 1)
    if progress is not None and not callable(progress):
        raise BadTypeError(f"progress must be callable or None, not {show(progress)}")
    check_choice("mode", mode, MODES)
    golden = target == "golden"
    serial = target.startswith(SERIAL_PREFIX)
    if golden and mode == "network":
        raise ValueError("mode 'network' runs on a simulator or a board, not on target "
                         "'golden'")
    if serial and mode != "layers":
        link = _open_link(target, config)
        if link.ident["version"] == NETWORK_VERSION or mode == "network":
            try:
                return _run_network_on_board(net, x, target, link)
            finally:
                link.close()
        link.close()
    elif mode == "network":
        return _run_network_simulated(net, x, target, config or CoreConfig(), stall, seed)
    cc = None if golden else (config if config is not None or serial else CoreConfig())
    if cc is not None:
        _check_build(net, cc)
    n = x.shape[0]
    convs = [layer for layer in net.layers if layer.op == "conv"]
    opts = dict(config=cc, target=target, stall=stall, seed=seed)
    reference, results = None, {}
    if not golden and feed == "golden" and convs:
        reference = net.run(x, keep=True)
        batch = [dict(x=img, **layer.conv_args()) for layer in convs
                 for img in reference[layer.inputs[0]]]
        res = _run_layers(batch, opts, lambda i: convs[i // n].name)
        results = {layer.name: res[i * n:(i + 1) * n] for i, layer in enumerate(convs)}
    tensors = {net.input: x}
    rows = []
    for i, layer in enumerate(net.layers):
        if progress is not None and feed == "core":
            progress(i, len(net.layers), layer.name)
        src = tensors if reference is None else reference
        xs = [src[t] for t in layer.inputs]
        row = {"name": layer.name, "op": layer.op, "macs": net.macs(layer)}
        if golden or layer.op != "conv":
            tensors[layer.output] = net.apply(layer, xs)
            row["where"] = "golden" if golden else "host"
        else:
            res = results.get(layer.name) or _run_layers(
                [dict(x=img, **layer.conv_args()) for img in xs[0]], opts,
                lambda _: layer.name)
            tensors[layer.output] = np.stack([y for y, _ in res])
            counters = [c for _, c in res]
            cycles = sum(c["total"] for c in counters) / n
            row.update(where="core", cycles=cycles,
                       compute=sum(c["compute"] for c in counters) / n,
                       stall=sum(c["stall"] for c in counters) / n,
                       tiles=counters[0]["tiles"],
                       utilisation=counters[0]["ideal"] / cycles if cycles else 0.0)
            if reference is not None:
                row["exact"] = bool(np.array_equal(tensors[layer.output],
                                                   reference[layer.output]))
        rows.append(row)
    core = [r for r in rows if r["where"] == "core"]
    cycles = sum(r["cycles"] for r in core)
    totals = {"macs": sum(r["macs"] for r in rows),
              "core_macs": sum(r["macs"] for r in core),
              "cycles": cycles,
              "host_layers": [r["name"] for r in rows if r["where"] == "host"]}
    if cc is not None and cycles:
        totals["utilisation"] = totals["core_macs"] / (cc.rows * cc.lanes) / cycles
    if reference is not None:
        totals["exact"] = all(r["exact"] for r in core)
    return NetworkRun(outputs=tensors[net.output], layers=rows, totals=totals, target=target,
                      config=cc, tensors=tensors if keep else {})


def _open_link(target, config):
    from psc.host.serial_link import SerialLink
    return SerialLink.open(target, config)


def _network_rows(net, cycles, compute, cc, program):
    macs = sum(net.macs(layer) for layer in net.layers)
    rows = [{"name": layer.name, "op": layer.op, "macs": net.macs(layer), "where": "chip"}
            for layer in net.layers]
    totals = {"macs": macs, "core_macs": macs, "cycles": cycles, "compute": compute,
              "utilisation": macs / (cc.rows * cc.lanes) / cycles if cycles else 0.0,
              "host_layers": [], "act_words": program.act_words}
    return rows, totals


def _run_network_on_board(net, x, target, link):
    """Network mode on the board behind ``link`` (a :class:`psc.host.serial_link.SerialLink`)."""
    from psc.host.network_link import link_program, network_session
    from psc.host.serial_link import drive
    if link.ident["version"] != NETWORK_VERSION:
        from psc.host.serial_link import LinkError
        raise LinkError(f"mode 'network' needs a board built for network mode (psc build "
                        f"--mode network); the board on {target} runs protocol "
                        f"{link.ident['version']} (tile mode)")
    program = link_program(net, link.config)
    outputs, statuses, loaded = drive(network_session(program, x, link.config), link.transport)
    cycles = float(np.median([s["cycles"] for s in statuses]))
    compute = float(np.median([s["compute"] for s in statuses]))
    rows, totals = _network_rows(net, cycles, compute, link.config, program)
    window = float(np.median([s["window"] for s in statuses]))
    totals.update(loaded=loaded, window=window,
                  window_utilisation=totals["core_macs"] / (link.config.rows
                                                            * link.config.lanes) / window)
    return NetworkRun(outputs=np.stack(outputs), layers=rows, totals=totals, target=target,
                      config=link.config)


def _run_network_simulated(net, x, target, cc, stall, seed):
    from psc.host.program import compile_network
    program = compile_network(net, cc)
    outputs, report = program.simulate(x, target=target, stall=stall, seed=seed)
    rows, totals = _network_rows(net, report["cycles"], report["compute"], cc, program)
    totals.update(window=report["window"], window_utilisation=totals["core_macs"] / (
        cc.rows * cc.lanes) / report["window"])
    return NetworkRun(outputs=outputs, layers=rows, totals=totals, target=target, config=cc)


def _run_layers(layers, opts, name_of):
    """:func:`psc.host.api.run_layers`, its layer errors naming the network's layer."""
    try:
        return run_layers(layers, **opts)
    except LayerError as e:
        text = str(e)
        if text.startswith("layers["):
            index = int(text[len("layers["):text.index("]")])
            text = text[text.index(":") + 1:].strip()
            raise LayerError(f"layer {name_of(index)!r}: {text}") from None
        raise LayerError(f"layer {name_of(0)!r}: {text}") from None


# --- the demo: the shipped digits network ------------------------------------------------

def demo(*, target="verilator", samples=20, seed=1, targets=None, out=print):
    """Classify the digits test split with the shipped PSC network and check the core.

    Loads ``psc/data/digits_psc.onnx`` (:mod:`psc.onnx_import`), classifies
    fold 0's test split on the golden model and on onnxruntime, runs every
    convolution of ``samples`` test images (chosen by ``seed``) on the core on
    ``target`` in one simulation (:func:`run` with ``feed="golden"``) and
    compares every output with the golden model bit for bit, and prints the
    accuracies, the PAR of every layer's input, the cycles per inference on
    the ``default`` build and on the builds of ``targets`` (default: every
    synthesis target of :data:`psc.presets.TARGETS`; one image each, on
    Verilator, checked the same way) and the latency those cycles take at the
    clock of each board that runs them. Returns 0 when the core matched the
    golden model everywhere, else 1.
    """
    import json
    from psc import data
    from psc.flow.board import BOARDS as BOARD_CLOCKS
    from psc.onnx_import import import_onnx, onnxruntime_run
    from psc.presets import BOARDS, TARGETS, preset
    _check_target(target)
    if target == "golden":
        raise ValueError("target must be a core (verilator, icarus or serial:PORT[@BAUD]) for "
                         "the demo, not 'golden'")
    samples = check_int("samples", samples, 1)
    seed = check_int("seed", seed, 0, (1 << 32) - 1)
    targets = tuple(TARGETS) if targets is None else tuple(targets)
    for t in targets:
        check_choice("targets", t, tuple(TARGETS))
    recorded = json.loads(data.path("digits_results.json").read_text())["shipped"]
    path = data.path("digits_psc.onnx")
    net = import_onnx(path)
    base = import_onnx(data.path("digits_relu.onnx"))
    _, _, x, y = data.digits_split(0)
    q = net.quantize_input(x)
    pred = net.classify(q)
    base_pred = base.classify(base.quantize_input(x))
    ort = onnxruntime_run(path, x).argmax(1)
    base_ort_acc = (onnxruntime_run(data.path("digits_relu.onnx"), x).argmax(1) == y).mean()
    pick = np.sort(np.random.default_rng(seed).permutation(len(y))[:samples])
    n_psc = sum(layer.psc for layer in net.layers)
    out(f"Shipped PSC network {path.name}: {len(net.layers)} layers ({n_psc} PSC), "
        f"{sum(net.macs(l) for l in net.layers)} MACs per image; digits test split of fold 0, "
        f"{len(y)} images")
    builds = ("default",) + tuple(targets)
    out(f"[1/{len(builds)}] every layer of {len(pick)} test images on the core ({target}; a "
        f"simulator compiles a build on its first run)...")
    res = run(net, q[pick], target, feed="golden")
    exact = res.totals["exact"] and bool(np.array_equal(res.outputs, net.run(q[pick])))
    core_pred = res.outputs.reshape(len(pick), -1).argmax(1)

    def pct(v):
        return "" if v is None else f"{100 * v:.2f}%"
    acc = [("float (PyTorch, recorded by scripts/train_digits.py)", recorded["relu"]["float"],
            recorded["psc"]["float"]),
           ("int8, golden model", (base_pred == y).mean(), (pred == y).mean()),
           ("int8, onnxruntime on the same file", base_ort_acc, (ort == y).mean()),
           (f"int8, core ({target}), {len(pick)} sampled images", None,
            (core_pred == y[pick]).mean())]
    out("")
    out(f"  {'accuracy':<56} {'ReLU baseline':>13}  {'PSC (INI + fine-tune)':>21}")
    for label, a, b in acc:
        out(f"  {label:<56} {pct(a):>13}  {pct(b):>21}")
    out(f"  argmax agreement of onnxruntime with the golden PSC network: "
        f"{pct((ort == pred).mean())}")
    out(f"  core == golden model, every output of every layer of the {len(pick)} images: {exact}")
    out("")
    out("PAR (positive activation ratio) of each layer's input, test split:")
    out(f"  {'layer':<12} {'op':<8} {'PSC':<4} {'input':<12} {'MACs':>7} {'where':<6} {'PAR':>6}")
    where = {r["name"]: r["where"] for r in res.layers}
    for r in net.summary(q):
        out(f"  {r['name']:<12} {r['op']:<8} {'yes' if r['psc'] else '':<4} "
            f"{'x'.join(map(str, r['in_shape'])):<12} {r['macs']:>7} {where[r['name']]:<6} "
            f"{r['par']:6.3f}")
    out("")
    runs = {"default": res} if res.config == preset("default") else {}
    for i, name in enumerate(builds):
        if name not in runs:
            out(f"[{i + 1}/{len(builds)}] one image on the {name} build (verilator)...")
            runs[name] = run(net, q[pick[:1]], "verilator", config=preset(name), feed="golden")
            exact = exact and runs[name].totals["exact"]
    out("")
    out("Cycles per inference (convolutions on the core; add, pooling and flatten on the host):")
    out(f"  {'build':<12} {'lanes x rows':<13} {'cycles':>8} {'utilisation':>12}   latency")
    for name in builds:
        cc, r = preset(name), runs[name]
        boards = [b for b, t in BOARDS.items() if TARGETS.get(t) == name]
        lat = ", ".join(f"{1e3 * r.totals['cycles'] / BOARD_CLOCKS[b].clk_hz:.3f} ms on {b} "
                        f"({BOARD_CLOCKS[b].clk_hz / 1e6:g} MHz)" for b in boards) or "-"
        out(f"  {name:<12} {f'{cc.lanes} x {cc.rows}':<13} {r.totals['cycles']:>8.0f} "
            f"{pct(r.totals['utilisation']):>12}   {lat}")
    out(f"  core == golden model on every build: {exact}")
    return 0 if exact else 1
