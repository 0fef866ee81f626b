"""Whole int8 networks on the golden model: the operations between convolutions and :class:`Network`.

A network is an ordered list of layers over named tensors, so that a branch
(the skip connection of a residual block) is just a tensor read twice. Each
operation is defined once here, in integers, bit for bit as the host and the
core compute it:

* ``conv``: a convolution (standard, depthwise, pointwise or fully
  connected) followed by requantisation, :func:`conv_layer`; a PSC layer has
  its own ``W-``, a plain one uses one weight tensor for both phases;
* ``add``: the residual add of two int8 tensors, each with its own
  multiplier, one rounding shift, saturating, :func:`add`;
* ``gap``: global average pooling as a sum with a requantisation,
  :func:`global_avg_pool`;
* ``flatten``: ``(C, H, W) -> (C*H*W, 1, 1)``, :func:`flatten`, so that a
  fully connected layer is a 1x1 convolution over a 1x1 map.

Tensors are ``(C, H, W)`` (or ``(N, C, H, W)`` for a batch), signed
``act_width``-bit integers, symmetric (no zero point). A real value is its
integer times the tensor's scale; the scales live only in the multipliers
and shifts (:func:`quantize_multiplier`) and, for the network's input and
output, in :attr:`Network.input_scale` and :attr:`Network.output_scale`.

A network saves to one ``.npz`` file: a JSON header (format name, version,
widths, the layers with their attributes) and one integer array per
parameter tensor; :meth:`Network.load` refuses a wrong version, a missing
tensor, a bad shape or an out-of-range value, naming the layer.
"""

import json
import math
import zipfile
from dataclasses import dataclass, field

import numpy as np

from psc.model.checks import (BadTypeError, check_bool, check_dims, check_int, check_real,
                              check_signed, check_width, int_array, per_channel, show,
                              signed_range)
from psc.model.golden import conv2d, par, psc_conv2d, requantize

__all__ = ["FORMAT", "VERSION", "OPS", "conv_layer", "add", "global_avg_pool", "flatten",
           "quantize_multiplier", "Layer", "Network"]

#: Name and version of the network file format (:meth:`Network.save`).
FORMAT = "psc-network"
VERSION = 1

#: Operations a layer can be: inputs it reads, parameter arrays, attributes with defaults.
OPS = {
    "conv": {"inputs": 1, "arrays": ("w_pos", "w_neg", "bias", "mult", "shift"),
             "attrs": {"stride": 1, "padding": 0, "groups": 1, "relu": False, "psc": True}},
    "add": {"inputs": 2, "arrays": (),
            "attrs": {"mult_a": 1, "mult_b": 1, "shift": 0, "relu": False}},
    "gap": {"inputs": 1, "arrays": (), "attrs": {"mult": 1, "shift": 0}},
    "flatten": {"inputs": 1, "arrays": (), "attrs": {}},
}
_MAX_SHIFT = 62


def conv_layer(x, w_pos, w_neg, bias, mult, shift, *, stride=1, padding=0, groups=1, relu=False,
               act_width=8, weight_width=8, acc_width=32, mult_width=16):
    """One convolution layer: the golden convolution, then requantisation::

        acc = psc_conv2d(x, W+, W-, bias)      (conv2d(x, W+, bias) when W- is None)
        y   = requantize(acc, mult, shift, relu)

    Parameters
    ----------
    x : int array ``(Cin, H, W)`` or ``(N, Cin, H, W)``
    w_pos, w_neg : int arrays ``(Cout, Cin // groups, K, K)``
        ``w_neg`` None makes a plain (non-PSC) layer with the weights ``w_pos``.
    bias, mult, shift : int arrays ``(Cout,)``
        As in :func:`psc.model.golden.psc_conv2d` and :func:`psc.model.golden.requantize`.

    Returns
    -------
    numpy.ndarray of int64, the requantised activations.
    """
    kw = dict(stride=stride, padding=padding, groups=groups, act_width=act_width,
              weight_width=weight_width, acc_width=acc_width)
    acc = conv2d(x, w_pos, bias, **kw) if w_neg is None else psc_conv2d(x, w_pos, w_neg, bias, **kw)
    return requantize(acc, mult, shift, act_width=act_width, relu=relu, mult_width=mult_width)


