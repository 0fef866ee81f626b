"""The packer (the only code that knows the stream formats) and the configuration's validation."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from psc.config import PSCConfig, required_acc_width
from psc.model.packing import (pack_lanes, unpack_lanes, parify, unparify, pack_activations,
                         unpack_activations, channel_groups)


def test_lane_word_layout_is_lsb_first_twos_complement():
    assert pack_lanes(np.array([1, -1, -128, 127]), 8) == 0x7F80FF01
    np.testing.assert_array_equal(unpack_lanes(0x7F80FF01, 4, 8), [1, -1, -128, 127])


def test_parified_word_has_w_pos_low():
    assert parify(np.array(5), np.array(-2)) == (0xFE << 8) | 0x05
    assert parify(np.array(-128), np.array(127), 8) == (0x7F << 8) | 0x80


def test_activation_beat_order_and_zero_fill():
    x = np.arange(2 * 2 * 5).reshape(5, 2, 2) - 10      # C=5, H=W=2
    words = pack_activations(x, 4)
    assert words.shape == (2, 2, 2)                      # H, W, ceil(5/4)
    np.testing.assert_array_equal(unpack_lanes(words[1, 0, 0], 4, 8), x[0:4, 1, 0])
    np.testing.assert_array_equal(unpack_lanes(words[1, 0, 1], 4, 8), [x[4, 1, 0], 0, 0, 0])


@settings(max_examples=50, deadline=None)
@given(c=st.integers(1, 20), h=st.integers(1, 5), w=st.integers(1, 5), lanes=st.integers(1, 9),
       width=st.sampled_from([4, 8, 16]), seed=st.integers(0, 2**31))
def test_activation_round_trip(c, h, w, lanes, width, seed):
    x = np.random.default_rng(seed).integers(-(1 << (width - 1)), 1 << (width - 1), size=(c, h, w))
    words = pack_activations(x, lanes, width)
    assert words.shape == (h, w, channel_groups(c, lanes))
    assert all(0 <= int(v) < 1 << (lanes * width) for v in words.flat)
    np.testing.assert_array_equal(unpack_activations(words, c, lanes, width), x)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31), width=st.sampled_from([2, 8, 13]))
def test_parify_round_trip(seed, width):
    rng = np.random.default_rng(seed)
    wp, wn = (rng.integers(-(1 << (width - 1)), 1 << (width - 1), size=(3, 2, 3, 3)) for _ in range(2))
    a, b = unparify(parify(wp, wn, width), width)
    np.testing.assert_array_equal(a, wp)
    np.testing.assert_array_equal(b, wn)


def test_packing_refuses_bad_input():
    with pytest.raises(ValueError, match=r"x must be within the signed 8-bit range"):
        pack_activations(np.full((1, 1, 1), 128), 4)
    with pytest.raises(ValueError, match=r"lanes must be an integer >= 1, not 0"):
        pack_activations(np.zeros((1, 1, 1), dtype=int), 0)
    with pytest.raises(ValueError, match=r"x must have shape \(C, H, W\)"):
        pack_activations(np.zeros((1, 1), dtype=int), 4)
    with pytest.raises(ValueError, match=r"5 channels over 4 lanes need 2"):
        unpack_activations(np.zeros((1, 1, 1), dtype=object), 5, 4)
    with pytest.raises(ValueError, match=r"w_neg must have the shape of w_pos"):
        parify(np.zeros(3, dtype=int), np.zeros(2, dtype=int))


def test_config_defaults_and_derived_widths():
    c = PSCConfig()
    assert (c.word_width, c.product_width) == (16, 16)
    assert c.replace(psc=False).word_width == 8
    assert required_acc_width(8, 8, 1) == 16           # 128 * 128 = 2**14 needs 16 signed bits
    assert required_acc_width(8, 8, 1 << 14) == 30


@pytest.mark.parametrize("kwargs, match", [
    (dict(lanes=0), r"lanes must be an integer in \[1, 64\], not 0"),
    (dict(rows=65), r"rows must be an integer in \[1, 64\], not 65"),
    (dict(act_width=1), r"act_width must be an integer in \[2, 32\], not 1"),
    (dict(weight_width=8.0), r"weight_width must be an integer in \[2, 32\], not 8.0"),
    (dict(psc=1), r"psc must be True or False, not 1"),
    (dict(acc_width=24), r"acc_width must be at least 30 to hold 16384 products.*not 24"),
    (dict(max_reduction=0), r"max_reduction must be an integer in \[1, 16777216\], not 0"),
    (dict(depthwise="shifted", lanes=6, rows=3),
     r"depthwise='shifted' needs rows 2 or 4 and lanes a multiple of rows, not lanes=6, rows=3"),
    (dict(depthwise="shifted", lanes=6, rows=4), r"not lanes=6, rows=4"),
])
def test_config_refuses_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PSCConfig(**kwargs)


def test_config_is_frozen():
    with pytest.raises(Exception):
        PSCConfig().lanes = 4


def test_unpack_lanes_accepts_a_plain_int():
    np.testing.assert_array_equal(unpack_lanes(0xFF01, 2, 8, signed=False), [1, 255])
    np.testing.assert_array_equal(unpack_lanes(0xFF01, 2, 8), [1, -1])


def _random_value(layout, rng):
    """A random value for every field of an Amaranth ``data`` layout, in range."""
    from amaranth.hdl import Shape
    from amaranth.lib import data
    if isinstance(layout, data.StructLayout):
        return {name: _random_value(field.shape, rng) for name, field in layout}
    if isinstance(layout, data.ArrayLayout):
        return [_random_value(layout.elem_shape, rng) for _ in range(layout.length)]
    shape = Shape.cast(layout)
    lo = -(1 << (shape.width - 1)) if shape.signed else 0
    return lo + int(rng.integers(0, 1 << shape.width, dtype=np.uint64)
                    if shape.width < 64 else rng.integers(0, 1 << 62))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_pack_payload_places_bits_as_amaranth_does(seed):
    """The packer's bit placement equals Amaranth's own ``Layout.const`` on every stream
    layout of the core, the datapath and the network engine."""
    from psc.hw.core import layouts
    from psc.hw.dot_product import input_layout
    from psc.hw.network.engine import EngineConfig, instruction_layout
    from psc.model.packing import pack_payload
    from psc.presets import preset
    rng = np.random.default_rng(seed)
    cc = preset(["default", "ice40-up5k", "ecp5-25k"][seed % 3])
    for layout in (input_layout(cc.pe), layouts.config_layout(cc), layouts.weight_layout(cc),
                   layouts.param_layout(cc), layouts.act_in_layout(cc),
                   layouts.act_out_layout(cc), instruction_layout(EngineConfig(cc))):
        value = _random_value(layout, rng)
        assert pack_payload(layout, value) == layout.const(value).as_value().value, layout


def test_early_weights_is_in_the_dict_only_where_set():
    """A field added after builds shipped: ``to_dict`` writes ``early_weights`` only where it
    is set, so that the digests of builds without it stay what their boards report, and a
    dict without it reads as ``False``."""
    from psc.config import CoreConfig
    plain, early = CoreConfig(), CoreConfig(early_weights=True)
    assert "early_weights" not in plain.to_dict() and early.to_dict()["early_weights"] is True
    assert CoreConfig.from_dict(plain.to_dict()) == plain
    assert CoreConfig.from_dict(early.to_dict()) == early
    assert plain.digest() != early.digest()
    with pytest.raises(ValueError, match="early_weights must be True or False, not 1"):
        CoreConfig(early_weights=1)


def test_given_sizes_is_in_the_dict_only_where_set():
    """As ``early_weights``: ``given_sizes`` appears in ``to_dict`` only where it is set."""
    from psc.config import CoreConfig
    plain, given = CoreConfig(), CoreConfig(given_sizes=True)
    assert "given_sizes" not in plain.to_dict() and given.to_dict()["given_sizes"] is True
    assert CoreConfig.from_dict(given.to_dict()) == given
    assert plain.digest() != given.digest()
    with pytest.raises(ValueError, match="given_sizes must be True or False, not 1"):
        CoreConfig(given_sizes=1)


def test_given_sizes_command_beat_carries_the_derived_sizes():
    """On a ``given_sizes`` build a command beat is the command, then its derived sizes as
    the core would compute them (the bridge and the simulators send it as it is)."""
    from psc.config import CoreConfig
    from psc.host import encode_command
    from psc.hw.core import command_layout, config_layout
    from psc.hw.core.setup import derived_sizes, given_sizes_layout
    from psc.hw.link.bridge import beat_bytes
    from psc.model.packing import pack_payload
    plain, given = CoreConfig(), CoreConfig(given_sizes=True)
    fields = dict(in_h=9, in_w=11, out_h=9, out_w=11, gin=3, gout=2, k=3, stride=1, pad_top=1,
                  pad_left=1, kind=0, relu=0, keep=0, part=0)
    word = encode_command(given, **fields)
    bits = config_layout(given).size
    assert word & ((1 << bits) - 1) == encode_command(plain, **fields)
    assert word >> bits == pack_payload(given_sizes_layout(given), derived_sizes(given, fields))
    assert command_layout(plain) == config_layout(plain)
    assert beat_bytes(given)["cfg"] == -(-command_layout(given).size // 8)


def test_given_sizes_come_one_way_only():
    """A network engine around a core whose commands carry their sizes must carry them in its
    instructions (they reach the core in its command beat)."""
    from psc.config import CoreConfig
    from psc.hw.network.engine import EngineConfig
    cc = CoreConfig(given_sizes=True)
    with pytest.raises(ValueError, match="given_sizes must be True for a core whose commands"):
        EngineConfig(cc, given_sizes=False)
