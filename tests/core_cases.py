"""Named layer cases for the PSCConvCore benches (shared by tests/test_core_sim.py and psc bench).

Each case is a function of a numpy Generator returning the keyword arguments
of :func:`psc.host.run_layer` (without config/target). Expected outputs come
from psc.model.golden only (see :func:`expected`).
"""

import numpy as np

from psc.flow.soak import golden_output, layer_args
from psc.presets import PRESETS


def simulable(name):
    """Preset ``name`` with the generic multiplier, the requantiser's multiply in LUTs (as
    fast: one value per cycle) and block RAM: the Amaranth simulator cannot run the DSP and
    SPRAM primitives (the Verilator benches do)."""
    return PRESETS[name].replace(multiplier="generic", requant_multiplier="adds",
                                 fmap_ram="block")


# the one generator of random layer arguments (psc.flow.soak), under its short name here
_layer = layer_args


CASES = {
    # kind x stride x kernel x padding, channels that fill lanes/rows and that do not
    "std_k3_s1_p1": lambda r: _layer(r, 8, 8, 6, 6, 3, 1, 1),
    "std_k3_s2_p1_odd": lambda r: _layer(r, 5, 11, 7, 5, 3, 2, 1),
    "std_k3_s1_p0_odd": lambda r: _layer(r, 10, 6, 5, 6, 3, 1, 0),
    "std_k5_s1_p2": lambda r: _layer(r, 3, 8, 6, 6, 5, 1, 2),
    "std_k5_s2_p0": lambda r: _layer(r, 8, 16, 8, 7, 5, 2, 0),
    "std_k7_s2_p3": lambda r: _layer(r, 3, 8, 7, 7, 7, 2, 3),
    "pw_odd": lambda r: _layer(r, 12, 20, 4, 5, 1),
    "pw_s2": lambda r: _layer(r, 16, 8, 5, 5, 1, 2, 0),
    "dw_k3_s1_p1": lambda r: _layer(r, 16, 16, 5, 5, 3, 1, 1, groups=16),
    "dw_k3_s2_p1_odd_relu": lambda r: _layer(r, 13, 13, 7, 6, 3, 2, 1, groups=13, relu=True),
    "dw_k5_s1_p0": lambda r: _layer(r, 8, 8, 6, 6, 5, 1, 0, groups=8),
    "fc": lambda r: _layer(r, 40, 10, 1, 1, 1),
    "relu_baseline_ini": lambda r: _layer(r, 8, 8, 5, 5, 3, 1, 1, weights="ini"),
    "linear_baseline_ili": lambda r: _layer(r, 8, 8, 5, 5, 3, 1, 1, weights="ili"),
    # MobileNetV2's first blocks (channels as in the network) at reduced
    # spatial size: 224x224 -> 12x12 at the stem, 112x112 -> 6x6 after it
    "mbv2_stem_3x3_s2": lambda r: _layer(r, 3, 32, 12, 12, 3, 2, 1, relu=True),
    "mbv2_b1_dw_3x3": lambda r: _layer(r, 32, 32, 6, 6, 3, 1, 1, groups=32, relu=True),
    "mbv2_b1_project_1x1": lambda r: _layer(r, 32, 16, 6, 6, 1),
    "mbv2_b2_expand_1x1": lambda r: _layer(r, 16, 96, 6, 6, 1, relu=True),
}


def make(name, seed=0):
    return CASES[name](np.random.default_rng([seed, sorted(CASES).index(name)]))


def expected(layer, act_width=8):
    """The golden model's output for a case (requantised activations)."""
    return golden_output(layer, act_width)
