"""Stimulus for the PSC primitives, its expected results, and its bit packing.

A :class:`Reduction` is one output of a dot-product unit: ``beats`` input beats
of ``lanes`` activations, with one ``{W-, W+}`` pair per lane and output row,
and a bias per row. Its expected accumulators come from
:func:`psc.model.golden.psc_conv2d` on a 1x1 problem (``Cin = beats * lanes``
channels, beat-major), never from arithmetic written here; its beats are packed
with :mod:`psc.model.packing` and the component's own Amaranth layouts.
"""

import importlib
import json
import os
from dataclasses import dataclass

import numpy as np
from psc import golden
from psc.model import packing
from psc.model.packing import pack_payload
from psc.config import PSCConfig

__all__ = ["Reduction", "Stimulus", "weight_words", "config_from_env",
           "config_env", "component_from_env", "signed_range", "requant_vectors",
           "requant_expected"]


def signed_range(width):
    return -(1 << (width - 1)), (1 << (width - 1)) - 1


def weight_words(w_pos, w_neg, config):
    """Weight memory words for ``config``: ``{W-, W+}`` pairs (PSC) or ``W+`` alone (plain)."""
    if config.psc:
        return packing.parify(w_pos, w_neg, config.weight_width)
    return packing.pack_lanes(np.asarray(w_pos)[..., None], config.weight_width)


# --- configuration transport into the simulator process ------------------------

def config_env(config, component, *, latency=None, seed=None, **extra):
    """Environment variables that tell a bench its configuration and component class.

    ``component`` is ``"module:Class"``; the bench instantiates it with the
    configuration to learn its port layouts.
    """
    env = {"PSC_CONFIG": json.dumps(config.to_dict()), "PSC_COMPONENT": component}
    if latency is not None:
        env["PSC_LATENCY"] = str(int(latency))
    if seed is not None:
        env["PSC_SEED"] = str(int(seed))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def config_from_env():
    return PSCConfig.from_dict(json.loads(os.environ["PSC_CONFIG"]))


def component_from_env(config):
    module, _, name = os.environ["PSC_COMPONENT"].partition(":")
    component = getattr(importlib.import_module(module), name)(config)
    component._MustUse__silence = True  # only its signature is used
    return component


# --- one reduction ------------------------------------------------------------

