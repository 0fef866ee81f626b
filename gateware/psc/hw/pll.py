"""The design clock from the board oscillator through the FPGA's PLL.

Two halves, one per concern:

* Divider search, pure Python (:func:`ice40_pll`, :func:`ecp5_pll`,
  :func:`pll_settings`): the PLL settings whose output is nearest a requested
  frequency, within the device's limits (:data:`ICE40_LIMITS`,
  :data:`ECP5_LIMITS`). The search and its tie-breaks are those of
  icestorm's ``icepll`` (SIMPLE feedback) and prjtrellis' ``ecppll``, so the
  dividers are the ones those tools print for the same request; arithmetic
  is exact (fractions) where the tools use floating point. The result is a
  frozen :class:`ICE40PLLSettings` or :class:`ECP5PLLSettings` with the
  achieved frequency.
* Gateware: :class:`ICE40PLL` (``SB_PLL40_PAD``) and :class:`ECP5PLL`
  (``EHXPLLL``) instantiate the primitive and drive a clock domain (the
  caller defines it) from its output, held in reset until the PLL reports
  lock (:class:`LockReset`); :class:`PLLDomain` does the same from an
  amaranth-boards platform's default clock resource and tells nextpnr the
  output frequency.
"""

import math
from dataclasses import asdict, dataclass
from fractions import Fraction

from amaranth.hdl import ClockDomain, ClockSignal, Elaboratable, Instance, Module, ResetSignal, Signal
from amaranth.lib import io, wiring
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.lib.wiring import In

from psc.model.checks import BadTypeError, show

__all__ = ["ICE40_LIMITS", "ECP5_LIMITS", "DEFAULT_TOLERANCE", "SETTLE_SECONDS",
           "ICE40PLLSettings", "ECP5PLLSettings", "ice40_pll", "ecp5_pll", "pll_settings",
           "LockReset", "ICE40PLL", "ECP5PLL", "PLLDomain"]

_MHZ = 1_000_000

#: iCE40 PLL limits (Hz), as ``icepll`` checks them: reference input, phase
#: detector (input / (DIVR + 1)), VCO (SIMPLE feedback: PFD * (DIVF + 1)) and
#: output (VCO / 2**DIVQ).
ICE40_LIMITS = {"input": (10 * _MHZ, 133 * _MHZ), "pfd": (10 * _MHZ, 133 * _MHZ),
                "vco": (533 * _MHZ, 1066 * _MHZ), "output": (16 * _MHZ, 275 * _MHZ)}

#: ECP5 EHXPLLL limits (Hz), as ``ecppll`` has them: reference input, phase
#: detector (input / CLKI_DIV), VCO (PFD * CLKFB_DIV * CLKOP_DIV, CLKOP being
#: the feedback clock) and output (VCO / CLKOP_DIV).
ECP5_LIMITS = {"input": (8 * _MHZ, 400 * _MHZ), "pfd": (Fraction(3125, 1000) * _MHZ, 400 * _MHZ),
               "vco": (400 * _MHZ, 800 * _MHZ), "output": (10 * _MHZ, 400 * _MHZ)}

#: Largest relative distance between the requested and the achieved output
#: frequency that :func:`ice40_pll` and :func:`ecp5_pll` accept by default.
DEFAULT_TOLERANCE = 0.01

#: How long the domain stays in reset once the PLL has locked. iCE40 block RAMs
#: read as zero for a few microseconds after configuration, and the lock time
#: is not specified as an upper bound on that, so the reset outlasts it the way
#: amaranth's own iCE40 power-on reset does (five times the observed delay).
SETTLE_SECONDS = 15e-6

# ecppll's VCO preference among settings with the same output: nearest mid-range
_ECP5_VCO_CENTRE = sum(ECP5_LIMITS["vco"]) // 2


def _mhz(hz):
    return f"{float(hz) / _MHZ:g} MHz"


def _check_hz(name, value, limits, device):
    if not isinstance(value, (int, float, Fraction)) or isinstance(value, bool):
        raise BadTypeError(f"{name} must be a frequency in Hz (a number), not {show(value)}")
    lo, hi = limits
    if not (math.isfinite(value) and lo <= value <= hi):
        raise ValueError(f"{name} must be in [{_mhz(lo)}, {_mhz(hi)}] for the {device} PLL, "
                         f"not {show(value)} ({_mhz(value) if math.isfinite(value) else value})")
    return Fraction(value)


