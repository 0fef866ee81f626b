"""Bit-exact numpy golden model of Phase Selective Convolution (PSC).

This module is the single definition of PSC arithmetic in the project. Every
testbench, the host API and the CLI import it; nobody re-derives expected
values elsewhere.

PSC (Lin et al., CVPR workshops 2021, eq. 10/11) chooses, for every input
element ``x`` of a convolution window, the weight ``W+`` when ``x >= 0`` and
``W-`` otherwise::

    y = sum_j Wsel_j * x_j + bias,     Wsel_j = W+_j if x_j >= 0 else W-_j

Because ``x = x+ + x-`` with ``x+ = max(x, 0)`` and ``x- = min(x, 0)`` and the
two parts never overlap, this equals ``conv(W+, x+) + conv(W-, x-)`` exactly;
the integer model computes it that way, as one matrix product over the
concatenated reduction ``[x+, x-]``. The float reference
(:func:`psc_conv2d_float`) computes the dynamic-kernel form directly, with a
per-element weight selection, so tests compare two independent formulations.

Conventions (the hardware follows them bit for bit):

- activations ``(C, H, W)`` or ``(N, C, H, W)``, weights
  ``(Cout, Cin // groups, K, K)`` (PyTorch layouts);
- activations and weights are signed integers of ``act_width`` and
  ``weight_width`` bits (symmetric, no zero point);
- results are int64 accumulators with the bias included;
- requantisation: ``v = acc * M``; if ``S > 0``, ``v = (v + 2**(S-1)) >> S``
  (arithmetic shift, round half up); saturate to the signed ``act_width``
  range; optional ReLU.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from psc.model.checks import (BadTypeError, check_bool, check_dims, check_int, check_signed,
                              check_width, int_array, per_channel, signed_range)

__all__ = [
    "check_signed", "psc_conv2d", "conv2d", "requantize",
    "ini", "ili", "spsc", "lrelu_weights", "par",
    "psc_conv2d_float", "conv2d_float", "requantize_float", "relu", "lrelu",
    "reduction_length",
]

# float64 represents every integer below 2**53 exactly: a matrix product whose
# partial sums provably stay below that bound is bit-exact through BLAS.
_FLOAT_EXACT = 1 << 53


def _real_array(name, value, width):
    """The float path's conversion: a real (integer or float) array, nothing else."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf" or isinstance(value, (bool, np.bool_)):
        raise BadTypeError(f"{name} must hold real numbers, not dtype {arr.dtype}")
    return arr.astype(np.float64)


def _prepare(x, w_pos, w_neg, bias, stride, padding, groups, act_width, weight_width, acc_width,
             *, to_int=True):
    """Validate the arguments of a convolution; return normalised arrays and shape info."""
    if to_int:
        act_width = check_width("act_width", act_width)
        weight_width = check_width("weight_width", weight_width)
        acc_width = check_width("acc_width", acc_width, maximum=64)
    conv = check_signed if to_int else _real_array
    x = check_dims("x", conv("x", x, act_width), ("Cin", "H", "W"), batch=True)
    batched = x.ndim == 4
    if not batched:
        x = x[None]
    w_pos = check_dims("w_pos", conv("w_pos", w_pos, weight_width),
                       ("Cout", "Cin // groups", "K", "K"))
    w_neg = conv("w_neg", w_neg, weight_width)
    if w_neg.shape != w_pos.shape:
        raise ValueError(f"w_neg must have the shape of w_pos {w_pos.shape}, not {w_neg.shape}")
    cout, cin_g, kh, kw = w_pos.shape
    if kh != kw:
        raise ValueError(f"kernels must be square (K, K), not {(kh, kw)}")
    stride = check_int("stride", stride, 1)
    padding = check_int("padding", padding, 0)
    groups = check_int("groups", groups, 1)
    n, cin, h, w = x.shape
    if cin % groups:
        raise ValueError(f"input channels ({cin}) must be divisible by groups ({groups})")
    if cout % groups:
        raise ValueError(f"output channels ({cout}) must be divisible by groups ({groups})")
    if cin_g != cin // groups:
        raise ValueError(
            f"w_pos has {cin_g} input channels per group; x has {cin} channels and "
            f"groups={groups}, so {cin // groups} were expected")
    if h + 2 * padding < kh or w + 2 * padding < kw:
        raise ValueError(
            f"kernel {kh}x{kw} does not fit the padded input {h + 2 * padding}x{w + 2 * padding}")
    if to_int:
        # The model sums in int64: refuse widths whose largest possible sum
        # (every product at its peak, plus the largest bias) would wrap there.
        peak = (cin_g * kh * kw << (act_width + weight_width - 2)) + (1 << (acc_width - 1))
        if peak >= 1 << 63:
            raise ValueError(
                f"act_width={act_width}, weight_width={weight_width} and acc_width={acc_width} "
                f"over a reduction of {cin_g * kh * kw} products can reach {peak}, beyond the "
                f"int64 the model computes in (at most {(1 << 63) - 1}); use narrower widths")
    if bias is None:
        bias = np.zeros(cout, dtype=np.int64 if to_int else np.float64)
    else:
        bias = conv("bias", bias, acc_width)
        if bias.shape != (cout,):
            raise ValueError(f"bias must have shape ({cout},), not {bias.shape}")
    return x, batched, w_pos, w_neg, bias, stride, padding, groups


