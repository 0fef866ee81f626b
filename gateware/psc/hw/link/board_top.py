"""The board top: the UART bridge and the core on the PLL clock, wired to a board's UART pins and LEDs."""

from amaranth.hdl import ClockDomain, Elaboratable, Module
from amaranth.build import ResourceError
from amaranth.lib import io

from psc.hw.link.bridge import Bridge, BridgeConfig
from psc.hw.link.network_bridge import NetworkBridge, NetworkBridgeConfig
from psc.hw.pll import ECP5PLLSettings, ICE40PLLSettings, PLLDomain
from psc.model.checks import BadTypeError, show

__all__ = ["BoardTop"]


class BoardTop(Elaboratable):
    """The :class:`~psc.hw.link.bridge.Bridge` (tile mode) or the
    :class:`~psc.hw.link.network_bridge.NetworkBridge` (network mode) on the PLL clock,
    wired to a board's UART and LEDs.

    Everything runs in one ``sync`` domain clocked by the FPGA's PLL
    (:class:`psc.hw.pll.PLLDomain` with ``pll``, fed by the platform's
    default clock), held in reset until the PLL has locked. The UART
    therefore counts PLL cycles: ``config.divisor`` must be computed from
    ``pll.out_hz`` (:func:`psc.hw.link.uart.divisor_for`), as
    :func:`psc.flow.board.bridge_config` does.

    Needs a platform with a default clock resource of frequency
    ``pll.in_hz``, a ``uart`` resource (``rx``, ``tx``) and two ``led``
    resources (amaranth-boards' iCEBreaker and ULX3S have them). LED 0 shows
    the core's ``busy`` (in network mode: an inference runs), LED 1 a refused command
    (``error``); in network mode LED 2, when the board has one, that a program is loaded.
    """

    def __init__(self, config, pll):
        if not isinstance(config, (BridgeConfig, NetworkBridgeConfig)):
            raise BadTypeError(f"config must be a psc.hw.link.bridge.BridgeConfig or a "
                               f"NetworkBridgeConfig, not {show(config)}")
        if not isinstance(pll, (ICE40PLLSettings, ECP5PLLSettings)):
            raise BadTypeError("pll must be a psc.hw.pll.ICE40PLLSettings or ECP5PLLSettings, "
                               f"not {show(pll)}")
        self.config = config
        self.pll = pll

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = ClockDomain("sync")
        m.submodules.clock = PLLDomain(self.pll, "sync")
        network = isinstance(self.config, NetworkBridgeConfig)
        m.submodules.bridge = bridge = (NetworkBridge if network else Bridge)(self.config)
        uart = platform.request("uart", 0, dir={"rx": "-", "tx": "-"})
        # rx goes through the UART's own two-flip-flop synchroniser
        m.submodules.uart_rx = rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = tx = io.Buffer("o", uart.tx)
        m.d.comb += [bridge.rx.eq(rx.i), tx.o.eq(bridge.tx)]
        leds = [bridge.busy, bridge.error] + ([bridge.loaded] if network else [])
        for i, sig in enumerate(leds):
            try:
                pin = platform.request("led", i, dir="-")
            except ResourceError:   # the board has fewer LEDs
                break
            m.submodules[f"led{i}"] = led = io.Buffer("o", pin)
            m.d.comb += led.o.eq(sig)
        return m
