"""The numpy side of PSC: the bit-exact golden model and the packer (numpy only, no gateware)."""