def _check_tolerance(tolerance):
    if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) \
            or not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be a number in [0, 1), not {show(tolerance)}")
    return tolerance


def _check_achieved(device, requested, achieved, tolerance, settings):
    if abs(achieved - requested) > tolerance * requested:
        raise ValueError(f"out_hz {show(float(requested))} ({_mhz(requested)}) is not reachable "
                         f"within {tolerance:g} of it on the {device} PLL from this input: the "
                         f"nearest is {_mhz(achieved)} ({settings})")


@dataclass(frozen=True)
class ICE40PLLSettings:
    """Settings of an iCE40 ``SB_PLL40_*`` with SIMPLE feedback (:func:`ice40_pll`).

    ``in_hz`` is the reference, ``requested_hz`` what was asked for; the
    output is ``in_hz * (divf + 1) / ((divr + 1) * 2**divq)``
    (:attr:`out_hz`). ``filter_range`` is the loop filter setting for the
    phase detector frequency, as ``icepll`` chooses it.
    """
    in_hz: float
    requested_hz: float
    divr: int
    divf: int
    divq: int
    filter_range: int

    family = "ice40"
    feedback_path = "SIMPLE"

    @property
    def pfd_hz(self):
        """Phase detector frequency, ``in_hz / (divr + 1)``."""
        return float(Fraction(self.in_hz) / (self.divr + 1))

    @property
    def vco_hz(self):
        """VCO frequency, ``pfd_hz * (divf + 1)``."""
        return float(Fraction(self.in_hz) * (self.divf + 1) / (self.divr + 1))

    @property
    def out_hz(self):
        """The achieved output frequency."""
        return float(Fraction(self.in_hz) * (self.divf + 1) / ((self.divr + 1) << self.divq))

    def describe(self):
        """The dividers as ``icepll`` prints them, on one line."""
        return (f"DIVR={self.divr} DIVF={self.divf} DIVQ={self.divq} "
                f"FILTER_RANGE={self.filter_range}")

    def to_dict(self):
        """Fields and derived frequencies (Hz), JSON-ready."""
        return {**asdict(self), "family": self.family, "feedback_path": self.feedback_path,
                "pfd_hz": self.pfd_hz, "vco_hz": self.vco_hz, "out_hz": self.out_hz}


@dataclass(frozen=True)
class ECP5PLLSettings:
    """Settings of an ECP5 ``EHXPLLL`` with CLKOP as feedback (:func:`ecp5_pll`).

    The output is ``in_hz * clkfb_div / clki_div`` (:attr:`out_hz`); the VCO
    runs at ``clkop_div`` times that. ``clkop_cphase``/``clkop_fphase`` are
    the coarse and fine static phase of CLKOP; as CLKOP is also the feedback
    clock the loop aligns it to the input whatever they are, and they follow
    ``ecppll`` (half an output period, see :func:`ecp5_pll`).
    """
    in_hz: float
    requested_hz: float
    clki_div: int
    clkfb_div: int
    clkop_div: int
    clkop_cphase: int
    clkop_fphase: int = 0

    family = "ecp5"
    feedback_path = "CLKOP"

    @property
    def pfd_hz(self):
        """Phase detector frequency, ``in_hz / clki_div``."""
        return float(Fraction(self.in_hz) / self.clki_div)

    @property
    def vco_hz(self):
        """VCO frequency, ``out_hz * clkop_div``."""
        return float(Fraction(self.in_hz) * self.clkfb_div * self.clkop_div / self.clki_div)

    @property
    def out_hz(self):
        """The achieved output frequency."""
        return float(Fraction(self.in_hz) * self.clkfb_div / self.clki_div)

    def describe(self):
        """The dividers as ``ecppll`` names them, on one line."""
        return (f"CLKI_DIV={self.clki_div} CLKFB_DIV={self.clkfb_div} "
                f"CLKOP_DIV={self.clkop_div} CLKOP_CPHASE={self.clkop_cphase}")

    def to_dict(self):
        """Fields and derived frequencies (Hz), JSON-ready."""
        return {**asdict(self), "family": self.family, "feedback_path": self.feedback_path,
                "pfd_hz": self.pfd_hz, "vco_hz": self.vco_hz, "out_hz": self.out_hz}


def _in_range(value, limits):
    return limits[0] <= value <= limits[1]


def _ice40_filter_range(pfd):
    # icepll's loop filter table, upper PFD bounds in MHz for ranges 1..5
    for filter_range, bound in enumerate((17, 26, 44, 66, 101), start=1):
        if pfd < bound * _MHZ:
            return filter_range
    return 6


