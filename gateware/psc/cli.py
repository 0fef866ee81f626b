"""The ``psc`` command line: one entry point, one subcommand per job."""

import argparse
import sys

import numpy as np

from psc.flow import generate
from psc.model import golden
from psc.config import DEPTHWISE_MODES, MULTIPLIERS


def _demo(args):
    """Run one PSC layer through the golden model and show its special cases."""
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
    return 0 if model_ok and hw_ok else 1


def _bench(args):
    """Cycles per layer on the simulated core, PSC and plain builds (psc.host.bench)."""
    from psc.host import bench
    return bench.main(args)


def _build(args):
    """Build a board's bitstream (psc.flow.board)."""
    from psc.flow import board
    return board.main(args)


def _generate(args):
    """Write Verilog for the chosen tops and configuration."""
    config = generate.PRESETS[args.preset]
    changes = {field: getattr(args, field) for field in
               ("lanes", "rows", "act_width", "weight_width", "acc_width", "mult_width",
                "max_reduction", "multiplier", "tree_stages") if getattr(args, field) is not None}
    if args.no_psc:
        changes["psc"] = False
    try:
        config = config.replace(**changes)
    except ValueError as e:
        print(f"psc generate: {e}", file=sys.stderr)
        return 2
    tops = generate.TOPS if args.top == "all" else (args.top,)
    if not config.psc and all(top in generate.PSC_ONLY for top in tops):
        print(f"psc generate: --top {args.top} exists only for PSC; drop --no-psc", file=sys.stderr)
        return 2
    for path in generate.write_rtl(args.output, config, tops):
        print(path)
    return 0


def _demo_target(text):
    if text in ("verilator", "icarus") or text.startswith("serial:"):
        return text
    raise argparse.ArgumentTypeError(
        f"must be verilator, icarus or serial:PORT[@BAUD], not {text!r}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="psc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="run a PSC layer and check it against the golden model")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--target", default="verilator", type=_demo_target,
                   help="verilator (default), icarus, or serial:PORT[@BAUD] for a board "
                        "built with psc build")
    p.set_defaults(func=_demo)

    p = sub.add_parser("bench", help="cycles and utilisation per layer on the simulated core, "
                                     "PSC vs plain build")
    p.add_argument("layers", nargs="*", metavar="LAYER",
                   help="bench layers to run (default: all of psc.host.bench.BENCH_LAYERS)")
    p.add_argument("--lanes", type=int, default=8, help="lanes Tn (default 8)")
    p.add_argument("--rows", type=int, default=8, help="rows Tm (default 8)")
    p.add_argument("--depthwise", choices=DEPTHWISE_MODES, default="pixels",
                   help="depthwise mapping (default pixels: rows are neighbouring output "
                        "pixels; it needs lanes == rows, a power of two)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_bench)

    p = sub.add_parser(
        "generate", help="write Verilog of the components (default: every top of the default preset into rtl/)",
        description="Write one Verilog file per top, with the configuration in its header. "
                    "With a PSC configuration, pe and dot_product also get a psc=False "
                    "_baseline twin.")
    p.add_argument("--top", default="all", choices=[*generate.TOPS, "all"],
                   help="component to export (default: all)")
    p.add_argument("--preset", default="default", choices=list(generate.PRESETS),
                   help="base configuration; the options below override it (default: default)")
    for flag, what in (("--lanes", "activations per beat (Tn)"), ("--rows", "outputs per beat (Tm)"),
                       ("--act-width", "activation bits"), ("--weight-width", "weight bits"),
                       ("--acc-width", "accumulator bits"), ("--mult-width", "requantisation multiplier bits"),
                       ("--max-reduction", "largest reduction length the accumulator must hold")):
        p.add_argument(flag, type=int, metavar="N", help=what)
    p.add_argument("--multiplier", choices=list(MULTIPLIERS),
                   help="how products are built (psc.config.PSCConfig.multiplier)")
    p.add_argument("--tree-stages", type=int, metavar="N",
                   help="pipeline registers in each PE's adder tree (0..2)")
    p.add_argument("--no-psc", action="store_true", help="plain convolution (psc=False) only")
    p.add_argument("-o", "--output", default="rtl", metavar="DIR", help="output directory (default: rtl/)")
    p.set_defaults(func=_generate)

    from psc.flow import synth
    p = sub.add_parser("synth", help="synthesise, place and route a shipped configuration; resource/Fmax table",
                       description=synth.SYNTH_DESCRIPTION)
    synth.add_arguments(p, variant=True)
    p.set_defaults(func=synth.main_synth)
    p = sub.add_parser("compare", help="PSC against the plain (baseline) and naive datapaths on one target",
                       description=synth.COMPARE_DESCRIPTION)
    synth.add_arguments(p, variant=False)
    p.set_defaults(func=synth.main_compare)
    p = sub.add_parser("build", help="build the bitstream of a board top (UART bridge + core)",
                       description="Build the UART bridge and the core (psc.flow.board) into a bitstream "
                                   "with amaranth-boards and YoWASP; prints utilisation, the Fmax "
                                   "nextpnr reports against the board clock, and the bitstream path.")
    p.add_argument("--board", required=True, choices=["icebreaker", "ulx3s"])
    p.add_argument("--baud", type=int, default=1_000_000, help="UART baud rate (default 1000000)")
    p.add_argument("--build-dir", metavar="DIR",
                   help="build directory, not under /tmp (default build/board/<board>)")
    p.add_argument("--seed", type=int, default=1, help="nextpnr placer seed (default 1)")
    p.add_argument("--lanes", type=int, metavar="N", help="override the board's lanes (Tn)")
    p.add_argument("--rows", type=int, metavar="N", help="override the board's rows (Tm)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_build)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