@dataclass
class Reduction:
    """One output beat's worth of input.

    Attributes
    ----------
    x : int array, shape (beats, lanes)
    w_pos, w_neg : int arrays, shape (beats, rows, lanes)
    bias : int array, shape (rows,)
    label : str
        What the case is for (shown in failure messages).
    """
    x: np.ndarray
    w_pos: np.ndarray
    w_neg: np.ndarray
    bias: np.ndarray
    label: str = "random"

    @property
    def beats(self):
        return self.x.shape[0]

    @property
    def rows(self):
        return self.w_pos.shape[1]

    def row(self, r):
        """The single-row reduction seen by the PE of output row ``r``."""
        return Reduction(self.x, self.w_pos[:, r:r + 1], self.w_neg[:, r:r + 1],
                         self.bias[r:r + 1], f"{self.label} (row {r})")

    def expected(self, config):
        """Accumulators per row, from the golden model on a 1x1 convolution."""
        beats, lanes = self.x.shape
        rows = self.rows
        x = self.x.reshape(beats * lanes, 1, 1)
        w_pos = self.w_pos.transpose(1, 0, 2).reshape(rows, beats * lanes, 1, 1)
        w_neg = self.w_neg.transpose(1, 0, 2).reshape(rows, beats * lanes, 1, 1)
        widths = dict(act_width=config.act_width, weight_width=config.weight_width,
                      acc_width=config.acc_width)
        if config.psc:
            acc = golden.psc_conv2d(x, w_pos, w_neg, self.bias, **widths)
        else:
            acc = golden.conv2d(x, w_pos, self.bias, **widths)
        return acc.reshape(rows)

    def describe(self, max_beats=6):
        lines = [f"    reduction '{self.label}': {self.beats} beat(s), bias {self.bias.tolist()}"]
        shown = list(range(self.beats))
        if self.beats > max_beats:
            shown = shown[:max_beats // 2] + shown[-(max_beats // 2):]
        for b in shown:
            if b == max_beats // 2 and self.beats > max_beats:
                lines.append(f"    ... {self.beats - max_beats} beats not shown ...")
            lines.append(f"    beat {b}: x {self.x[b].tolist()}")
            for r in range(self.rows):
                lines.append(f"      row {r}: W+ {self.w_pos[b, r].tolist()}  W- {self.w_neg[b, r].tolist()}")
        return "\n".join(lines)

    # --- packing into the DUT's input beats -------------------------------

    def dot_product_beats(self, config, layout, rng=None, break_weights=False):
        """Packed ``i.payload`` words for :class:`psc.hw.dot_product.DotProduct`.

        Bias on beats other than the first is random (``rng``) to show it is
        ignored there. ``break_weights`` swaps ``W+`` and ``W-`` (a deliberate
        stimulus bug, for checking that the bench notices).
        """
        w_pos, w_neg = (self.w_neg, self.w_pos) if break_weights else (self.w_pos, self.w_neg)
        words = weight_words(w_pos, w_neg, config)
        lo, hi = signed_range(config.acc_width)
        out = []
        for b in range(self.beats):
            bias = self.bias if b == 0 or rng is None else rng.integers(lo, hi, self.rows, endpoint=True)
            x = [int(v) for v in self.x[b]]
            out.append(pack_payload(layout, {
                # a depthwise="pixels" build takes a lane word per row; outside
                # depthwise layers every row gets the same one
                "x": [x] * config.rows if config.depthwise == "pixels" else x,
                "w": [[int(v) for v in row] for row in words[b]],
                "bias": [int(v) for v in bias],
                "first": int(b == 0),
                "last": int(b == self.beats - 1),
            }))
        return out

    def pe_beats(self, config, layouts, rng=None):
        """Per-port values (dict of ints) for :class:`psc.hw.pe.PSCMac` (row 0 of this reduction).

        ``layouts`` maps port name to its shape, from the component's signature.
        """
        words = weight_words(self.w_pos[:, 0], self.w_neg[:, 0], config)
        lo, hi = signed_range(config.acc_width)
        out = []
        for b in range(self.beats):
            x = [int(v) for v in self.x[b]]
            bias = int(self.bias[0]) if b == 0 or rng is None else int(rng.integers(lo, hi, endpoint=True))
            out.append({
                "x": pack_payload(layouts["x"], x),
                # The SignMask's function by definition: bit l = sign of lane l (1 = negative).
                "mask": sum(1 << i for i, v in enumerate(x) if v < 0),
                "words": pack_payload(layouts["words"], [int(w) for w in words[b]]),
                "bias": int(packing.pack_lanes([bias], config.acc_width)),
                "first": int(b == 0),
                "last": int(b == self.beats - 1),
            })
        return out


# --- stimulus generation -------------------------------------------------------

class Stimulus:
    """Random and corner-case reductions for ``config`` (``rows`` overrides config.rows)."""

    def __init__(self, config, rng, rows=None):
        self.cfg = config
        self.rng = rng
        self.lanes = config.lanes
        self.rows = config.rows if rows is None else rows
        self.act = signed_range(config.act_width)
        self.wgt = signed_range(config.weight_width)
        self.acc = signed_range(config.acc_width)

    @property
    def max_beats(self):
        """Longest reduction the build supports: ``max_reduction`` products over ``lanes`` lanes."""
        return max(1, self.cfg.max_reduction // self.lanes)

    def peak(self, beats):
        """Largest |sum of products| a reduction of ``beats`` beats can reach."""
        return beats * self.lanes * (-self.act[0]) * (-self.wgt[0])

    def _values(self, lo, hi, shape, corner_p=0.25):
        v = self.rng.integers(lo, hi, shape, endpoint=True)
        corners = np.array(sorted({lo, min(lo + 1, hi), -1 if lo <= -1 else lo, 0 if lo <= 0 <= hi else lo,
                                   1 if lo <= 1 <= hi else hi, max(hi - 1, lo), hi}))
        pick = self.rng.random(shape) < corner_p
        return np.where(pick, self.rng.choice(corners, shape), v)

    def _finish(self, x, w_pos, w_neg, bias, label):
        if not self.cfg.psc:
            w_neg = w_pos.copy()  # a plain build has one weight; keep the record truthful
        return Reduction(np.asarray(x, np.int64), np.asarray(w_pos, np.int64),
                         np.asarray(w_neg, np.int64), np.asarray(bias, np.int64), label)

    def weights(self, beats):
        shape = (beats, self.rows, self.lanes)
        return self._values(*self.wgt, shape), self._values(*self.wgt, shape)

    def bias(self, beats):
        """Random bias that keeps bias + any reduction of ``beats`` beats inside the accumulator."""
        p = self.peak(beats)
        lo, hi = self.acc[0] + p, self.acc[1] - p
        b = self.rng.integers(lo, hi, self.rows, endpoint=True)
        small = self.rng.integers(-1000, 1000, self.rows, endpoint=True).clip(lo, hi)
        return np.where(self.rng.random(self.rows) < 0.5, small, b)

    def random(self, beats=None):
        if beats is None:
            beats = int(min(self.max_beats, self.rng.choice([1, 1, 2, 3, 4, 5, 8, 13])))
        x = self._values(*self.act, (beats, self.lanes))
        return self._finish(x, *self.weights(beats), self.bias(beats), "random")

    def corners(self):
        """The named corner cases, each a :class:`Reduction`."""
        a_lo, a_hi = self.act
        w_lo, w_hi = self.wgt
        L, R = self.lanes, self.rows
        full = self.max_beats
        out = []
        wp, wn = self.weights(3)
        out.append(self._finish(np.full((3, L), a_lo), wp, wn, self.bias(3), "most negative activation"))
        out.append(self._finish(np.full((2, L), a_lo), np.full((2, R, L), w_lo), np.full((2, R, L), w_lo),
                                self.bias(2), "most negative activation and weight"))
        wp, wn = self.weights(2)
        out.append(self._finish(np.zeros((2, L), np.int64), wp, wn, self.bias(2), "zero activations"))
        x = self._values(*self.act, (2, L))
        out.append(self._finish(x, np.zeros((2, R, L), np.int64), np.zeros((2, R, L), np.int64),
                                self.bias(2), "zero weights"))
        wp, wn = self.weights(3)
        out.append(self._finish(self.rng.integers(a_lo, -1, (3, L), endpoint=True), wp, wn,
                                self.bias(3), "all lanes negative"))
        wp, wn = self.weights(3)
        out.append(self._finish(self.rng.integers(0, a_hi, (3, L), endpoint=True), wp, wn,
                                self.bias(3), "all lanes non-negative"))
        x = np.tile(np.where(np.arange(L) % 2, a_lo, a_hi), (2, 1))
        wp, wn = self.weights(2)
        out.append(self._finish(x, wp, wn, self.bias(2), "alternating sign lanes"))
        wp, wn = self.weights(1)
        out.append(self._finish(self._values(*self.act, (1, L)), wp, wn, self.bias(1),
                                "length 1 (first and last on one beat)"))
        out.append(self._finish(np.zeros((1, L), np.int64), *self.weights(1),
                                np.full(R, self.acc[0]), "bias at the accumulator minimum"))
        out.append(self._finish(np.zeros((1, L), np.int64), *self.weights(1),
                                np.full(R, self.acc[1]), "bias at the accumulator maximum"))
        out.extend(self.limits(full))
        return out

    def limits(self, beats):
        """Reductions of ``beats`` beats of extreme products ending exactly on the accumulator's limits."""
        a_lo, a_hi = self.act
        w_lo, w_hi = self.wgt
        L, R = self.lanes, self.rows
        shape = (beats, R, L)
        out = []
        # most negative x times most negative W-: the largest product; the sum
        # plus the bias lands exactly on the accumulator's maximum.
        x = np.full((beats, L), a_lo)
        wp, _ = self.weights(beats)
        wn = np.full(shape, w_lo)
        if not self.cfg.psc:
            wp = wn
        top = self.acc[1] - beats * L * a_lo * w_lo
        out.append(self._finish(x, wp, wn, np.full(R, top),
                                f"{beats} beats of max products to the accumulator maximum"))
        # most negative x times most positive W-: the most negative sum, to the minimum.
        wn = np.full(shape, w_hi)
        wp = wn if not self.cfg.psc else self.weights(beats)[0]
        bottom = self.acc[0] - beats * L * a_lo * w_hi
        out.append(self._finish(x, wp, wn, np.full(R, bottom),
                                f"{beats} beats of min products to the accumulator minimum"))
        # most positive x times most positive W+, from a zero bias.
        x = np.full((beats, L), a_hi)
        out.append(self._finish(x, np.full(shape, w_hi), self.weights(beats)[1], np.zeros(R, np.int64),
                                f"{beats} beats of max positive products"))
        return out


# --- requantiser stimulus ------------------------------------------------------

def requant_vectors(cfg, n, seed):
    """``n`` beats of (acc, mult, shift), ``rows`` each, for a requantiser of ``cfg``
    (:class:`~psc.hw.requantize.Requantizer`): corners first (extreme sums against
    ``M = 0`` / max and ``S = 0`` / around the product's width / 62), then random, then
    results near the saturation bounds and zero."""
    rng = np.random.default_rng(seed)
    rows, aw, mw = cfg.rows, cfg.acc_width, cfg.mult_width
    amin, amax, mmax = -(1 << (aw - 1)), (1 << (aw - 1)) - 1, (1 << mw) - 1
    pw = aw + mw + 1
    acc = rng.integers(amin, amax + 1, size=(n, rows))
    mult = rng.integers(0, mmax + 1, size=(n, rows))
    shift = rng.integers(0, min(pw + 3, 63), size=(n, rows))
    # corners, cycled over the rows: extreme accumulators against M = 0 / max
    # and S = 0 / just below, at and above the product width / 62
    corner_acc = [amin, amax, 0, -1, 1, amin + 1]
    corner_mult = [0, mmax, 1, mmax - 1 if mmax > 1 else 1]
    corner_shift = sorted({0, 1, pw - 2, pw - 1, pw, pw + 1, 62})
    corners = [(a, mu, s) for a in corner_acc for mu in corner_mult for s in corner_shift]
    # corner k goes to beat k // rows, row k % rows, within the first half of the beats
    for k, (a, mu, s) in enumerate(corners[:(n // 2) * rows]):
        acc[k // rows, k % rows], mult[k // rows, k % rows], shift[k // rows, k % rows] = a, mu, s
    # results near the saturation bounds: small accumulators, moderate shifts
    band = slice(n // 2, n // 2 + n // 4)
    acc[band] = rng.integers(-(1 << min(aw - 1, 12)), 1 << min(aw - 1, 12),
                             size=acc[band].shape)
    shift[band] = rng.integers(0, min(mw + 6, 62), size=shift[band].shape)
    # results on and next to the saturation bounds and zero: pick y, M, S and
    # the accumulators whose product lands within a few units of y * 2**S
    lo, hi = -(1 << (cfg.act_width - 1)), (1 << (cfg.act_width - 1)) - 1
    for b in range(n // 2 + n // 4, n):
        for r in range(rows):
            y = int(rng.choice([lo - 1, lo, lo + 1, -1, 0, 1, hi - 1, hi, hi + 1]))
            mu = int(rng.integers(1, mmax + 1))
            s = int(rng.integers(0, 8))
            a = (y << s) // mu + int(rng.integers(-2, 3))
            if amin <= a <= amax:
                acc[b, r], mult[b, r], shift[b, r] = a, mu, s
    return acc, mult, shift


def requant_expected(cfg, acc, mult, shift, relu):
    """Each beat of :func:`requant_vectors` requantised by :func:`psc.model.golden.requantize`."""
    return np.stack([
        golden.requantize(acc[i].reshape(-1, 1, 1), mult[i], shift[i], act_width=cfg.act_width,
                          relu=relu, mult_width=cfg.mult_width)[:, 0, 0]
        for i in range(len(acc))])