def ice40_pll(in_hz, out_hz, *, tolerance=DEFAULT_TOLERANCE):
    """iCE40 PLL settings (SIMPLE feedback) for ``out_hz`` from the reference ``in_hz``.

    Searches DIVR 0-15, DIVF 0-127, DIVQ 1-6 in that order, keeps the first
    setting nearest ``out_hz`` whose phase detector, VCO and output are
    within :data:`ICE40_LIMITS` (``icepll``'s search, which does not check
    the output it achieves), and picks the loop filter
    from the phase detector frequency as ``icepll`` does.

    Raises ``ValueError`` naming the parameter when ``in_hz`` or ``out_hz``
    is outside the device's range, or when the nearest output is more than
    ``tolerance`` (relative) away from ``out_hz``.
    """
    lim = ICE40_LIMITS
    fin = _check_hz("in_hz", in_hz, lim["input"], "iCE40")
    want = _check_hz("out_hz", out_hz, lim["output"], "iCE40")
    tolerance = _check_tolerance(tolerance)
    best = None
    for divr in range(16):
        pfd = fin / (divr + 1)
        if not _in_range(pfd, lim["pfd"]):
            continue
        for divf in range(128):
            vco = pfd * (divf + 1)
            if not _in_range(vco, lim["vco"]):
                continue
            for divq in range(1, 7):
                out = vco / (1 << divq)
                # icepll checks only the request's range; an output past the limit is no setting
                if not _in_range(out, lim["output"]):
                    continue
                err = abs(out - want)
                if best is None or err < best[0]:
                    best = (err, divr, divf, divq)
    if best is None:   # any reference within the limits has one; kept for changed limits
        raise ValueError(f"in_hz {show(in_hz)}: no iCE40 PLL setting within its limits")
    _, divr, divf, divq = best
    settings = ICE40PLLSettings(float(in_hz), float(out_hz), divr, divf, divq,
                                _ice40_filter_range(fin / (divr + 1)))
    _check_achieved("iCE40", want, Fraction(settings.out_hz), tolerance, settings.describe())
    return settings


