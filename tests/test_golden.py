"""Tests of the golden model: two independent formulations must agree, and the paper's identities hold."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

from psc import golden
from psc.model.golden import psc_conv2d, psc_conv2d_float, requantize, requantize_float

RNG = np.random.default_rng(20211)


def rand(shape, width=8, rng=RNG):
    return rng.integers(-(1 << (width - 1)), 1 << (width - 1), size=shape)


# --- layer kinds: integer model against the float64 dynamic-kernel reference ---

KINDS = {
    # name: (cin, cout, h, w, k, stride, padding, groups)
    "standard3x3": (5, 7, 9, 8, 3, 1, 1, 1),
    "standard3x3_s2": (6, 4, 9, 9, 3, 2, 1, 1),
    "standard5x5_nopad": (3, 5, 9, 10, 5, 1, 0, 1),
    "standard7x7_s2": (3, 4, 13, 13, 7, 2, 3, 1),
    "depthwise3x3": (8, 8, 7, 7, 3, 1, 1, 8),
    "depthwise3x3_s2": (8, 8, 8, 8, 3, 2, 1, 8),
    "pointwise": (16, 12, 5, 6, 1, 1, 0, 1),
    "fully_connected": (40, 10, 1, 1, 1, 1, 0, 1),
    "grouped": (8, 6, 6, 6, 3, 1, 1, 2),
}


@pytest.mark.parametrize("kind", KINDS)
def test_matches_float_reference(kind):
    cin, cout, h, w, k, stride, padding, groups = KINDS[kind]
    x = rand((cin, h, w))
    wp, wn = rand((cout, cin // groups, k, k)), rand((cout, cin // groups, k, k))
    bias = rand(cout, 20)
    got = psc_conv2d(x, wp, wn, bias, stride=stride, padding=padding, groups=groups)
    ref = psc_conv2d_float(x, wp, wn, bias, stride=stride, padding=padding, groups=groups)
    assert got.dtype == np.int64
    assert got.shape == ref.shape == (cout, (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1)
    np.testing.assert_array_equal(got, ref)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_shapes_match_float_reference(data):
    groups = data.draw(st.sampled_from([1, 1, 2, 3]), "groups")
    cin = groups * data.draw(st.integers(1, 4), "cin/g")
    cout = groups * data.draw(st.integers(1, 4), "cout/g")
    k = data.draw(st.sampled_from([1, 3, 5]), "k")
    padding = data.draw(st.integers(0, k // 2), "padding")
    stride = data.draw(st.integers(1, 2), "stride")
    h = data.draw(st.integers(max(1, k - 2 * padding), 9), "h")
    w = data.draw(st.integers(max(1, k - 2 * padding), 9), "w")
    n = data.draw(st.sampled_from([None, 1, 2]), "batch")
    aw = data.draw(st.sampled_from([4, 8, 12]), "act_width")
    seed = data.draw(st.integers(0, 2**32 - 1), "seed")
    rng = np.random.default_rng(seed)
    x = rand((cin, h, w) if n is None else (n, cin, h, w), aw, rng)
    wp, wn = rand((cout, cin // groups, k, k), 8, rng), rand((cout, cin // groups, k, k), 8, rng)
    bias = rand(cout, 16, rng)
    kw = dict(stride=stride, padding=padding, groups=groups)
    got = psc_conv2d(x, wp, wn, bias, act_width=aw, **kw)
    np.testing.assert_array_equal(got, psc_conv2d_float(x, wp, wn, bias, **kw))


def test_batch_equals_stacked_singles():
    x = rand((3, 4, 6, 6))
    wp, wn = rand((5, 4, 3, 3)), rand((5, 4, 3, 3))
    batched = psc_conv2d(x, wp, wn, padding=1, stride=2)
    singles = np.stack([psc_conv2d(xi, wp, wn, padding=1, stride=2) for xi in x])
    np.testing.assert_array_equal(batched, singles)


def test_zero_selects_w_pos_and_contributes_nothing():
    x = np.zeros((2, 3, 3), dtype=np.int64)
    wp, wn = rand((3, 2, 3, 3)), rand((3, 2, 3, 3))
    bias = np.array([5, -7, 11])
    np.testing.assert_array_equal(psc_conv2d(x, wp, wn, bias, padding=1), np.broadcast_to(bias[:, None, None], (3, 3, 3)))


def test_extremes_exact():
    """Most negative activations and weights everywhere: the largest reduction, exactly."""
    x = np.full((16, 3, 3), -128)
    w = np.full((2, 16, 3, 3), -128)
    acc = psc_conv2d(x, np.zeros_like(w), w)
    assert acc.shape == (2, 1, 1)
    assert (acc == 16 * 9 * 128 * 128).all()


def test_wide_values_take_the_exact_integer_path():
    # |x| * |w| * reduction exceeds 2**53, so the model must not go through float64.
    x = rand((2, 4, 4), 30)
    wp, wn = rand((3, 2, 3, 3), 30), rand((3, 2, 3, 3), 30)
    got = psc_conv2d(x, wp, wn, padding=1, act_width=30, weight_width=30)
    # PSC is linear in the weight pair: split weights into high and low halves
    # whose partial results each stay exact in float64.
    lo_p, lo_n = wp & 0x7FFF, wn & 0x7FFF
    hi_p, hi_n = wp >> 15, wn >> 15
    ref = (psc_conv2d_float(x, hi_p, hi_n, padding=1).astype(np.int64) << 15) + \
        psc_conv2d_float(x, lo_p, lo_n, padding=1).astype(np.int64)
    np.testing.assert_array_equal(got, ref)


# --- the paper's special cases ------------------------------------------------

@pytest.mark.parametrize("kind", ["standard3x3", "depthwise3x3", "pointwise", "fully_connected"])
def test_ini_equals_relu_then_conv(kind):
    cin, cout, h, w, k, stride, padding, groups = KINDS[kind]
    x, w0, bias = rand((cin, h, w)), rand((cout, cin // groups, k, k)), rand(cout, 20)
    kw = dict(stride=stride, padding=padding, groups=groups)
    np.testing.assert_array_equal(psc_conv2d(x, *golden.ini(w0), bias, **kw),
                                  golden.conv2d(np.maximum(x, 0), w0, bias, **kw))


def _direct_conv(x, w, bias, *, stride, padding, groups):
    """Plain grouped convolution, one output at a time in Python integers."""
    cout, cin_g, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding))).tolist()
    ho = (len(xp[0]) - k) // stride + 1
    wo = (len(xp[0][0]) - k) // stride + 1
    y = np.zeros((cout, ho, wo), dtype=np.int64)
    for o in range(cout):
        c0 = o // (cout // groups) * cin_g
        for oy in range(ho):
            for ox in range(wo):
                y[o, oy, ox] = int(bias[o]) + sum(
                    int(w[o, c, i, j]) * xp[c0 + c][oy * stride + i][ox * stride + j]
                    for c in range(cin_g) for i in range(k) for j in range(k))
    return y


@pytest.mark.parametrize("kind", ["standard3x3_s2", "depthwise3x3", "pointwise", "fully_connected"])
def test_ili_equals_plain_conv(kind):
    cin, cout, h, w, k, stride, padding, groups = KINDS[kind]
    x, w0, bias = rand((cin, h, w)), rand((cout, cin // groups, k, k)), rand(cout, 20)
    kw = dict(stride=stride, padding=padding, groups=groups)
    got = psc_conv2d(x, *golden.ili(w0), bias, **kw)
    # golden.conv2d is psc_conv2d with W+ = W-, so only a convolution written
    # without the model is evidence
    np.testing.assert_array_equal(got, _direct_conv(x, w0, bias, **kw))
    np.testing.assert_array_equal(got, golden.conv2d_float(x, w0, bias, **kw))


def test_spsc_is_crelu_split():
    cin, cout = 4, 6
    x, w = rand((cin, 5, 5)), rand((cout, cin, 3, 3))
    positive = np.array([True, False, True, True, False, False])
    wp, wn = golden.spsc(w, positive)
    y = psc_conv2d(x, wp, wn, padding=1)
    pos = golden.conv2d(np.maximum(x, 0), w, padding=1)
    neg = golden.conv2d(np.minimum(x, 0), w, padding=1)
    np.testing.assert_array_equal(y[positive], pos[positive])
    np.testing.assert_array_equal(y[~positive], neg[~positive])


@pytest.mark.parametrize("a", [0.1, 0.25, -0.5, 2.0])
def test_lrelu_before_conv(a):
    x, w = rand((3, 6, 6)), rand((4, 3, 3, 3))
    wp, wn = golden.lrelu_weights(w, a)
    np.testing.assert_allclose(psc_conv2d_float(x, wp, wn, padding=1),
                               golden.conv2d_float(golden.lrelu(x, a), w, padding=1), rtol=1e-12)


def test_prelu_integer_slope_is_exact():
    x, w = rand((3, 6, 6)), rand((4, 3, 3, 3), 6)
    np.testing.assert_array_equal(psc_conv2d(x, w, 2 * w, padding=1),
                                  golden.conv2d(np.where(x >= 0, x, 2 * x), w, padding=1, act_width=9))


def test_absolute_value_regression_from_the_paper():
    """Section 3.1: sPSC fits f(x) = |x| exactly; ReLU-then-linear plus pooling cannot."""
    xs = np.arange(-127, 128).reshape(1, 1, -1)             # samples of [-1, 1], scaled
    target = np.abs(xs[0, 0])
    wp, wn = golden.spsc(np.array([1, -1]).reshape(2, 1, 1, 1), [True, False])
    z = psc_conv2d(xs, wp, wn)                               # (2, 1, n); pooling sums the channels
    assert np.sum((z.sum(axis=0)[0] - target) ** 2) == 0
    # Baseline (eq. 2) pooled: (w1 + w2) * relu(x) + (b1 + b2), the best least-squares fit.
    feats = np.stack([np.maximum(xs[0, 0], 0), np.ones(xs.shape[-1])], axis=1).astype(float)
    _, residual, _, _ = np.linalg.lstsq(feats, target.astype(float), rcond=None)
    assert residual[0] > 1000


def test_depthwise_equals_per_channel_standard_conv():
    c = 6
    x, wp, wn = rand((c, 7, 7)), rand((c, 1, 3, 3)), rand((c, 1, 3, 3))
    bias = rand(c, 16)
    dw = psc_conv2d(x, wp, wn, bias, padding=1, stride=2, groups=c)
    for i in range(c):
        one = psc_conv2d(x[i:i + 1], wp[i:i + 1], wn[i:i + 1], bias[i:i + 1], padding=1, stride=2)
        np.testing.assert_array_equal(dw[i], one[0])


def test_par():
    assert golden.par(np.array([1, -1, 0, 2])) == 0.5
    assert golden.par(np.maximum(rand((4, 8, 8)), 0)) < 0.55
    with pytest.raises(ValueError, match="empty"):
        golden.par(np.array([]))


# --- requantisation -----------------------------------------------------------

def rq(acc, mult, shift, **kw):
    return requantize(np.array(acc).reshape(1, 1, -1), mult, shift, **kw)[0, 0]


def test_requantize_round_half_up_on_exact_halves():
    np.testing.assert_array_equal(rq([3, -3, 1, -1, 5, -5], 1, 1), [2, -1, 1, 0, 3, -2])
    np.testing.assert_array_equal(rq([6, -6, 2, -2], 1, 2), [2, -1, 1, 0])  # 1.5, -1.5, 0.5, -0.5


def test_requantize_shift_zero_is_multiply_and_saturate():
    np.testing.assert_array_equal(rq([3, -3, 100, -100, 0], 2, 0), [6, -6, 127, -128, 0])


def test_requantize_saturates_at_the_edges():
    big = (1 << 31) - 1
    np.testing.assert_array_equal(rq([big, -big - 1, 127, 128, -128, -129], 1, 0), [127, -128, 127, 127, -128, -128])
    np.testing.assert_array_equal(rq([-128 * 4 - 2, -128 * 4 - 3], 1, 2), [-128, -128])
    np.testing.assert_array_equal(rq([-(1 << 31)], (1 << 16) - 1, 40), [-128])


def test_requantize_large_shift():
    np.testing.assert_array_equal(rq([(1 << 31) - 1, -(1 << 31), 1 << 30], 1, 62), [0, 0, 0])
    np.testing.assert_array_equal(rq([1 << 30, -(1 << 30)], 1 << 15, 46), [1, 0])   # +-1/2 round half up


def test_requantize_relu_and_per_channel():
    acc = np.array([[[-300, 300]], [[-300, 300]]])
    np.testing.assert_array_equal(requantize(acc, [1, 2], [1, 0]), [[[-128, 127]], [[-128, 127]]])
    np.testing.assert_array_equal(requantize(acc, [1, 1], [2, 3]), [[[-75, 75]], [[-37, 38]]])
    np.testing.assert_array_equal(requantize(acc, [1, 1], [2, 3], relu=True), [[[0, 75]], [[0, 38]]])
    np.testing.assert_array_equal(requantize(acc, 1, 8, act_width=4), [[[-1, 1]], [[-1, 1]]])


@settings(max_examples=200, deadline=None)
@given(acc=st.lists(st.integers(-(1 << 31), (1 << 31) - 1), min_size=1, max_size=16),
       mult=st.integers(0, (1 << 16) - 1), shift=st.integers(0, 40), relu=st.booleans())
def test_requantize_matches_float_reference(acc, mult, shift, relu):
    a = np.array(acc).reshape(1, 1, -1)
    got = requantize(a, mult, shift, relu=relu)
    # acc * mult < 2**47 is exact in float64, and so is the division by a power of two.
    np.testing.assert_array_equal(got, requantize_float(a, mult, shift, relu=relu))


def test_requantize_tflite_style_32bit_multiplier():
    acc = np.array([[[1000, -1000, 12345]]])
    m = 1518500250  # 0.7071 * 2**31
    got = requantize(acc, m, 31 + 3, mult_width=32)
    np.testing.assert_array_equal(got, requantize_float(acc, m, 34))


# --- bad input: every error names the argument and what was expected ------------

@pytest.mark.parametrize("call, exc, match", [
    (lambda: psc_conv2d(rand((4, 4)), rand((2, 4, 1, 1)), rand((2, 4, 1, 1))), ValueError, r"x must have shape \(Cin, H, W\)"),
    (lambda: psc_conv2d(rand((4, 4, 4)), rand((2, 4, 1)), rand((2, 4, 1))), ValueError, r"w_pos must have shape"),
    (lambda: psc_conv2d(rand((4, 4, 4)), rand((2, 4, 1, 1)), rand((2, 4, 3, 3))), ValueError, r"w_neg must have the shape of w_pos"),
    (lambda: psc_conv2d(rand((4, 4, 4)), rand((2, 3, 1, 1)), rand((2, 3, 1, 1))), ValueError, r"3 input channels per group.*4 were expected"),
    (lambda: psc_conv2d(rand((6, 4, 4)), rand((6, 2, 1, 1)), rand((6, 2, 1, 1)), groups=4), ValueError, r"input channels \(6\) must be divisible by groups \(4\)"),
    (lambda: psc_conv2d(rand((4, 4, 4)), rand((6, 1, 1, 1)), rand((6, 1, 1, 1)), groups=4), ValueError, r"output channels \(6\) must be divisible by groups \(4\)"),
    (lambda: psc_conv2d(rand((4, 4, 4)) * 2, rand((2, 4, 1, 1)), rand((2, 4, 1, 1))), ValueError, r"x must be within the signed 8-bit range \[-128, 127\]; found"),
    (lambda: psc_conv2d(rand((4, 4, 4)), rand((2, 4, 1, 1)) + 300, rand((2, 4, 1, 1))), ValueError, r"w_pos must be within the signed 8-bit range"),
    (lambda: psc_conv2d(rand((4, 4, 4)), rand((2, 4, 1, 1)), rand((2, 4, 1, 1)) - 300), ValueError, r"w_neg must be within"),
    (lambda: psc_conv2d(rand((4, 4, 4)), rand((2, 4, 1, 1)), rand((2, 4, 1, 1)), [1 << 40, 0]), ValueError, r"bias must be within the signed 32-bit range"),
    (lambda: psc_conv2d(rand((4, 4, 4)), rand((2, 4, 1, 1)), rand((2, 4, 1, 1)), [1, 2, 3]), ValueError, r"bias must have shape \(2,\)"),
    (lambda: psc_conv2d(rand((4, 4, 4)) * 0.5, rand((2, 4, 1, 1)), rand((2, 4, 1, 1))), TypeError, r"x must hold integers"),
    (lambda: psc_conv2d(rand((4, 4, 4)), rand((2, 4, 1, 1)), rand((2, 4, 1, 1)), stride=0), ValueError, r"stride must be an integer >= 1, not 0"),
    (lambda: psc_conv2d(rand((4, 4, 4)), rand((2, 4, 1, 1)), rand((2, 4, 1, 1)), padding=-1), ValueError, r"padding must be an integer >= 0, not -1"),
    (lambda: psc_conv2d(rand((4, 2, 2)), rand((2, 4, 5, 5)), rand((2, 4, 5, 5))), ValueError, r"kernel 5x5 does not fit the padded input 2x2"),
    (lambda: psc_conv2d(rand((4, 4, 4)), rand((2, 4, 3, 1)), rand((2, 4, 3, 1))), ValueError, r"kernels must be square"),
    (lambda: psc_conv2d(rand((4, 4, 4)), rand((2, 4, 1, 1)), rand((2, 4, 1, 1)), act_width=1), ValueError, r"act_width must be an integer in \[2, 62\], not 1"),
    (lambda: requantize(np.zeros((2, 1, 1), dtype=int), 1, -1), ValueError, r"shift must be within \[0, 62\]; found -1 for channel 0"),
    (lambda: requantize(np.zeros((2, 1, 1), dtype=int), [1, 1 << 16], 1), ValueError, r"mult must be within \[0, 65535\]; found 65536 for channel 1"),
    (lambda: requantize(np.zeros((2, 1, 1), dtype=int), [1, 2, 3], 1), ValueError, r"mult must be a scalar or have shape \(2,\)"),
    (lambda: requantize(np.zeros((2, 1), dtype=int), 1, 1), ValueError, r"acc must have shape \(C, H, W\)"),
    (lambda: requantize(np.zeros((2, 1, 1)), 1, 1), TypeError, r"acc must hold integers"),
    (lambda: requantize(np.full((1, 1, 1), 1 << 40), (1 << 31) - 1, 1, mult_width=31), ValueError, r"overflows the 64-bit model"),
])
def test_bad_input_is_refused_with_a_clear_message(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_widths_the_int64_model_cannot_hold_are_refused():
    """36 products of (-2**31) * (-2**31) would wrap int64 (to 0): refused, naming the widths."""
    x = np.full((4, 3, 3), -2**31, dtype=np.int64)
    w = np.full((1, 4, 3, 3), -2**31, dtype=np.int64)
    with pytest.raises(ValueError, match=r"act_width=32, weight_width=32 .* reduction of 36 products"):
        psc_conv2d(x, w, w, act_width=32, weight_width=32)
    # one such product fits, and is exact
    one = psc_conv2d(x[:1, :1, :1], w[:, :1, :1, :1], w[:, :1, :1, :1], act_width=32, weight_width=32)
    assert one.item() == 2**62