def _windows(x, k, stride, padding):
    """(N, C, H, W) -> (N, C, K, K, Ho, Wo) view of the zero-padded input's windows."""
    if padding:
        x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    v = sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    return v.transpose(0, 1, 4, 5, 2, 3)


def reduction_length(cin, k, groups=1):
    """Number of products summed into one output: ``Cin // groups * K * K``."""
    return cin // groups * k * k


def psc_conv2d(x, w_pos, w_neg, bias=None, *, stride=1, padding=0, groups=1,
               act_width=8, weight_width=8, acc_width=32):
    """PSC convolution with integer arithmetic; returns int64 accumulators.

    Parameters
    ----------
    x : array of int, shape ``(Cin, H, W)`` or ``(N, Cin, H, W)``
        Signed activations within ``act_width`` bits.
    w_pos, w_neg : array of int, shape ``(Cout, Cin // groups, K, K)``
        ``W+`` (used where ``x >= 0``) and ``W-`` (where ``x < 0``), signed
        within ``weight_width`` bits.
    bias : array of int, shape ``(Cout,)``, optional
        Signed, within ``acc_width`` bits; the accumulator starts there.
    stride, padding, groups : int
        As in ``torch.nn.functional.conv2d`` (zero padding). Depthwise is
        ``groups == Cin == Cout``; pointwise is ``K == 1``; a fully connected
        layer is a 1x1 convolution over a 1x1 map.

    Returns
    -------
    numpy.ndarray of int64, shape ``(Cout, Ho, Wo)`` (or ``(N, Cout, Ho, Wo)``)
    """
    x, batched, w_pos, w_neg, bias, stride, padding, groups = _prepare(
        x, w_pos, w_neg, bias, stride, padding, groups, act_width, weight_width, acc_width)
    n = x.shape[0]
    cout, cin_g, k, _ = w_pos.shape
    win = _windows(x, k, stride, padding)                 # N, Cin, K, K, Ho, Wo
    ho, wo = win.shape[-2:]
    red = cin_g * k * k
    # cols: N, groups, [x+ | x-] over (cin_g, K, K), Ho*Wo
    win = win.reshape(n, groups, red, ho * wo)
    cols = np.concatenate([np.maximum(win, 0), np.minimum(win, 0)], axis=2)
    wmat = np.concatenate([w_pos.reshape(groups, cout // groups, red),
                           w_neg.reshape(groups, cout // groups, red)], axis=2)
    bound = int(np.abs(cols).max(initial=0)) * int(np.abs(wmat).max(initial=0)) * red
    if bound < _FLOAT_EXACT:
        acc = np.rint(wmat.astype(np.float64) @ cols.astype(np.float64)).astype(np.int64)
    else:
        acc = wmat @ cols  # int64, exact but slower
    acc = acc.reshape(n, cout, ho, wo) + bias[None, :, None, None]
    return acc if batched else acc[0]


def conv2d(x, w, bias=None, **kwargs):
    """Plain integer convolution (the baseline): PSC with ``W+ = W- = w``."""
    return psc_conv2d(x, w, w, bias, **kwargs)


def requantize(acc, mult, shift, *, act_width=8, relu=False, mult_width=16):
    """Requantise int accumulators to signed ``act_width``-bit activations.

    Per output channel ``c`` (axis -3 of ``acc``)::

        v = acc * mult[c]
        if shift[c] > 0: v = (v + (1 << (shift[c] - 1))) >> shift[c]
        y = clamp(v, -2**(act_width-1), 2**(act_width-1) - 1)
        if relu: y = max(y, 0)

    Parameters
    ----------
    acc : array of int, shape ``(C, H, W)`` or ``(N, C, H, W)``
    mult : int or array of int, shape ``(C,)``
        Unsigned multiplier in ``[0, 2**mult_width)``.
    shift : int or array of int, shape ``(C,)``
        Right shift in ``[0, 62]``.
    """
    act_width = check_width("act_width", act_width)
    mult_width = check_width("mult_width", mult_width, maximum=62)
    relu = check_bool("relu", relu)
    acc = check_dims("acc", int_array("acc", acc), ("C", "H", "W"), batch=True)
    channels = acc.shape[-3]
    mult = per_channel("mult", mult, channels, 0, (1 << mult_width) - 1)
    shift = per_channel("shift", shift, channels, 0, 62)
    # acc * mult (plus the rounding term) must not leave int64.
    peak = int(np.abs(acc).max(initial=0)) * int(mult.max(initial=0))
    if peak + (1 << max(int(shift.max(initial=0)) - 1, 0)) >= 1 << 63:
        raise ValueError(f"acc * mult reaches {peak}, which overflows the 64-bit model; "
                         "use smaller multipliers or accumulators")
    bshape = (channels, 1, 1)
    v = acc * mult.reshape(bshape)
    s = shift.reshape(bshape)
    rnd = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 0)
    v = np.right_shift(v + rnd, s)
    lo, hi = signed_range(act_width)
    y = np.clip(v, lo, hi)
    if relu:
        y = np.maximum(y, 0)
    return y


# --- the paper's special cases and initialisers -----------------------------

def ini(w0):
    """Incremental Nonlinear Initialisation (eq. 15): ``W+ = W0, W- = 0``.

    PSC with these weights equals ``conv(W0, relu(x))``.
    """
    w0 = np.asarray(w0)
    return w0.copy(), np.zeros_like(w0)


def ili(w0):
    """Incremental Linear Initialisation (eq. 17): ``W+ = W- = W0``.

    PSC with these weights equals ``conv(W0, x)``.
    """
    w0 = np.asarray(w0)
    return w0.copy(), w0.copy()


def spsc(w, positive):
    """Static PSC (eq. 3/6): output channel ``c`` uses ``W+`` only if ``positive[c]``, else ``W-`` only.

    Returns ``(w_pos, w_neg)`` with disjoint support over output channels: a
    channel with ``positive[c]`` sees ``relu(x)``, the others ``-relu(-x)``
    (CReLU generalised to an arbitrary split).
    """
    w = np.asarray(w)
    positive = np.asarray(positive)
    if positive.dtype.kind != "b":
        # np.asarray(..., dtype=bool) would read "no" and 2 as True
        raise BadTypeError(f"positive must hold bools, not dtype {positive.dtype}")
    if positive.shape != (w.shape[0],):
        raise ValueError(f"positive must have shape ({w.shape[0]},), not {positive.shape}")
    sel = positive.reshape((-1,) + (1,) * (w.ndim - 1))
    return np.where(sel, w, 0), np.where(sel, 0, w)


def lrelu_weights(w, a):
    """Weights for LReLU/PReLU-before-conv (eq. 7): ``W+ = w, W- = a * w`` (float)."""
    w = np.asarray(w, dtype=np.float64)
    return w.copy(), a * w


def par(x):
    """Positive Activation Ratio (section 4.1.2): fraction of elements ``> 0``."""
    x = np.asarray(x)
    if x.size == 0:
        raise ValueError("par of an empty tensor is undefined")
    return float(np.count_nonzero(x > 0)) / x.size


# --- float64 reference -------------------------------------------------------

def relu(x):
    return np.maximum(np.asarray(x, dtype=np.float64), 0.0)


def lrelu(x, a):
    x = np.asarray(x, dtype=np.float64)
    return np.where(x >= 0, x, a * x)


def psc_conv2d_float(x, w_pos, w_neg, bias=None, *, stride=1, padding=0, groups=1):
    """Float64 reference of PSC in its dynamic-kernel form (eq. 11).

    Independent of :func:`psc_conv2d`: it loops over kernel taps and selects,
    per input element, the weight by the element's sign. Use on small shapes.
    """
    x, batched, w_pos, w_neg, bias, stride, padding, groups = _prepare(
        x, w_pos, w_neg, bias, stride, padding, groups, None, None, None, to_int=False)
    n, cin, h, w = x.shape
    cout, cin_g, k, _ = w_pos.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho = (h + 2 * padding - k) // stride + 1
    wo = (w + 2 * padding - k) // stride + 1
    y = np.zeros((n, cout, ho, wo)) + bias[None, :, None, None]
    cout_g = cout // groups
    for g in range(groups):
        xs = xp[:, g * cin_g:(g + 1) * cin_g]
        for i in range(k):
            for j in range(k):
                tap = xs[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]  # N, cin_g, Ho, Wo
                wp = w_pos[g * cout_g:(g + 1) * cout_g, :, i, j]                     # cout_g, cin_g
                wn = w_neg[g * cout_g:(g + 1) * cout_g, :, i, j]
                wsel = np.where(tap[:, None] >= 0, wp[None, :, :, None, None], wn[None, :, :, None, None])
                y[:, g * cout_g:(g + 1) * cout_g] += np.einsum("nocyx,ncyx->noyx", wsel, tap)
    return y if batched else y[0]


def conv2d_float(x, w, bias=None, **kwargs):
    """Float64 plain convolution."""
    return psc_conv2d_float(x, w, w, bias, **kwargs)


def requantize_float(acc, mult, shift, *, act_width=8, relu=False):
    """Float reference of :func:`requantize`: ``floor(acc * mult / 2**shift + 1/2)``, clamped."""
    acc = np.asarray(acc, dtype=np.float64)
    c = acc.shape[-3]
    m = np.broadcast_to(np.asarray(mult, dtype=np.float64), (c,)).reshape(c, 1, 1)
    s = np.broadcast_to(np.asarray(shift, dtype=np.float64), (c,)).reshape(c, 1, 1)
    v = acc * m / 2.0 ** s
    v = np.where(s > 0, np.floor(v + 0.5), v)
    lo, hi = signed_range(act_width)
    y = np.clip(v, lo, hi)
    return np.maximum(y, 0) if relu else y
