"""Host-side packing: the only code that knows how tensors become stream words.

Lane words
    A vector of ``n`` signed ``width``-bit values travels as one unsigned
    integer of ``n * width`` bits. Element ``i`` occupies bits
    ``[i * width, (i + 1) * width)`` in two's complement, so element 0 is in
    the least significant bits. This is how Amaranth lays out an
    ``ArrayLayout(signed(width), n)``, so a lane word can be assigned to such a
    port as it is.

Parified weights
    One memory word holds the pair ``{W-, W+}``: ``W+`` in the low
    ``weight_width`` bits, ``W-`` in the high ones. One read of the word feeds
    one weight-selection mux. A plain (``psc=False``) build stores ``W+``
    alone.

Stream payloads (:func:`pack_payload`)
    A component's stream payload is an Amaranth ``data`` layout (for
    example :func:`psc.hw.dot_product.input_layout`); its bit placement is
    Amaranth's (struct fields LSB first in declaration order, array elements
    LSB first), so the packer asks the layout rather than restating it.

Activation streams (channels-last lanes)
    A feature map ``(C, H, W)`` is sent as ``H * W * G`` beats, ``G =
    ceil(C / lanes)``, in the order ``h``, then ``w``, then channel group
    ``g`` (innermost). Beat ``(h, w, g)`` is the lane word of channels
    ``g * lanes ... g * lanes + lanes - 1`` at pixel ``(h, w)``; channels
    beyond ``C`` in the last group are zero.
"""

import numpy as np

from psc.model.checks import (BadTypeError, check_bool, check_dims, check_int, check_signed,
                              check_width, show)

__all__ = ["pack_lanes", "unpack_lanes", "parify", "unparify",
           "pack_activations", "unpack_activations", "channel_groups", "pack_payload"]


def _check_positive(name, value):
    return check_int(name, value, 1)


def _check_words(words, bits):
    """``words`` as an object array of Python ints in ``[0, 2**bits)``: lane words are
    unsigned, and a word with more bits than its lanes hold was packed for another build."""
    arr = np.asarray(words, dtype=object)
    for index, word in np.ndenumerate(arr):
        if not isinstance(word, (int, np.integer)) or isinstance(word, (bool, np.bool_)):
            raise BadTypeError(f"words must hold integers, not {show(word)} at index {index}")
        if not 0 <= word < 1 << bits:
            raise ValueError(f"words must be integers in [0, 2**{bits}), not {show(word)} at "
                             f"index {index}")
    return np.vectorize(int, otypes=[object])(arr) if arr.size else arr


