"""Time the golden model on a 3x3 convolution (64, 56, 56) -> 64, padding 1.

    bash scripts/env.sh python scripts/bench_golden.py [--repeat 11]

Prints the median and the spread over the repeats (the first call, which
warms BLAS up, is discarded), and the plain-convolution baseline measured in
the same run.
"""
import argparse
import statistics
import time

import numpy as np

from psc import golden


def timeit(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times), max(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=11)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, size=(64, 56, 56))
    wp, wn = rng.integers(-128, 128, size=(2, 64, 64, 3, 3))
    bias = rng.integers(-1000, 1000, size=64)
    psc = timeit(lambda: golden.psc_conv2d(x, wp, wn, bias, padding=1), args.repeat)
    plain = timeit(lambda: golden.conv2d(x, wp, bias, padding=1), args.repeat)
    print(f"golden.psc_conv2d 3x3 (64,56,56)->64: median {psc[0]*1e3:.1f} ms (min {psc[1]*1e3:.1f}, max {psc[2]*1e3:.1f}) over {args.repeat}")
    print(f"golden.conv2d     3x3 (64,56,56)->64: median {plain[0]*1e3:.1f} ms (min {plain[1]*1e3:.1f}, max {plain[2]*1e3:.1f}); PSC/plain = {psc[0]/plain[0]:.2f}")


if __name__ == "__main__":
    main()