def add(a, b, mult_a, mult_b, shift, *, relu=False, act_width=8, mult_width=16):
    """Residual add of two int8 tensors of different scales, requantised and saturating::

        acc = a * mult_a + b * mult_b
        y   = requantize(acc, 1, shift, relu)
            = clamp((acc + 2**(shift-1)) >> shift)     (max(y, 0) with relu)

    so that, with scales ``s_a``, ``s_b`` and ``s_y``,
    ``mult_a / 2**shift ~ s_a / s_y`` and ``mult_b / 2**shift ~ s_b / s_y``.

    Parameters
    ----------
    a, b : int arrays of one shape, ``(C, H, W)`` or ``(N, C, H, W)``
    mult_a, mult_b : int in ``[0, 2**mult_width)``
    shift : int in ``[0, 62]``
    """
    a = check_dims("a", check_signed("a", a, act_width), ("C", "H", "W"), batch=True)
    b = check_dims("b", check_signed("b", b, act_width), ("C", "H", "W"), batch=True)
    if a.shape != b.shape:
        raise ValueError(f"b must have the shape of a {a.shape}, not {b.shape}")
    mult_width = check_width("mult_width", mult_width)
    mult_a = check_int("mult_a", mult_a, 0, (1 << mult_width) - 1)
    mult_b = check_int("mult_b", mult_b, 0, (1 << mult_width) - 1)
    shift = check_int("shift", shift, 0, _MAX_SHIFT)
    return requantize(a * mult_a + b * mult_b, 1, shift, act_width=act_width, relu=relu,
                      mult_width=mult_width)


def global_avg_pool(x, mult, shift, *, act_width=8, mult_width=16):
    """Global average pooling as a sum and a requantisation::

        acc[c] = sum over h, w of x[c, h, w]
        y[c, 0, 0] = requantize(acc, mult, shift)

    The division by ``H * W`` is folded into ``mult / 2**shift``
    (``~ s_x / (s_y * H * W)``). Returns ``(C, 1, 1)`` (or ``(N, C, 1, 1)``).
    """
    x = check_dims("x", check_signed("x", x, act_width), ("C", "H", "W"), batch=True)
    acc = x.sum(axis=(-2, -1), keepdims=True)
    return requantize(acc, mult, shift, act_width=act_width, mult_width=mult_width)


def flatten(x):
    """``(C, H, W) -> (C*H*W, 1, 1)`` in C order: ``y[(c*H + h)*W + w, 0, 0] = x[c, h, w]``.

    The order is ONNX's ``Flatten`` and PyTorch's ``flatten(1)``. A batch
    ``(N, C, H, W)`` keeps its first axis.
    """
    x = check_dims("x", int_array("x", x), ("C", "H", "W"), batch=True)
    return x.reshape(x.shape[:-3] + (-1, 1, 1))


