"""Amaranth gateware: arithmetic parts (sign mask, weight select, multipliers, PE, dot product, requantiser), the core, the link."""
