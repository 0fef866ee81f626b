"""The board top: the UART bridge and the core wired to a board's UART pins and LEDs."""

from amaranth.hdl import Elaboratable, Module
from amaranth.lib import io

from psc.hw.link.bridge import Bridge, BridgeConfig

__all__ = ["BoardTop"]


class BoardTop(Elaboratable):
    """The :class:`~psc.hw.link.bridge.Bridge` wired to a board's UART and two LEDs.

    Needs a platform with a ``uart`` resource (``rx``, ``tx``) and two ``led``
    resources (amaranth-boards' iCEBreaker and ULX3S have them). LED 0 shows
    the core's ``busy``, LED 1 a refused command (``error``).
    """

    def __init__(self, config):
        if not isinstance(config, BridgeConfig):
            raise TypeError(f"config must be a psc.hw.link.bridge.BridgeConfig, not {config!r}")
        self.config = config

    def elaborate(self, platform):
        m = Module()
        m.submodules.bridge = bridge = Bridge(self.config)
        uart = platform.request("uart", 0, dir={"rx": "-", "tx": "-"})
        # rx goes through the UART's own two-flip-flop synchroniser
        m.submodules.uart_rx = rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = tx = io.Buffer("o", uart.tx)
        m.d.comb += [bridge.rx.eq(rx.i), tx.o.eq(bridge.tx)]
        for i, sig in enumerate((bridge.busy, bridge.error)):
            m.submodules[f"led{i}"] = led = io.Buffer("o", platform.request("led", i, dir="-"))
            m.d.comb += led.o.eq(sig)
        return m
