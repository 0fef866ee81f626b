"""The board link in gateware: UART, protocol frames, the bridge between UART and core."""
