"""Import a statically quantised int8 ONNX model (QDQ form) as a :class:`~psc.model.network.Network`.

The importer reads what onnxruntime's static quantiser writes with
``quant_format=QDQ``, ``per_channel=True``, int8 activations and weights and
``ActivationSymmetric``/``WeightSymmetric``: ``QuantizeLinear`` /
``DequantizeLinear`` pairs around float operators, int8 weights and int32
biases behind ``DequantizeLinear``. It maps

* ``Conv`` (standard, depthwise, pointwise), ``Gemm`` and ``MatMul`` (without
  a bias: the quantiser rounds a ``MatMul``'s output before an ``Add`` of one)
  to convolution layers; a ``Relu``, or a ``Clip`` from 0
  whose top the output's int8 range does not exceed, folds into the layer
  before it (one rounding where onnxruntime has two);
* ``Add`` of two quantised tensors to a residual add, ``GlobalAveragePool``
  to pooling, ``Flatten`` to flatten;
* a PSC convolution, written in plain ONNX as the convolution of the
  interleaved phases of its input::

      p = Unsqueeze(Relu(x), [2]);  n = Unsqueeze(Min(x, 0), [2])
      Conv(Reshape(Concat([p, n], axis=2), (N, 2C, H, W)), W, B, group=g)

  (``Gemm`` after ``Flatten`` likewise, with the shape ``(N, 2C)``), where
  ``W[:, 2j] = W+[:, j]`` and ``W[:, 2j+1] = W-[:, j]``: channel ``2j`` of the
  convolution's input is ``max(x_j, 0)`` and ``2j + 1`` is ``min(x_j, 0)``, so
  one weight tensor (one per-channel scale) holds both phases and the
  grouping of a depthwise layer is kept. The six nodes between ``x`` and the
  convolution stay float (the exporter lists them in the quantiser's
  ``nodes_to_exclude``); the quantiser's ``QuantizeLinear`` in front of the
  convolution must keep ``x``'s scale, which it does when it calibrates that
  tensor's range, ``[min(x), max(x)]``.

Scales become the integer multiplier and shift of
:func:`psc.model.golden.requantize` (:func:`psc.model.network.quantize_multiplier`).
Anything else (another operator, a zero point other than 0, uint8, a
requantisation without a layer, an unsupported attribute or shape) is
refused with the node's name and the reason, never approximated.
"""

from dataclasses import dataclass, field

import numpy as np

from psc.model.checks import BadTypeError, show
from psc.model.network import Layer, Network, quantize_multiplier

__all__ = ["OnnxImportError", "import_onnx", "onnxruntime_run", "psc_pattern", "psc_weights",
           "quantize",
           "SUPPORTED_OPS"]

#: Operators the importer maps (with QuantizeLinear and DequantizeLinear).
SUPPORTED_OPS = ("Conv", "Gemm", "MatMul", "Relu", "Clip", "Add", "GlobalAveragePool", "Flatten",
                 "Min", "Unsqueeze", "Concat", "Reshape")
_RTOL = 1e-5


class OnnxImportError(ValueError):
    """A model the importer cannot map exactly; the message names the node and the reason."""


@dataclass
class _Q:
    """A float tensor that is an integer network tensor times ``scale``, in one of the forms of
    the PSC pattern: ``x`` itself, ``pos``/``neg`` (its phases), ``pos_u``/``neg_u``
    (unsqueezed), ``stack`` (concatenated) and ``psc`` (interleaved, a convolution's input)."""
    tensor: str
    scale: float
    form: str = "x"


@dataclass
class _Const:
    """An initializer behind ``DequantizeLinear``: integers, scale(s), axis."""
    q: np.ndarray
    scale: np.ndarray
    axis: int


@dataclass
class _Pending:
    """The float output of a layer whose output scale comes with the next ``QuantizeLinear``."""
    index: int                      # into _Importer.specs


