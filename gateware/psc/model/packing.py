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

import functools

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
    """Nested numpy arrays/scalars to nested lists/ints (for an error message)."""
    if isinstance(value, dict):
        return {k: _to_python(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _to_python(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_to_python(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    return value


class _Misfit(Exception):
    """A value that does not match its field: the path to it (innermost first), the message."""

    def __init__(self, path, message):
        self.path, self.message = path, message


@functools.lru_cache(maxsize=None)
def _compiled(layout):
    """``layout`` as a tree of plain tuples, built once per layout: ``("struct", names,
    ((name, offset, node), ...))`` (``names`` a frozenset), ``("array", length, elem_size,
    node)`` or ``("leaf", mask, lo, hi)``. Offsets and sizes are Amaranth's (``layout``'s
    fields and ``size``)."""
    from amaranth.hdl import Shape
    from amaranth.lib import data

    if isinstance(layout, data.StructLayout):
        fields = tuple((name, field.offset, _compiled(field.shape)) for name, field in layout)
        return ("struct", frozenset(name for name, _, _ in fields), fields)
    if isinstance(layout, data.ArrayLayout):
        elem = layout.elem_shape
        size = data.Layout.cast(elem).size if isinstance(elem, data.Layout) else \
            Shape.cast(elem).width
        return ("array", layout.length, size, _compiled(elem))
    shape = Shape.cast(layout)
    if shape.signed:
        lo, hi = -(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1
    else:
        lo, hi = 0, (1 << shape.width) - 1
    return ("leaf", (1 << shape.width) - 1, lo, hi)


def _pack(node, value):
    kind = node[0]
    if kind == "leaf":
        _, mask, lo, hi = node
        if isinstance(value, np.integer):
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise _Misfit([], f"must be an integer in [{lo}, {hi}], not {show(value)}")
        return value & mask
    if kind == "struct":
        _, names, fields = node
        if not isinstance(value, dict) or value.keys() != names:
            raise _Misfit([], f"must be a dict with exactly the fields "
                              f"{[name for name, _, _ in fields]}, "
                              f"not {show(_to_python(value))}")
        word = 0
        for name, offset, sub in fields:
            try:
                word |= _pack(sub, value[name]) << offset
            except _Misfit as e:
                e.path.append(f".{name}")
                raise
        return word
    _, length, size, sub = node
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise _Misfit([], f"must be a sequence of {length} elements, not {show(_to_python(value))}")
    word = 0
    if sub[0] == "leaf":
        # the common case, a lane word: its elements in place, without a call each
        _, mask, lo, hi = sub
        for i, v in enumerate(value):
            if type(v) is not int or not lo <= v <= hi:
                try:
                    v = _pack(sub, v)
                except _Misfit as e:
                    e.path.append(f"[{i}]")
                    raise
            word |= (v & mask) << (i * size)
        return word
    for i, v in enumerate(value):
        try:
            word |= _pack(sub, v) << (i * size)
        except _Misfit as e:
            e.path.append(f"[{i}]")
            raise
    return word


_last_compiled = [(None, None)]


def pack_payload(layout, values):
    """Pack ``values`` into the bits of an Amaranth ``data`` ``layout``; returns an int.

    ``values`` is nested as the layout is: a dict with every field of a
    ``StructLayout``, a sequence for an ``ArrayLayout``; numpy arrays and
    integers are accepted; signed fields take signed values. The bit placement
    is the layout's own (its fields' offsets and its elements' sizes, read
    from Amaranth once per layout), so this equals
    ``layout.const(values).as_value().value``, which is too slow for the
    hundreds of thousands of beats of a large layer; unlike ``const``, a value
    that does not fit its field, or a missing field, raises an error naming
    it. Example::

        from psc.hw.dot_product import input_layout
        word = pack_payload(input_layout(config), {
            "x": x, "w": parify(w_pos, w_neg, config.weight_width),
            "bias": bias, "first": 1, "last": 1})
    """
    # a caller packs many beats of one layout object: find it by identity first, as
    # Amaranth's layout equality (what the cache would compare) walks every field
    last = _last_compiled[0]          # one read of a (layout, tree) pair: thread-safe
    if last[0] is not layout:
        last = _last_compiled[0] = (layout, _compiled(layout))
    try:
        return _pack(last[1], values)
    except _Misfit as e:
        raise ValueError(f"values{''.join(reversed(e.path))} {e.message}") from None
