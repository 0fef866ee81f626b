"""MobileNetV2-shaped networks (Sandler et al., 2018) with random weights, for benchmarks.

:func:`mobilenet_v2` builds a :class:`~psc.model.network.Network` with MobileNetV2's
structure: a 3x3 stride-2 stem, inverted residual blocks (1x1 expansion with ReLU,
3x3 depthwise with ReLU, 1x1 projection, a residual add where the shapes allow), a
last 1x1 convolution, global average pooling and a classifier. Its width, input
size, blocks and last width are parameters, so that a network small enough for a
device's on-chip memory keeps the shape of the real one. The weights are random PSC
pairs; each layer's requantisation is chosen on random images so that its outputs
spread over the int8 range (standard deviation :data:`SPREAD`) rather than saturate
or vanish.

:data:`BLOCKS` (MobileNetV2's table) and :func:`divisible` (its channel rounding)
are also what :func:`psc.host.bench.mobilenet_v2_layers` lists layer by layer.
"""

import numpy as np

from psc.model import golden, network
from psc.model.network import Layer, Network, quantize_multiplier

__all__ = ["BLOCKS", "divisible", "mobilenet_v2", "SPREAD", "BOARD_MBV2", "board_mbv2"]

#: The standard deviation each layer's requantisation aims its outputs at.
SPREAD = 40

#: MobileNetV2's inverted residual blocks: (expansion t, channels c, repeats n, stride s).
BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1))


def divisible(v, d=8):
    """MobileNetV2's channel rounding: to a multiple of ``d``, never below 90% of ``v``."""
    out = max(d, int(v + d / 2) // d * d)
    return out + d if out < 0.9 * v else out


def mobilenet_v2(*, width=0.35, size=96, blocks=BLOCKS, last=1280, classes=1000, seed=0):
    """A MobileNetV2-shaped :class:`~psc.model.network.Network` with random weights.

    Parameters
    ----------
    width : float
        Width multiplier of every channel count but ``last``'s.
    size : int
        Input height and width (3 channels).
    blocks : sequence of (t, c, n, s)
        The inverted residual blocks (:data:`BLOCKS` or a prefix of it).
    last : int
        Channels of the last 1x1 convolution.
    classes : int
    seed : int
    """
    rng = np.random.default_rng(seed)
    layers = []
    # calibration: each layer's requantisation is chosen on random images run so far
    seen = {"image": rng.integers(-128, 128, size=(2, 3, size, size))}

    def conv(name, src, dst, cin, cout, k, stride=1, groups=1, relu=False):
        w = rng.integers(-128, 128, size=(cout, cin // groups, k, k))
        w_neg = rng.integers(-128, 128, size=w.shape)
        bias = rng.integers(-256, 256, size=cout)
        acc = np.stack([golden.psc_conv2d(x, w, w_neg, bias, stride=stride, padding=k // 2,
                                          groups=groups) for x in seen[src]])
        mult, shift = quantize_multiplier(SPREAD / max(1.0, float(acc.std())))
        seen[dst] = golden.requantize(acc, mult, shift, relu=relu)
        layers.append(Layer.conv(name, src, dst, w, w_neg, bias, mult, shift, stride=stride,
                                 padding=k // 2, groups=groups, relu=relu))
        return dst

    c, hw = divisible(32 * width), (size - 1) // 2 + 1
    x = conv("stem", "image", "stem", 3, c, 3, stride=2, relu=True)
    for b, (t, cb, n, stride) in enumerate(blocks, 1):
        co = divisible(cb * width)
        for i in range(n):
            s = stride if i == 0 else 1
            tag, e, src = f"b{b}.{i}", c * t, x
            h = conv(f"{tag}_expand", x, f"{tag}_e", c, e, 1, relu=True) if t != 1 else x
            h = conv(f"{tag}_dw", h, f"{tag}_d", e, e, 3, stride=s, groups=e, relu=True)
            hw = (hw - 1) // s + 1
            h = conv(f"{tag}_project", h, f"{tag}_p", e, co, 1)
            if s == 1 and c == co:
                layers.append(Layer.add(f"{tag}_add", src, h, f"{tag}_out", 1 << 14, 1 << 14,
                                        15))
                seen[f"{tag}_out"] = network.add(seen[src], seen[h], 1 << 14, 1 << 14, 15)
                h = f"{tag}_out"
            x, c = h, co
    x = conv("last", x, "last", c, last, 1, relu=True)
    pool = quantize_multiplier(1 / (hw * hw))
    layers += [Layer.gap("pool", x, "pooled", *pool),
               Layer.flatten("flat", "pooled", "features")]
    seen["features"] = np.stack([network.global_avg_pool(t, *pool) for t in seen[x]])
    conv("fc", "features", "logits", last, classes, 1)
    return Network("image", (3, size, size), layers, "logits")


#: The MobileNetV2-shaped network sized for the ULX3S's network-mode build (every weight
#: block in its 512-block weight buffer): width 0.35, 16 x 16 input, the first three
#: stages of blocks (the third with two repeats of its three), a last convolution of 96
#: channels and 10 classes.
BOARD_MBV2 = {"width": 0.35, "size": 16, "blocks": BLOCKS[:2] + ((6, 32, 2, 2),), "last": 96,
              "classes": 10}


def board_mbv2(seed=0):
    """:func:`mobilenet_v2` with :data:`BOARD_MBV2`."""
    return mobilenet_v2(**BOARD_MBV2, seed=seed)
