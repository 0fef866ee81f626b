"""MobileNetV2-shaped networks with random weights (psc.model.mobilenet)."""

import numpy as np

from psc.host.network_link import link_program
from psc.model.mobilenet import BOARD_MBV2, board_mbv2, mobilenet_v2
from psc.presets import board_engine


def test_the_structure_of_mobilenet_v2():
    """Stem, inverted residual blocks (an expansion unless t = 1, depthwise, projection, an
    add where stride 1 keeps the channels), last 1x1, pooling, flatten, classifier: at
    width 0.35 the 53 convolutions psc bench mbv2 lists, and 10 adds."""
    net = mobilenet_v2(width=0.35, size=32, classes=1000)
    ops = [layer.op for layer in net.layers]
    assert ops.count("conv") == 53 and ops.count("add") == 10 and ops[-3:] == ["gap", "flatten",
                                                                               "conv"]
    assert net.shapes["stem"] == (16, 16, 16) and net.shapes["last"] == (1280, 1, 1)
    assert net.shapes["logits"] == (1000, 1, 1)


def test_the_board_network_fits_the_ulx3s_engine_and_its_activations_spread():
    net = board_mbv2()
    assert net.input_shape == (3, BOARD_MBV2["size"], BOARD_MBV2["size"])
    ec = board_engine("ulx3s")
    link_program(net, ec.core).check_engine(ec)
    x = np.random.default_rng(5).integers(-128, 128, size=(3,) + net.input_shape)
    tensors = net.run(x, keep=True)
    for name, t in tensors.items():
        # neither vanished nor saturated: the calibration's doing
        assert t.std() > 8 and np.mean(np.abs(t) >= 127) < 0.05, name