def ecp5_pll(in_hz, out_hz, *, tolerance=DEFAULT_TOLERANCE):
    """ECP5 ``EHXPLLL`` settings (CLKOP feedback) for ``out_hz`` from the reference ``in_hz``.

    ``ecppll``'s search over CLKI_DIV 1-128, CLKFB_DIV 1-80, CLKOP_DIV 1-128:
    the output nearest ``out_hz`` with the phase detector, VCO and output
    within :data:`ECP5_LIMITS`; between equal outputs the VCO nearest the middle of
    its range, then the first found. The output depends on CLKI_DIV and
    CLKFB_DIV alone, so CLKOP_DIV is only chosen for the VCO. CLKOP_CPHASE is
    half the output period in VCO cycles, rounded down, the phase ``ecppll``
    means to set (it computes it in floating point and prints one less for
    some even CLKOP_DIV; the phase of the feedback output does not move it).

    Raises ``ValueError`` as :func:`ice40_pll` does.
    """
    lim = ECP5_LIMITS
    fin = _check_hz("in_hz", in_hz, lim["input"], "ECP5")
    want = _check_hz("out_hz", out_hz, lim["output"], "ECP5")
    tolerance = _check_tolerance(tolerance)
    vco_lo, vco_hi = lim["vco"]
    best = None
    for clki_div in range(1, 129):
        pfd = fin / clki_div
        if not _in_range(pfd, lim["pfd"]):
            continue
        for clkfb_div in range(1, 81):
            out = pfd * clkfb_div
            if not _in_range(out, lim["output"]):
                continue
            lo = max(1, math.ceil(vco_lo / out))
            hi = min(128, math.floor(vco_hi / out))
            if lo > hi:
                continue
            # the first CLKOP_DIV with the VCO nearest the centre, as ecppll's strict compare
            clkop_div = min(range(lo, hi + 1), key=lambda d: abs(out * d - _ECP5_VCO_CENTRE))
            key = (abs(out - want), abs(out * clkop_div - _ECP5_VCO_CENTRE))
            if best is None or key < best[0]:
                best = (key, clki_div, clkfb_div, clkop_div)
    if best is None:
        raise ValueError(f"in_hz {show(in_hz)}: no ECP5 PLL setting within its limits")
    _, clki_div, clkfb_div, clkop_div = best
    settings = ECP5PLLSettings(float(in_hz), float(out_hz), clki_div, clkfb_div, clkop_div,
                               clkop_cphase=clkop_div // 2)
    _check_achieved("ECP5", want, Fraction(settings.out_hz), tolerance, settings.describe())
    return settings


_SEARCH = {"ice40": ice40_pll, "ecp5": ecp5_pll}


def pll_settings(family, in_hz, out_hz, *, tolerance=DEFAULT_TOLERANCE):
    """:func:`ice40_pll` or :func:`ecp5_pll` by ``family`` (``"ice40"`` or ``"ecp5"``)."""
    if family not in _SEARCH:
        raise ValueError(f"family must be one of {', '.join(map(repr, _SEARCH))}, not {show(family)}")
    return _SEARCH[family](in_hz, out_hz, tolerance=tolerance)


class LockReset(wiring.Component):
    """Drives the clock and reset of domain ``domain``: clocked by ``clk``, in reset until
    ``lock`` has been high for ``settle`` cycles of ``clk``.

    The domain itself is the caller's to define (``m.domains.sync =
    ClockDomain()`` in the design's top or a parent of this component), so
    that the modules using it sit below the one defining it.

    The reset rises as soon as ``lock`` falls (asynchronously: a PLL's clock
    may stop or glitch while it is out of lock; the domain's registers take
    it at their next edge) and falls synchronously to ``clk`` once ``lock``
    has been seen high, through a two-stage
    :class:`~amaranth.lib.cdc.ResetSynchronizer`, for ``settle`` further
    cycles. Release latency after ``lock`` rises: ``settle + 3`` cycles of
    ``clk``.

    Ports: ``clk`` (in) the clock, ``lock`` (in, any clock) high when it is
    stable.
    """
    clk: In(1)
    lock: In(1)

    def __init__(self, settle, domain="sync"):
        if not isinstance(settle, int) or isinstance(settle, bool) or settle < 0:
            raise ValueError(f"settle must be a non-negative integer, not {show(settle)}")
        if not isinstance(domain, str) or not domain:
            raise ValueError(f"domain must be a non-empty domain name, not {show(domain)}")
        self.settle = settle
        self.domain = domain
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        # the counter's own domain: the clock, reset at once while out of lock
        m.domains.settle = ClockDomain("settle", async_reset=True, local=True)
        m.d.comb += ClockSignal("settle").eq(self.clk)
        m.submodules.lock_sync = ResetSynchronizer(~self.lock, domain="settle")
        timer = Signal(range(self.settle + 1))
        ready = Signal()
        with m.If(timer == self.settle):
            m.d.settle += ready.eq(1)
        with m.Else():
            m.d.settle += timer.eq(timer + 1)
        m.d.comb += [ClockSignal(self.domain).eq(self.clk), ResetSignal(self.domain).eq(~ready)]
        return m


def _settle_cycles(settings):
    return math.ceil(SETTLE_SECONDS * settings.out_hz)


def _check_settings(settings, cls):
    if not isinstance(settings, cls):
        raise BadTypeError(f"settings must be a psc.hw.pll.{cls.__name__}, not {show(settings)}")
    return settings


class ICE40PLL(Elaboratable):
    """iCE40 ``SB_PLL40_PAD`` (SIMPLE feedback) from the pad ``pin``; drives the clock and
    reset of ``domain`` (defined by the caller) from its global output (:class:`LockReset`).

    ``pin`` is the reference clock's top-level port (an
    :class:`~amaranth.hdl.IOPort`, or a port-like with an ``io`` attribute
    such as a resource requested with ``dir="-"``): the PLL of a PAD
    variant takes it straight from the pin, with no I/O buffer. ``clk`` is
    the PLL's output (for a clock constraint), ``lock`` its LOCK output.
    """

    def __init__(self, settings, pin, domain="sync"):
        self.settings = _check_settings(settings, ICE40PLLSettings)
        self.pin = getattr(pin, "io", pin)
        self.domain = domain
        # nextpnr finds the clock constraint by this name; without keep, Yosys would
        # drop it for another name of the same net
        self.clk = Signal(name="pll_clk", attrs={"keep": 1})
        self.lock = Signal(name="pll_lock")

    def elaborate(self, platform):
        m = Module()
        s = self.settings
        m.submodules.pll = Instance(
            "SB_PLL40_PAD",
            p_FEEDBACK_PATH=s.feedback_path, p_PLLOUT_SELECT="GENCLK",
            p_DIVR=s.divr, p_DIVF=s.divf, p_DIVQ=s.divq, p_FILTER_RANGE=s.filter_range,
            i_PACKAGEPIN=self.pin, i_RESETB=1, i_BYPASS=0,
            o_PLLOUTGLOBAL=self.clk, o_LOCK=self.lock)
        m.submodules.reset = reset = LockReset(_settle_cycles(s), self.domain)
        m.d.comb += [reset.clk.eq(self.clk), reset.lock.eq(self.lock)]
        return m


class ECP5PLL(Elaboratable):
    """ECP5 ``EHXPLLL`` on CLKOP (its own feedback) from the clock signal ``clk_in``; drives
    the clock and reset of ``domain`` (defined by the caller) from CLKOP (:class:`LockReset`).

    ``clk_in`` comes from the reference pin's input buffer. ``clk`` is
    CLKOP (for a clock constraint), ``lock`` the LOCK output.
    """

    def __init__(self, settings, clk_in, domain="sync"):
        self.settings = _check_settings(settings, ECP5PLLSettings)
        self.clk_in = clk_in
        self.domain = domain
        # nextpnr finds the clock constraint by this name; without keep, Yosys would
        # drop it for another name of the same net
        self.clk = Signal(name="pll_clk", attrs={"keep": 1})
        self.lock = Signal(name="pll_lock")

    def elaborate(self, platform):
        m = Module()
        s = self.settings
        m.submodules.pll = Instance(
            "EHXPLLL",
            # the analogue settings ecppll writes (Lattice's defaults for this PLL)
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
            a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_CLKOP_ENABLE="ENABLED",
            p_CLKI_DIV=s.clki_div, p_CLKFB_DIV=s.clkfb_div, p_CLKOP_DIV=s.clkop_div,
            p_CLKOP_CPHASE=s.clkop_cphase, p_CLKOP_FPHASE=s.clkop_fphase,
            p_FEEDBK_PATH=s.feedback_path,
            i_CLKI=self.clk_in, i_CLKFB=self.clk, i_RST=0, i_STDBY=0,
            i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
            i_PLLWAKESYNC=0, i_ENCLKOP=0,
            o_CLKOP=self.clk, o_LOCK=self.lock)
        m.submodules.reset = reset = LockReset(_settle_cycles(s), self.domain)
        m.d.comb += [reset.clk.eq(self.clk), reset.lock.eq(self.lock)]
        return m


class PLLDomain(Elaboratable):
    """Clock and reset of domain ``domain`` from an amaranth-boards platform's default clock
    through its PLL.

    Requests the platform's ``default_clk`` resource (``clk12`` on the
    iCEBreaker, ``clk25`` on the ULX3S), whose frequency must be
    ``settings.in_hz``, builds :class:`ICE40PLL` or :class:`ECP5PLL` by the
    type of ``settings`` and constrains the PLL output to
    ``settings.out_hz`` for nextpnr. The caller defines the domain
    (``m.domains.sync = ClockDomain()`` in the top); a design that defines
    ``sync`` keeps the platform from creating its default one on the same
    pin. Needs a platform; the primitives' classes do not.
    """

    def __init__(self, settings, domain="sync"):
        if not isinstance(settings, (ICE40PLLSettings, ECP5PLLSettings)):
            raise BadTypeError("settings must be a psc.hw.pll.ICE40PLLSettings or "
                               f"ECP5PLLSettings, not {show(settings)}")
        self.settings = settings
        self.domain = domain

    def elaborate(self, platform):
        if platform is None or getattr(platform, "default_clk", None) is None:
            raise ValueError(f"PLLDomain needs a platform with a default clock, not {platform!r}")
        s = self.settings
        if platform.default_clk_frequency != s.in_hz:
            raise ValueError(f"settings.in_hz must be the platform's {platform.default_clk} "
                             f"frequency {_mhz(platform.default_clk_frequency)}, "
                             f"not {_mhz(s.in_hz)}")
        m = Module()
        pin = platform.request(platform.default_clk, dir="-")
        if isinstance(s, ICE40PLLSettings):
            m.submodules.ice40 = pll = ICE40PLL(s, pin, self.domain)
        else:
            m.submodules.clk_buf = buf = io.Buffer("i", pin)
            m.submodules.ecp5 = pll = ECP5PLL(s, buf.i, self.domain)
        platform.add_clock_constraint(pll.clk, s.out_hz)
        return m