@dataclass
class _Spec:
    """A layer under construction."""
    node: str
    op: str
    inputs: tuple
    arrays: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)
    acc_scale: object = None        # conv: per channel; add: (s_a, s_b); gap: scalar
    relu: bool = False
    clip_max: float | None = None
    out_scale: float | None = None
    output: str | None = None
    shape: tuple = ()


def _load(model):
    import onnx
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        try:
            return onnx.load(model)
        except Exception as e:  # onnx raises several kinds for a bad file
            raise OnnxImportError(f"{model} is not a readable ONNX model: "
                                  f"{' '.join(str(e).split())[:200]}") from None
    raise BadTypeError(f"model must be an onnx.ModelProto or a path, not {show(model)}")


class _Importer:
    def __init__(self, model):
        from onnx import numpy_helper
        self.graph = model.graph
        self.inits = {i.name: numpy_helper.to_array(i) for i in self.graph.initializer}
        self.vals = {}       # float tensor name -> _Q, _Const, _Pending, np.ndarray, ("qi", _Q)
        self.specs = []
        self.shapes = {}     # network tensor -> (C, H, W)
        self.producer = {}   # network tensor -> index of the spec that writes it
        self.consumers = {}
        for node in self.graph.node:
            for t in node.input:
                self.consumers[t] = self.consumers.get(t, 0) + 1
        for o in self.graph.output:
            self.consumers[o.name] = self.consumers.get(o.name, 0) + 1
        self.count = 0

    # --- helpers --------------------------------------------------------------

    def fail(self, node, reason):
        name = node.name or f"#{list(self.graph.node).index(node)}"
        raise OnnxImportError(f"node {name!r} ({node.op_type}): {reason}")

    def attrs(self, node):
        from onnx import helper
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def get(self, node, i, *kinds):
        if i >= len(node.input) or not node.input[i]:
            self.fail(node, f"input {i} is missing")
        name = node.input[i]
        if name in self.vals:
            v = self.vals[name]
        elif name in self.inits:
            v = self.inits[name]
        else:
            self.fail(node, f"input {name!r} is not produced by a node the importer mapped "
                            f"before it")
        if kinds and not isinstance(v, kinds):
            what = {_Q: "a quantised tensor", _Const: "a quantised initializer",
                    _Pending: "a layer's float output", np.ndarray: "a float initializer",
                    tuple: "a QuantizeLinear output"}
            self.fail(node, f"input {name!r} must be {' or '.join(what[k] for k in kinds)}, "
                            f"not {what.get(type(v), type(v).__name__)}")
        return v

    def new_tensor(self, hint):
        self.count += 1
        return f"t{self.count}_{hint}"

    def zero_point(self, node, index, dtype, *, required=False):
        """Check that the zero point at ``node.input[index]`` is 0 of ``dtype``; an absent one
        is 0 of the quantised tensor's type, which for a ``QuantizeLinear`` (``required``)
        is uint8."""
        zp = self.inits.get(node.input[index]) if len(node.input) > index and node.input[index] \
            else None
        if zp is None:
            if required:
                self.fail(node, "has no zero point, so its output is uint8; only int8 with "
                                "zero point 0 is supported")
            return
        if zp.dtype != dtype or np.any(zp != 0):
            self.fail(node, f"zero point must be 0 in {np.dtype(dtype).name} "
                            f"(symmetric quantisation), not {show(zp.tolist())} of "
                            f"dtype {zp.dtype}")

    def scale_of(self, node, index):
        s = self.inits.get(node.input[index])
        if s is None:
            self.fail(node, f"scale {node.input[index]!r} must be an initializer")
        return np.asarray(s, dtype=np.float64)

    def same_scale(self, a, b):
        return abs(a - b) <= _RTOL * max(abs(a), abs(b))

    # --- the walk -------------------------------------------------------------

    def run(self):
        inputs = [i for i in self.graph.input if i.name not in self.inits]
        if len(inputs) != 1:
            raise OnnxImportError(f"the model must have one input, not {len(inputs)} "
                                  f"({', '.join(i.name for i in inputs)})")
        inp = inputs[0]
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in inp.type.tensor_type.shape.dim]
        if len(dims) != 4 or None in dims[1:] or 0 in dims[1:]:
            raise OnnxImportError(f"input {inp.name!r} must have the static shape (N, C, H, W), "
                                  f"not {dims}")
        self.input = inp.name
        self.input_shape = tuple(dims[1:])
        self.input_scale = None
        self.vals[inp.name] = "input"
        for node in self.graph.node:
            handler = getattr(self, f"op_{node.op_type}", None)
            if node.domain not in ("", "ai.onnx") or handler is None:
                self.fail(node, f"operator {node.domain + '.' if node.domain else ''}"
                                f"{node.op_type} is not supported (supported: "
                                f"{', '.join(SUPPORTED_OPS)}, QuantizeLinear, DequantizeLinear)")
            handler(node)
        outs = list(self.graph.output)
        if len(outs) != 1:
            raise OnnxImportError(f"the model must have one output, not {len(outs)}")
        out = self.vals.get(outs[0].name)
        if not isinstance(out, _Q) or out.form != "x":
            raise OnnxImportError(f"output {outs[0].name!r} must be the DequantizeLinear of a "
                                  f"quantised layer output, not "
                                  f"{type(out).__name__ if out is not None else 'unmapped'}")
        layers = [self.layer(s) for s in self.specs]
        return Network(self.input, self.input_shape, layers, out.tensor,
                       input_scale=self.input_scale, output_scale=out.scale,
                       meta={"source": "onnx", "graph": self.graph.name})

    def layer(self, s):
        if s.op == "conv":
            m, sh = quantize_multiplier(np.asarray(s.acc_scale) / s.out_scale)
            a = s.arrays
            return Layer.conv(s.node, s.inputs[0], s.output, a["w_pos"], a.get("w_neg"),
                              a["bias"], m, sh, relu=s.relu, **s.attrs)
        if s.op == "add":
            sa, sb = s.acc_scale
            big = max(sa, sb) / s.out_scale
            _, shift = quantize_multiplier(big)
            ma, mb = (round(v / s.out_scale * 2.0 ** shift) for v in (sa, sb))
            return Layer.add(s.node, s.inputs[0], s.inputs[1], s.output, ma, mb, shift,
                             relu=s.relu)
        if s.op == "flatten":
            return Layer.flatten(s.node, s.inputs[0], s.output)
        m, sh = quantize_multiplier(s.acc_scale / s.out_scale)
        return Layer.gap(s.node, s.inputs[0], s.output, m, sh)

    # --- quantisation nodes ---------------------------------------------------

    def op_QuantizeLinear(self, node):
        src = node.input[0]
        v = self.vals.get(src, self.inits.get(src))
        s = self.scale_of(node, 1)
        if s.ndim:
            self.fail(node, f"activation scale must be one number (per tensor), not shape "
                            f"{s.shape}")
        s = float(s)
        self.zero_point(node, 2, np.int8, required=True)
        if isinstance(v, str):            # the graph's input
            self.input_scale = s
            self.shapes[self.input] = self.input_shape
            q = _Q(self.input, s)
        elif isinstance(v, _Q):
            if not self.same_scale(v.scale, s):
                self.fail(node, f"requantises a tensor from scale {v.scale:.6g} to {s:.6g} "
                                f"with no layer between; the network has no such operation")
            q = v
        elif isinstance(v, _Pending):
            spec = self.specs[v.index]
            if spec.clip_max is not None and spec.clip_max < 127 * s * (1 - 1e-6):
                self.fail(node, f"the Clip before it limits to {spec.clip_max:.6g}, below the "
                                f"int8 range's top {127 * s:.6g}: the core clamps only at "
                                f"the int8 range")
            spec.out_scale = s
            if spec.output is None:
                spec.output = self.new_tensor(spec.op)
                self.producer[spec.output] = v.index
                self.shapes[spec.output] = spec.shape
            q = _Q(spec.output, s)
        else:
            self.fail(node, f"quantises {src!r}, which is not an output of a mapped layer")
        self.vals[node.output[0]] = ("qi", q)

    def op_DequantizeLinear(self, node):
        src = node.input[0]
        if src in self.inits:
            q = self.inits[src]
            if q.dtype not in (np.int8, np.int32):
                self.fail(node, f"initializer {src!r} must be int8 (weights) or int32 (bias), "
                                f"not {q.dtype}")
            self.zero_point(node, 2, q.dtype.type)
            s = self.scale_of(node, 1)
            axis = self.attrs(node).get("axis", 1)
            self.vals[node.output[0]] = _Const(q.astype(np.int64), s, axis)
            return
        v = self.vals.get(src)
        if not (isinstance(v, tuple) and v[0] == "qi"):
            self.fail(node, f"dequantises {src!r}, which is not a QuantizeLinear output")
        s = float(self.scale_of(node, 1))
        if not self.same_scale(v[1].scale, s):
            self.fail(node, f"dequantises with scale {s:.6g}, not the {v[1].scale:.6g} "
                            f"it was quantised with")
        self.zero_point(node, 2, np.int8)
        self.vals[node.output[0]] = v[1]

    # --- layers ---------------------------------------------------------------

    def weights(self, node, w, cout_axis):
        """Integer weights and per-output-channel scales of a quantised initializer."""
        if not isinstance(w, _Const) or w.q.dtype != np.int64:
            self.fail(node, "weights must be an int8 initializer behind DequantizeLinear")
        s = w.scale
        if s.ndim == 0:
            s = np.full(w.q.shape[cout_axis], float(s))
        elif s.shape != (w.q.shape[cout_axis],) or w.axis % w.q.ndim != cout_axis:
            self.fail(node, f"weight scales must be per tensor or per output channel (axis "
                            f"{cout_axis}), not shape {s.shape} on axis {w.axis}")
        return w.q, s

    def bias(self, node, b, acc_scale, cout):
        if b is None:
            return np.zeros(cout, dtype=np.int64)
        if not isinstance(b, _Const):
            self.fail(node, "bias must be an int32 initializer behind DequantizeLinear "
                            "(a float bias is not quantised)")
        if b.q.shape != (cout,):
            self.fail(node, f"bias must have shape ({cout},), not {b.q.shape}")
        s = np.broadcast_to(b.scale, (cout,))
        if not np.allclose(s, acc_scale, rtol=1e-4, atol=0):
            self.fail(node, "bias scale must be input scale x weight scale per channel "
                            "(as the quantiser writes it)")
        return b.q

    def conv_input(self, node, x):
        if x.form not in ("x", "psc"):
            self.fail(node, f"input is the {x.form!r} stage of a PSC pattern, not x or the "
                            f"full pattern (Relu, Min, Unsqueeze, Concat, Reshape)")
        return x.form == "psc"

    def add_conv(self, node, x, w, bias_const, k, stride, padding, groups):
        """A pending convolution layer: ``w`` integer ``(Cout, Cin', K, K)``, scales per
        output channel."""
        psc = self.conv_input(node, x)
        wq, ws = w
        cin, h, wd = self.shapes[x.tensor]
        cout = wq.shape[0]
        if psc:
            if wq.shape[1] * groups != 2 * cin:
                self.fail(node, f"weights of shape {wq.shape} with group={groups} do not read "
                                f"the 2 x {cin} channels of the PSC input")
            arrays = {"w_pos": wq[:, 0::2], "w_neg": wq[:, 1::2]}
        else:
            if wq.shape[1] * groups != cin:
                self.fail(node, f"weights of shape {wq.shape} with group={groups} do not read "
                                f"the {cin} channels of the input")
            arrays = {"w_pos": wq}
        acc_scale = x.scale * ws
        arrays["bias"] = self.bias(node, bias_const, acc_scale, cout)
        ho, wo = (h + 2 * padding - k) // stride + 1, (wd + 2 * padding - k) // stride + 1
        if ho < 1 or wo < 1:
            self.fail(node, f"kernel {k}x{k} does not fit the input {h}x{wd}")
        spec = _Spec(node.name or node.op_type, "conv", (x.tensor,), arrays,
                     {"stride": stride, "padding": padding, "groups": groups},
                     acc_scale=acc_scale)
        self.specs.append(spec)
        self.vals[node.output[0]] = _Pending(len(self.specs) - 1)
        spec.shape = (cout, ho, wo)

    def op_Conv(self, node):
        x = self.get(node, 0, _Q)
        a = self.attrs(node)
        w = self.get(node, 1, _Const)
        if w.q.ndim != 4:
            self.fail(node, f"only 2-D convolutions are supported, not weights of shape "
                            f"{w.q.shape}")
        k = w.q.shape[2]
        if w.q.shape[3] != k or a.get("kernel_shape", [k, k]) != [k, k]:
            self.fail(node, f"kernels must be square, not {list(w.q.shape[2:])}")
        strides = a.get("strides", [1, 1])
        pads = a.get("pads", [0, 0, 0, 0])
        if len(set(strides)) != 1:
            self.fail(node, f"strides must be equal in both dimensions, not {strides}")
        if len(set(pads)) != 1:
            self.fail(node, f"pads must be equal on all sides, not {pads}")
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            self.fail(node, f"dilations must be 1, not {a['dilations']}")
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            self.fail(node, f"auto_pad must be NOTSET (explicit pads), not {a['auto_pad']}")
        b = self.get(node, 2, _Const) if len(node.input) > 2 and node.input[2] else None
        self.add_conv(node, x, self.weights(node, w, 0), b, k, strides[0], pads[0],
                      a.get("group", 1))

    def flat_input(self, node, x):
        c, h, w = self.shapes[x.tensor]
        if (h, w) != (1, 1):
            self.fail(node, f"input must be flat (Flatten before it), not of shape {(c, h, w)}")

    def op_Gemm(self, node):
        x = self.get(node, 0, _Q)
        self.flat_input(node, x)
        a = self.attrs(node)
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            self.fail(node, "only transA=0, alpha=1 and beta=1 are supported")
        w = self.get(node, 1, _Const)
        trans = a.get("transB", 0)
        wq, ws = self.weights(node, w, 0 if trans else 1)
        if not trans:
            wq = wq.T
        b = self.get(node, 2, _Const) if len(node.input) > 2 and node.input[2] else None
        self.add_conv(node, x, (wq[:, :, None, None], ws), b, 1, 1, 0, 1)

    def op_MatMul(self, node):
        x = self.get(node, 0, _Q)
        self.flat_input(node, x)
        w = self.get(node, 1, _Const)
        if w.q.ndim != 2:
            self.fail(node, f"the second input must be a 2-D weight matrix, not {w.q.shape}")
        wq, ws = self.weights(node, w, 1)
        self.add_conv(node, x, (wq.T[:, :, None, None], ws), None, 1, 1, 0, 1)

    def op_Add(self, node):
        a, b = self.get(node, 0), self.get(node, 1)
        if isinstance(a, (_Const, np.ndarray)) or isinstance(b, (_Const, np.ndarray)):
            # the quantiser rounds a MatMul's output and its bias to int8 apart before adding
            self.fail(node, "adds a constant; a bias maps only as the third input of Conv or "
                            "Gemm (export a fully connected layer with a bias as Gemm)")
        for i, v in enumerate((a, b)):
            if not isinstance(v, _Q) or v.form != "x":
                self.fail(node, f"input {i} must be a quantised tensor (DequantizeLinear "
                                f"output), not {type(v).__name__}")
        if self.shapes[a.tensor] != self.shapes[b.tensor]:
            self.fail(node, f"adds tensors of shapes {self.shapes[a.tensor]} and "
                            f"{self.shapes[b.tensor]}; broadcasting is not supported")
        spec = _Spec(node.name or "add", "add", (a.tensor, b.tensor), acc_scale=(a.scale, b.scale))
        spec.shape = self.shapes[a.tensor]
        self.specs.append(spec)
        self.vals[node.output[0]] = _Pending(len(self.specs) - 1)

    def op_GlobalAveragePool(self, node):
        x = self.get(node, 0, _Q)
        if x.form != "x":
            self.fail(node, "input must be a quantised tensor")
        c, h, w = self.shapes[x.tensor]
        spec = _Spec(node.name or "gap", "gap", (x.tensor,), acc_scale=x.scale / (h * w))
        spec.shape = (c, 1, 1)
        self.specs.append(spec)
        self.vals[node.output[0]] = _Pending(len(self.specs) - 1)

    def op_Flatten(self, node):
        x = self.get(node, 0, _Q)
        if self.attrs(node).get("axis", 1) != 1 or x.form != "x":
            self.fail(node, "only Flatten(axis=1) of a quantised tensor is supported")
        c, h, w = self.shapes[x.tensor]
        if (h, w) == (1, 1):
            self.vals[node.output[0]] = x
            return
        out = self.new_tensor("flat")
        spec = _Spec(node.name or "flatten", "flatten", (x.tensor,), output=out)
        self.specs.append(spec)
        self.shapes[out] = (c * h * w, 1, 1)
        self.vals[node.output[0]] = _Q(out, x.scale)

    # --- activations and the PSC pattern --------------------------------------

    def fold_activation(self, node, x, clip_max):
        """Relu/Clip on a layer's output read by nothing else: the layer gets ``relu``."""
        idx = self.producer.get(x.tensor)
        if idx is None or self.specs[idx].op not in ("conv", "add") or self.specs[idx].relu:
            return False
        if self.consumers.get(node.input[0], 0) != 1:
            return False
        spec = self.specs[idx]
        spec.relu, spec.clip_max = True, clip_max
        # the next QuantizeLinear sets the layer's output scale anew
        self.producer.pop(spec.output)
        self.shapes.pop(spec.output)
        spec.output = None
        self.vals[node.output[0]] = _Pending(idx)
        return True

    def activation(self, node, clip_max=None):
        x = self.get(node, 0, _Q, _Pending)
        if isinstance(x, _Pending):
            spec = self.specs[x.index]
            if spec.op not in ("conv", "add") or spec.relu:
                self.fail(node, f"cannot fold into the {spec.op} layer before it")
            spec.relu, spec.clip_max = True, clip_max
            self.vals[node.output[0]] = x
            return
        if x.form == "x" and self.fold_activation(node, x, clip_max):
            return
        if clip_max is not None or x.form != "x":
            self.fail(node, "only a Relu of a PSC layer's input, or an activation right after "
                            "a convolution or an add, is supported")
        self.vals[node.output[0]] = _Q(x.tensor, x.scale, "pos")

    def op_Relu(self, node):
        self.activation(node)

    def op_Clip(self, node):
        a = self.attrs(node)
        lo, hi = a.get("min"), a.get("max")
        if len(node.input) > 1 and node.input[1]:
            lo = self.get(node, 1, np.ndarray)
        if len(node.input) > 2 and node.input[2]:
            hi = self.get(node, 2, np.ndarray)
        if lo is None or float(lo) != 0.0:
            self.fail(node, f"only Clip with min 0 (a bounded ReLU) is supported, not min "
                            f"{None if lo is None else float(lo)}")
        self.activation(node, np.inf if hi is None else float(hi))

    def op_Min(self, node):
        if len(node.input) != 2:
            self.fail(node, "only Min(x, 0) is supported")
        x, z = self.get(node, 0), self.get(node, 1)
        if isinstance(x, np.ndarray):
            x, z = z, x
        if not isinstance(x, _Q) or x.form != "x" or not isinstance(z, np.ndarray) or z.size != 1 \
                or float(z.reshape(-1)[0]) != 0.0:
            self.fail(node, "only Min(x, 0) of a quantised tensor is supported (the negative "
                            "phase of a PSC layer's input)")
        self.vals[node.output[0]] = _Q(x.tensor, x.scale, "neg")

    def op_Unsqueeze(self, node):
        x = self.get(node, 0, _Q)
        axes = self.attrs(node).get("axes")
        if len(node.input) > 1:
            axes = self.get(node, 1, np.ndarray).tolist()
        if x.form not in ("pos", "neg") or list(axes or []) != [2]:
            self.fail(node, "only Unsqueeze(axes=[2]) of Relu(x) or Min(x, 0) is supported "
                            "(the PSC pattern)")
        self.vals[node.output[0]] = _Q(x.tensor, x.scale, x.form + "_u")

    def op_Concat(self, node):
        vals = [self.get(node, i, _Q) for i in range(len(node.input))]
        if (self.attrs(node).get("axis") != 2 or [v.form for v in vals] != ["pos_u", "neg_u"]
                or vals[0].tensor != vals[1].tensor):
            self.fail(node, "only Concat(axis=2) of the unsqueezed Relu(x) and Min(x, 0) of "
                            "one tensor, in that order, is supported (the PSC pattern)")
        self.vals[node.output[0]] = _Q(vals[0].tensor, vals[0].scale, "stack")

    def op_Reshape(self, node):
        x = self.get(node, 0, _Q)
        shape = [int(d) for d in self.get(node, 1, np.ndarray).reshape(-1)]
        if x.form != "stack":
            self.fail(node, "only the Reshape of the PSC pattern is supported")
        c, h, w = self.shapes[x.tensor]
        want = [[2 * c, h, w]] + ([[2 * c]] if (h, w) == (1, 1) else [])
        dims = shape[1:]
        if shape[0] != -1 and dims.count(-1) == 1:
            known = int(np.prod([d for d in dims if d != -1]))
            dims = [2 * c * h * w // known if d == -1 else d for d in dims]
        if len(shape) < 2 or shape[0] not in (0, 1, -1) or dims not in want:
            self.fail(node, f"the PSC pattern's Reshape must give (N, {2 * c}, {h}, {w})"
                            + (f" or (N, {2 * c})" if (h, w) == (1, 1) else "")
                            + f", not {shape}")
        self.vals[node.output[0]] = _Q(x.tensor, x.scale, "psc")


def import_onnx(model):
    """The :class:`~psc.model.network.Network` of a QDQ int8 ONNX ``model`` (a path or an
    ``onnx.ModelProto``), with its input and output scales.

    Raises
    ------
    OnnxImportError
        Naming the node and the reason, for anything it cannot map exactly.
    """
    imp = _Importer(_load(model))
    try:
        return imp.run()
    except OnnxImportError:
        raise
    except ValueError as e:   # the Network's own checks (ranges, shapes), naming the layer
        raise OnnxImportError(str(e)) from None


def onnxruntime_run(model, images):
    """onnxruntime's output of ``model`` (a path or an ``onnx.ModelProto``) on real-valued
    ``images`` ``(N, C, H, W)``, one image at a time (the models have a batch of one); the
    external reference of the importer."""
    import onnxruntime as ort
    m = _load(model)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.asarray(images, dtype=np.float32)
    return np.concatenate([sess.run(None, {name: img[None]})[0] for img in x])


# --- the writing side: what an exporter emits for the importer ---------------------------

def psc_pattern(prefix, x, shape):
    """The nodes of the PSC input pattern over float tensor ``x`` (the exporter's side of the
    representation in this module's docstring).

    Parameters
    ----------
    prefix : str
        Prefix of the new nodes' and tensors' names.
    x : str
        The tensor whose phases the PSC convolution reads.
    shape : list of int
        The Reshape's target: ``[0, -1, H, W]`` before a ``Conv``, ``[0, -1]`` before a
        ``Gemm``.

    Returns
    -------
    nodes : list of onnx.NodeProto
    initializers : list of onnx.TensorProto
    output : str
        The interleaved tensor ``(N, 2C, ...)``, the convolution's input.
    keep_float : list of str
        Names of the six nodes, for the quantiser's ``nodes_to_exclude`` (:func:`quantize`).
    """
    from onnx import helper, numpy_helper
    t = {k: f"{prefix}_{k}" for k in ("pos", "neg", "pos_u", "neg_u", "stack", "psc",
                                      "zero", "axes", "shape")}
    names = [f"{prefix}_psc_{k}" for k in ("relu", "min", "unsqueeze_pos", "unsqueeze_neg",
                                           "concat", "reshape")]
    nodes = [
        helper.make_node("Relu", [x], [t["pos"]], name=names[0]),
        helper.make_node("Min", [x, t["zero"]], [t["neg"]], name=names[1]),
        helper.make_node("Unsqueeze", [t["pos"], t["axes"]], [t["pos_u"]], name=names[2]),
        helper.make_node("Unsqueeze", [t["neg"], t["axes"]], [t["neg_u"]], name=names[3]),
        helper.make_node("Concat", [t["pos_u"], t["neg_u"]], [t["stack"]], name=names[4], axis=2),
        helper.make_node("Reshape", [t["stack"], t["shape"]], [t["psc"]], name=names[5]),
    ]
    inits = [numpy_helper.from_array(np.zeros((), np.float32), t["zero"]),
             numpy_helper.from_array(np.array([2], np.int64), t["axes"]),
             numpy_helper.from_array(np.array(shape, np.int64), t["shape"])]
    return nodes, inits, t["psc"], names


def psc_weights(w_pos, w_neg):
    """The interleaved weight tensor of the PSC representation: ``W[:, 2j] = W+[:, j]`` and
    ``W[:, 2j+1] = W-[:, j]`` (any array type with ``shape``, numpy or float)."""
    w_pos, w_neg = np.asarray(w_pos), np.asarray(w_neg)
    if w_pos.shape != w_neg.shape:
        raise ValueError(f"w_neg must have the shape of w_pos {w_pos.shape}, not {w_neg.shape}")
    w = np.empty((w_pos.shape[0], 2 * w_pos.shape[1]) + w_pos.shape[2:], dtype=w_pos.dtype)
    w[:, 0::2], w[:, 1::2] = w_pos, w_neg
    return w


def quantize(float_model, out_path, calibration, *, keep_float=()):
    """Quantise a float ONNX model the way :func:`import_onnx` reads it: onnxruntime's static
    quantiser, QDQ, per-channel symmetric int8 weights, symmetric int8 activations, calibrated
    (min/max) on the real-valued ``calibration`` images ``(N, C, H, W)`` fed one at a time;
    ``keep_float`` lists the nodes of the PSC patterns (:func:`psc_pattern`)."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    m = _load(float_model)
    name = m.graph.input[0].name
    images = np.asarray(calibration, dtype=np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{name: img[None]} for img in images])

        def get_next(self):
            return next(self.it, None)

    src = str(out_path) + ".float.onnx"
    import onnx
    onnx.save(m, src)
    try:
        quantize_static(src, str(out_path), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=list(keep_float),
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    finally:
        import os
        os.remove(src)
