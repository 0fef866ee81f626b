"""psc.host.cycle_model against the simulated core: the shipped digits network and layers of
every kind (split reductions, depthwise, fully connected, requantiser-bound pointwise) on the
tiling build and both shipped targets' builds, on Verilator with no stream paused."""

import numpy as np
import pytest

from psc import data
from psc.host import bench, plan_layer, run_plans
from psc.host.cycle_model import layers_cycles, plan_cycles
from psc.onnx_import import import_onnx
from psc.presets import PRESETS

BENCH = ("std3x3_32x32_16", "std3x3_16x16_s2", "pw_16x96_12", "dw3x3_32_16", "stem3x3_3x32",
         "fc_256x64")


def _layers():
    """The digits network's convolutions on one test image, then the bench layers."""
    net = import_onnx(data.path("digits_psc.onnx"))
    _, _, x, _ = data.digits_split(0)
    ref = net.run(net.quantize_input(x[:1]), keep=True)
    layers = [dict(x=ref[layer.inputs[0]][0], **layer.conv_args())
              for layer in net.layers if layer.op == "conv"]
    rng = np.random.default_rng(0)
    return layers + [bench._factory(name)[1](rng) for name in BENCH]


# the iCE40 build (SPRAM models, a slow simulation) only in the opt-in soak
@pytest.mark.parametrize("name", ["tiny", pytest.param("ice40-up5k", marks=pytest.mark.soak),
                                  "ecp5-25k"])
def test_cycle_model_within_two_percent_of_the_simulator(name):
    cc = PRESETS[name]
    layers = _layers()
    plans = [plan_layer(**layer, config=cc) for layer in layers]
    sims = [sum(r["total"] for r in res)
            for res in run_plans([p.tiles for p in plans], config=cc, target="verilator")]
    models = [plan_cycles(p) for p in plans]
    assert models == layers_cycles(layers, cc)
    worst = max(range(len(layers)), key=lambda i: abs(models[i] - sims[i]) / sims[i])
    report = (f"{name}: model {sum(models)} against simulated {sum(sims)} cycles; worst layer "
              f"{worst}: {plans[worst].meta} model {models[worst]}, simulated {sims[worst]}")
    assert abs(sum(models) - sum(sims)) <= 0.02 * sum(sims), report
    assert abs(models[worst] - sims[worst]) <= 0.05 * sims[worst], report
