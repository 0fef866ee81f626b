"""The ``psc`` command line: one entry point, one subcommand per job."""

import argparse
import sys

import numpy as np

from . import golden


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
    return 0 if np.array_equal(acc, ref) and np.array_equal(ini_acc, relu_base) else 1


def main(argv=None):
    parser = argparse.ArgumentParser(prog="psc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="run a PSC layer and check it against the golden model")
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
