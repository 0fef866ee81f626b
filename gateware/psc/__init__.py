"""Phase Selective Convolution (PSC) accelerator: gateware, golden model and host tools."""

__version__ = "0.1.0"