def channel_groups(channels, lanes):
    """Number of lane words needed for ``channels`` channels: ``ceil(channels / lanes)``."""
    return -(-check_int("channels", channels, 0) // _check_positive("lanes", lanes))


def pack_lanes(values, width):
    """Pack the last axis of ``values`` (signed, ``width`` bits each) into lane words.

    Returns an array of Python ints (dtype object) with the last axis removed.
    """
    width = check_width("width", width)
    values = check_signed("values", values, width)
    if values.ndim == 0 or values.shape[-1] == 0:
        raise ValueError(f"values must have a last axis of at least one lane, not shape "
                         f"{values.shape}")
    mask = (1 << width) - 1
    words = np.zeros(values.shape[:-1], dtype=object)
    for i in range(values.shape[-1]):
        words = words + ((values[..., i].astype(object) & mask) << (i * width))
    return words


def unpack_lanes(words, lanes, width, *, signed=True):
    """Inverse of :func:`pack_lanes`: lane words to an int64 array with a last axis of ``lanes``."""
    lanes = _check_positive("lanes", lanes)
    width = check_width("width", width)
    signed = check_bool("signed", signed)
    words = _check_words(words, lanes * width)
    mask = (1 << width) - 1
    out = np.empty(words.shape + (lanes,), dtype=np.int64)
    for i in range(lanes):
        v = np.asarray((words >> (i * width)) & mask, dtype=object)
        if signed:
            v = np.where(v >= 1 << (width - 1), v - (1 << width), v)
        out[..., i] = v.astype(np.int64)
    return out


def parify(w_pos, w_neg, weight_width=8):
    """Pair ``W+`` and ``W-`` into memory words ``{W-, W+}`` (``W+`` low), same shape."""
    w_pos = check_signed("w_pos", w_pos, weight_width)
    w_neg = check_signed("w_neg", w_neg, weight_width)
    if w_pos.shape != w_neg.shape:
        raise ValueError(f"w_neg must have the shape of w_pos {w_pos.shape}, not {w_neg.shape}")
    return pack_lanes(np.stack([w_pos, w_neg], axis=-1), weight_width)


def unparify(words, weight_width=8):
    """Inverse of :func:`parify`: returns ``(w_pos, w_neg)``."""
    pair = unpack_lanes(words, 2, weight_width)
    return pair[..., 0], pair[..., 1]


def pack_activations(x, lanes, act_width=8):
    """Pack ``(C, H, W)`` activations into channels-last lane words, shape ``(H, W, G)``."""
    lanes = _check_positive("lanes", lanes)
    x = check_dims("x", check_signed("x", x, act_width), ("C", "H", "W"))
    c, h, w = x.shape
    g = channel_groups(c, lanes)
    hwc = np.zeros((h, w, g * lanes), dtype=np.int64)
    hwc[:, :, :c] = x.transpose(1, 2, 0)
    return pack_lanes(hwc.reshape(h, w, g, lanes), act_width)


def unpack_activations(words, channels, lanes, act_width=8):
    """Inverse of :func:`pack_activations`: ``(H, W, G)`` lane words to ``(C, H, W)``."""
    channels = _check_positive("channels", channels)
    lanes = _check_positive("lanes", lanes)
    words = np.asarray(words, dtype=object)
    if words.ndim != 3:
        raise ValueError(f"words must have shape (H, W, G), not {words.shape}")
    h, w, g = words.shape
    if g != channel_groups(channels, lanes):
        raise ValueError(f"words hold {g} channel groups; {channels} channels over {lanes} lanes "
                         f"need {channel_groups(channels, lanes)}")
    lanes_ = unpack_lanes(words, lanes, act_width)            # H, W, G, lanes
    return lanes_.reshape(h, w, g * lanes)[:, :, :channels].transpose(2, 0, 1).copy()


def _to_python(value):
    """Nested numpy arrays/scalars to nested lists/ints, which Amaranth's ``const`` accepts."""
    if isinstance(value, dict):
        return {k: _to_python(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _to_python(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_to_python(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    return value


def _check_fits(layout, value, path):
    """Raise naming ``path`` if ``value`` does not match ``layout``; Amaranth's ``const`` would
    silently truncate an out-of-range field or zero a missing one."""
    from amaranth.hdl import Shape
    from amaranth.lib import data

    if isinstance(layout, data.StructLayout):
        names = [name for name, _ in layout]
        if not isinstance(value, dict) or set(value) != set(names):
            raise ValueError(f"{path} must be a dict with exactly the fields {names}, not {show(value)}")
        for name, field in layout:
            _check_fits(field.shape, value[name], f"{path}.{name}")
    elif isinstance(layout, data.ArrayLayout):
        if not isinstance(value, list) or len(value) != layout.length:
            raise ValueError(f"{path} must be a sequence of {layout.length} elements, not {show(value)}")
        for i, v in enumerate(value):
            _check_fits(layout.elem_shape, v, f"{path}[{i}]")
    else:
        shape = Shape.cast(layout)
        if shape.signed:
            lo, hi = -(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1
        else:
            lo, hi = 0, (1 << shape.width) - 1
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ValueError(f"{path} must be an integer in [{lo}, {hi}], not {show(value)}")


def pack_payload(layout, values):
    """Pack ``values`` into the bits of an Amaranth ``data`` ``layout``; returns an int.

    ``values`` is nested as the layout is: a dict with every field of a
    ``StructLayout``, a sequence for an ``ArrayLayout``; numpy arrays and
    integers are accepted; signed fields take signed values. Amaranth does
    the bit placement (``layout.const(values).as_value().value``); this
    function adds the checks ``const`` does not make, so a value that does not
    fit its field, or a missing field, raises an error naming it. Example::

        from psc.hw.dot_product import input_layout
        word = pack_payload(input_layout(config), {
            "x": x, "w": parify(w_pos, w_neg, config.weight_width),
            "bias": bias, "first": 1, "last": 1})
    """
    values = _to_python(values)
    _check_fits(layout, values, "values")
    return layout.const(values).as_value().value