def quantize_multiplier(scale, *, mult_width=16, max_shift=_MAX_SHIFT):
    """The ``(mult, shift)`` of :func:`psc.model.golden.requantize` nearest a real factor.

    ``mult / 2**shift ~ scale`` with the largest ``shift <= max_shift`` that
    keeps ``mult = round(scale * 2**shift)`` below ``2**mult_width`` (most
    precision). ``scale`` is a positive real, or an array of them (one per
    channel; then both results are int64 arrays).
    """
    arr = np.asarray(scale, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"scale must be positive and finite, not {show(scale)}")
    mult_width = check_width("mult_width", mult_width)
    top = 1 << mult_width
    mults, shifts = [], []
    for s in arr.reshape(-1):
        if round(s) >= top:
            raise ValueError(f"scale must be below 2**mult_width = {top}, not {s!r}")
        # frexp: s = f * 2**e with f in [0.5, 1), so s * 2**(mult_width - e) is in [top/2, top)
        shift = min(max_shift, mult_width - math.frexp(s)[1])
        shift = max(shift, 0)
        mult = round(s * 2.0 ** shift)
        if mult >= top:        # rounding reached 2**mult_width
            shift -= 1
            mult = round(s * 2.0 ** shift)
        mults.append(mult)
        shifts.append(shift)
    if arr.ndim == 0:
        return mults[0], shifts[0]
    return (np.array(mults, dtype=np.int64).reshape(arr.shape),
            np.array(shifts, dtype=np.int64).reshape(arr.shape))


@dataclass(frozen=True)
class Layer:
    """One operation of a :class:`Network`: ``op`` (a key of :data:`OPS`) reading the tensors
    ``inputs`` and writing the tensor ``output``.

    Use the constructors :meth:`conv`, :meth:`add`, :meth:`gap` and
    :meth:`flatten`; :class:`Network` checks the layer against its inputs.
    """
    name: str
    op: str
    inputs: tuple
    output: str
    arrays: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)

    @classmethod
    def conv(cls, name, input, output, w_pos, w_neg, bias, mult, shift, *, stride=1, padding=0,
             groups=1, relu=False):
        """A convolution layer (:func:`conv_layer`); ``w_neg=None`` for a plain one."""
        arrays = {"w_pos": w_pos, "bias": bias, "mult": mult, "shift": shift}
        if w_neg is not None:
            arrays["w_neg"] = w_neg
        return cls(name, "conv", (input,), output, arrays,
                   {"stride": stride, "padding": padding, "groups": groups, "relu": relu,
                    "psc": w_neg is not None})

    @classmethod
    def add(cls, name, a, b, output, mult_a, mult_b, shift, *, relu=False):
        """A residual add (:func:`add`)."""
        return cls(name, "add", (a, b), output, {},
                   {"mult_a": mult_a, "mult_b": mult_b, "shift": shift, "relu": relu})

    @classmethod
    def gap(cls, name, input, output, mult, shift):
        """Global average pooling (:func:`global_avg_pool`)."""
        return cls(name, "gap", (input,), output, {}, {"mult": mult, "shift": shift})

    @classmethod
    def flatten(cls, name, input, output):
        """Flatten (:func:`flatten`)."""
        return cls(name, "flatten", (input,), output)

    @property
    def psc(self):
        """True for a PSC convolution (its own ``W-``)."""
        return self.op == "conv" and self.attrs["psc"]

    @property
    def w_neg(self):
        """``W-`` of a convolution: its own for PSC, ``W+`` for a plain layer."""
        return self.arrays["w_neg"] if self.psc else self.arrays["w_pos"]

    def conv_args(self):
        """A convolution's arguments as :func:`psc.host.api.run_layers` takes them (no ``x``)."""
        a = self.arrays
        return {"w_pos": a["w_pos"], "w_neg": self.w_neg, "bias": a["bias"], "mult": a["mult"],
                "shift": a["shift"], "stride": self.attrs["stride"],
                "padding": self.attrs["padding"], "groups": self.attrs["groups"],
                "relu": self.attrs["relu"]}


class Network:
    """An int8 network: layers in execution order over named tensors.

    Parameters
    ----------
    input : str
        Name of the input tensor.
    input_shape : tuple of int
        ``(C, H, W)`` of one input image.
    layers : list of :class:`Layer`
        In execution order; each reads tensors written before it (or the input).
    output : str
        Name of the output tensor.
    input_scale, output_scale : float, optional
        Real value of one integer step of the input and the output.
    act_width, weight_width, acc_width, mult_width : int
        Widths of the integers (as in :func:`psc.model.golden.requantize`).
    meta : dict, optional
        JSON-serialisable notes carried by the file (origin, labels).

    Raises
    ------
    ValueError
        For a layer that reads an unknown tensor, has a missing or badly
        shaped parameter or one out of its range, naming the layer
        (:class:`~psc.model.checks.BadTypeError` for a wrong type).
    """

    def __init__(self, input, input_shape, layers, output, *, input_scale=None,
                 output_scale=None, act_width=8, weight_width=8, acc_width=32, mult_width=16,
                 meta=None):
        self.act_width = check_width("act_width", act_width)
        self.weight_width = check_width("weight_width", weight_width)
        self.acc_width = check_width("acc_width", acc_width, maximum=64)
        self.mult_width = check_width("mult_width", mult_width)
        self.input_scale = _scale("input_scale", input_scale)
        self.output_scale = _scale("output_scale", output_scale)
        self.meta = dict(meta or {})
        if not isinstance(input, str) or not input:
            raise BadTypeError(f"input must be a tensor name (a non-empty str), not {show(input)}")
        shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
        if shape is None or len(shape) != 3 or not all(
                isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0
                for d in shape):
            raise ValueError(f"input_shape must be (C, H, W) of positive ints, "
                             f"not {show(input_shape)}")
        self.input = input
        self.input_shape = tuple(int(d) for d in shape)
        if isinstance(layers, (str, bytes, dict)) or not hasattr(layers, "__iter__"):
            raise BadTypeError(f"layers must be a list of psc.model.network.Layer, "
                               f"not {show(layers)}")
        self.layers = []
        self.shapes = {input: self.input_shape}
        for i, layer in enumerate(layers):
            self.layers.append(self._checked(i, layer))
        if not self.layers:
            raise ValueError("layers must hold at least one layer, not none")
        if output not in self.shapes:
            raise ValueError(f"output must name a tensor of the network "
                             f"({', '.join(map(repr, self.shapes))}), not {show(output)}")
        self.output = output

    # --- checks -------------------------------------------------------------

    def _checked(self, i, layer):
        """``layer`` with its arrays as int64 and its attributes checked; records its output
        shape. Every error names the layer."""
        if not isinstance(layer, Layer):
            raise BadTypeError(f"layers[{i}] must be a psc.model.network.Layer, not {show(layer)}")
        name = layer.name
        if not isinstance(name, str) or not name:
            raise BadTypeError(f"layers[{i}] must have a name (a non-empty str), not {show(name)}")
        try:
            return self._check_layer(layer)
        except BadTypeError as e:
            raise BadTypeError(f"layer {name!r}: {e}") from None
        except ValueError as e:
            raise ValueError(f"layer {name!r}: {e}") from None

    def _check_layer(self, layer):
        if layer.op not in OPS:
            raise ValueError(f"op must be one of {', '.join(map(repr, OPS))}, not {show(layer.op)}")
        spec = OPS[layer.op]
        if layer.name in (other.name for other in self.layers):
            raise ValueError("the name is used by an earlier layer")
        inputs = tuple(layer.inputs)
        if len(inputs) != spec["inputs"]:
            raise ValueError(f"a {layer.op} layer reads {spec['inputs']} tensor(s), "
                             f"not {len(inputs)}: {show(inputs)}")
        for t in inputs:
            if t not in self.shapes:
                raise ValueError(f"reads tensor {t!r}, which no earlier layer writes "
                                 f"(known: {', '.join(map(repr, self.shapes))})")
        if not isinstance(layer.output, str) or not layer.output:
            raise BadTypeError(f"output must be a tensor name, not {show(layer.output)}")
        if layer.output in self.shapes:
            raise ValueError(f"writes tensor {layer.output!r}, which is already written")
        unknown = sorted(set(layer.attrs) - set(spec["attrs"]))
        if unknown:
            raise ValueError(f"unknown attribute(s) {unknown}; a {layer.op} layer has "
                             f"{sorted(spec['attrs'])}")
        attrs = {**spec["attrs"], **layer.attrs}
        arrays = dict(layer.arrays)
        shape = self.shapes[inputs[0]]
        if layer.op == "conv":
            attrs["psc"] = check_bool("psc", attrs["psc"])
            needed = [n for n in spec["arrays"] if n != "w_neg" or attrs["psc"]]
            missing = [n for n in needed if n not in arrays]
            extra = sorted(set(arrays) - set(needed))
            if missing or extra:
                raise ValueError(f"missing tensor(s) {missing}" if missing else
                                 f"unexpected tensor(s) {extra} (w_neg only with psc=True)")
            w_pos = check_dims("w_pos", check_signed("w_pos", arrays["w_pos"], self.weight_width),
                               ("Cout", "Cin // groups", "K", "K"))
            cout = w_pos.shape[0]
            arrays["w_pos"] = w_pos
            if attrs["psc"]:
                arrays["w_neg"] = check_signed("w_neg", arrays["w_neg"], self.weight_width)
            lo, hi = signed_range(self.acc_width)
            arrays["bias"] = per_channel("bias", arrays["bias"], cout, lo, hi)
            arrays["mult"] = per_channel("mult", arrays["mult"], cout, 0,
                                         (1 << self.mult_width) - 1)
            arrays["shift"] = per_channel("shift", arrays["shift"], cout, 0, _MAX_SHIFT)
            for a in ("stride", "groups"):
                attrs[a] = check_int(a, attrs[a], 1)
            attrs["padding"] = check_int("padding", attrs["padding"], 0)
            attrs["relu"] = check_bool("relu", attrs["relu"])
            checked = Layer(layer.name, layer.op, inputs, layer.output, arrays, attrs)
            # the golden model checks the shapes (and the widths' int64 bound) itself
            out = self._apply(checked, [np.zeros(shape, dtype=np.int64)]).shape
        else:
            if arrays:
                raise ValueError(f"a {layer.op} layer has no tensors, not {sorted(arrays)}")
            if layer.op == "add":
                other = self.shapes[inputs[1]]
                if other != shape:
                    raise ValueError(f"adds tensors of different shapes: {inputs[0]!r} {shape} "
                                     f"and {inputs[1]!r} {other}")
                for a in ("mult_a", "mult_b"):
                    attrs[a] = check_int(a, attrs[a], 0, (1 << self.mult_width) - 1)
                attrs["shift"] = check_int("shift", attrs["shift"], 0, _MAX_SHIFT)
                attrs["relu"] = check_bool("relu", attrs["relu"])
                out = shape
            elif layer.op == "gap":
                attrs["mult"] = check_int("mult", attrs["mult"], 0, (1 << self.mult_width) - 1)
                attrs["shift"] = check_int("shift", attrs["shift"], 0, _MAX_SHIFT)
                out = (shape[0], 1, 1)
            else:
                out = (shape[0] * shape[1] * shape[2], 1, 1)
            checked = Layer(layer.name, layer.op, inputs, layer.output, arrays, attrs)
        self.shapes[layer.output] = tuple(out)
        return checked

    # --- running --------------------------------------------------------------

    def _apply(self, layer, xs):
        """The golden result of ``layer`` on its input tensors ``xs`` (batched or not)."""
        a = layer.attrs
        if layer.op == "conv":
            arr = layer.arrays
            return conv_layer(xs[0], arr["w_pos"], arr.get("w_neg"), arr["bias"], arr["mult"],
                              arr["shift"], stride=a["stride"], padding=a["padding"],
                              groups=a["groups"], relu=a["relu"], act_width=self.act_width,
                              weight_width=self.weight_width, acc_width=self.acc_width,
                              mult_width=self.mult_width)
        if layer.op == "add":
            return add(xs[0], xs[1], a["mult_a"], a["mult_b"], a["shift"], relu=a["relu"],
                       act_width=self.act_width, mult_width=self.mult_width)
        if layer.op == "gap":
            return global_avg_pool(xs[0], a["mult"], a["shift"], act_width=self.act_width,
                                   mult_width=self.mult_width)
        return flatten(xs[0])

    def apply(self, layer, xs):
        """The golden result of one of this network's layers on its inputs ``xs`` (a list of
        arrays, batched ``(N, C, H, W)`` or not); errors name the layer."""
        try:
            return self._apply(layer, xs)
        except ValueError as e:
            raise type(e)(f"layer {layer.name!r}: {e}") from None

    def check_images(self, images):
        """``images`` as an int64 batch ``(N, C, H, W)`` of this network's input shape (one
        image ``(C, H, W)`` becomes a batch of one), checked for type, shape and range."""
        x = check_signed("images", images, self.act_width)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[1:] != self.input_shape or x.shape[0] == 0:
            raise ValueError(f"images must have shape (N, {', '.join(map(str, self.input_shape))})"
                             f" with N >= 1 (or one image {self.input_shape}), not {x.shape}")
        return x

    def run(self, images, *, keep=False):
        """Run ``images`` (int, ``(N, C, H, W)`` or one ``(C, H, W)``) on the golden model.

        Returns the output tensor ``(N, ...)`` or, with ``keep``, a dict of
        every tensor of the network by name.
        """
        tensors = {self.input: self.check_images(images)}
        for layer in self.layers:
            tensors[layer.output] = self.apply(layer, [tensors[t] for t in layer.inputs])
        return tensors if keep else tensors[self.output]

    def classify(self, images):
        """Argmax of the output over its channels, per image: ``(N,)`` int64."""
        y = self.run(images)
        return y.reshape(y.shape[0], -1).argmax(axis=1)

    def quantize_input(self, images):
        """Real-valued images as the network's integer input: ``clamp(rint(x / input_scale))``
        (round half to even, as ONNX's ``QuantizeLinear``)."""
        if self.input_scale is None:
            raise ValueError("this network has no input_scale; give it integer images")
        x = np.asarray(images, dtype=np.float64)
        lo, hi = signed_range(self.act_width)
        return np.clip(np.rint(x / self.input_scale), lo, hi).astype(np.int64)

    # --- reports -------------------------------------------------------------

    def macs(self, layer):
        """Multiply-accumulates of one ``layer`` per image (0 for layers without weights)."""
        if layer.op != "conv":
            return 0
        cout, cin_g, k, _ = layer.arrays["w_pos"].shape
        _, ho, wo = self.shapes[layer.output]
        return ho * wo * cout * cin_g * k * k

    def weight_bytes(self, layer):
        """Bytes of a layer's weights at ``weight_width`` bits: ``W+`` and ``W-`` for PSC,
        one tensor for a plain layer (biases and requantisation not counted)."""
        if layer.op != "conv":
            return 0
        n = layer.arrays["w_pos"].size * (2 if layer.psc else 1)
        return -(-n * self.weight_width // 8)

    def summary(self, images=None):
        """Per layer: ``name``, ``op``, ``psc``, ``inputs``, ``in_shape``, ``out_shape``,
        ``macs``, ``weight_bytes`` and, given ``images``, ``par``: the positive activation
        ratio (:func:`psc.model.golden.par`) of the layer's input over those images (both
        inputs of an add)."""
        tensors = self.run(images, keep=True) if images is not None else None
        rows = []
        for layer in self.layers:
            row = {"name": layer.name, "op": layer.op, "psc": layer.psc,
                   "inputs": list(layer.inputs), "in_shape": self.shapes[layer.inputs[0]],
                   "out_shape": self.shapes[layer.output], "macs": self.macs(layer),
                   "weight_bytes": self.weight_bytes(layer)}
            if tensors is not None:
                row["par"] = par(np.concatenate([tensors[t].reshape(-1) for t in layer.inputs]))
            rows.append(row)
        return rows

    # --- file -----------------------------------------------------------------

    def header(self):
        """The JSON header of the file (:meth:`save`), without the arrays."""
        return {"format": FORMAT, "version": VERSION, "input": self.input,
                "input_shape": list(self.input_shape), "output": self.output,
                "input_scale": self.input_scale, "output_scale": self.output_scale,
                "widths": {"act": self.act_width, "weight": self.weight_width,
                           "acc": self.acc_width, "mult": self.mult_width},
                "meta": self.meta,
                "layers": [{"name": l.name, "op": l.op, "inputs": list(l.inputs),
                            "output": l.output, "attrs": _plain(l.attrs),
                            "arrays": sorted(l.arrays)} for l in self.layers]}

    def save(self, path):
        """Write the network to ``path`` (``.npz``: a JSON header and one array per
        parameter tensor, named ``<layer index>.<tensor>``)."""
        arrays = {f"{i}.{n}": _compact(a) for i, l in enumerate(self.layers)
                  for n, a in l.arrays.items()}
        header = np.frombuffer(json.dumps(self.header()).encode(), dtype=np.uint8)
        with open(path, "wb") as f:
            np.savez_compressed(f, header=header, **arrays)

    @classmethod
    def load(cls, path):
        """The network :meth:`save` wrote to ``path``.

        Raises ``ValueError`` for a file that is not a network file, of another
        format version, or with a missing tensor, a bad shape or an
        out-of-range value (naming the layer).
        """
        try:
            with np.load(path, allow_pickle=False) as f:
                data = {k: f[k] for k in f.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise ValueError(f"{path} is not a PSC network file: {' '.join(str(e).split())}") \
                from None
        if "header" not in data:
            raise ValueError(f"{path} is not a PSC network file: it has no header")
        try:
            head = json.loads(data.pop("header").tobytes().decode())
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} has an unreadable header: {e}") from None
        if not isinstance(head, dict) or head.get("format") != FORMAT:
            raise ValueError(f"{path} is not a PSC network file (format "
                             f"{show(head.get('format') if isinstance(head, dict) else head)}, "
                             f"expected {FORMAT!r})")
        if head.get("version") != VERSION:
            raise ValueError(f"{path} has format version {show(head.get('version'))}; this psc "
                             f"reads version {VERSION}")
        try:
            widths = head["widths"]
            layers = []
            for i, spec in enumerate(head["layers"]):
                arrays = {}
                for n in spec["arrays"]:
                    key = f"{i}.{n}"
                    if key not in data:
                        raise ValueError(f"layer {spec['name']!r}: tensor {n!r} is missing "
                                         f"from {path}")
                    arrays[n] = data[key]
                layers.append(Layer(spec["name"], spec["op"], tuple(spec["inputs"]),
                                    spec["output"], arrays, spec["attrs"]))
            return cls(head["input"], head["input_shape"], layers, head["output"],
                       input_scale=head["input_scale"], output_scale=head["output_scale"],
                       act_width=widths["act"], weight_width=widths["weight"],
                       acc_width=widths["acc"], mult_width=widths["mult"], meta=head["meta"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path} has a malformed header: missing or wrong {e}") from None


def _scale(name, value):
    """A tensor's scale: None, or a positive finite real."""
    if value is None:
        return None
    value = check_real(name, value, 0.0, math.inf)
    if value <= 0:
        raise ValueError(f"{name} must be a positive number or None, not {value!r}")
    return value


def _plain(attrs):
    """Attributes as plain JSON values (numpy integers and bools become Python ones)."""
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items()}


def _compact(arr):
    """``arr`` in the narrowest signed integer dtype that holds it (smaller files)."""
    for dt in (np.int8, np.int16, np.int32):
        info = np.iinfo(dt)
        if arr.size == 0 or (arr.min() >= info.min and arr.max() <= info.max):
            return arr.astype(dt)
    return arr.astype(np.int64)
