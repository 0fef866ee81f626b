"""Verilog export of the PSC components (``psc generate``) and the shipped configurations.

Each top is converted with :func:`amaranth.back.verilog.convert` into its own
file ``<name>.v`` whose module is ``<name>``; a header comment records the
configuration and the command that regenerates the file. Output is
deterministic (no source locations, no timestamps, no paths), so
``tests/test_rtl.py`` can check that ``rtl/`` is not stale by regenerating it.

Names: ``sign_mask``, ``weight_select``, ``pe``, ``dot_product`` for the
configuration as given; ``pe_baseline`` and ``dot_product_baseline`` for the
same configuration with ``psc=False`` (the plain convolution from the same
source). ``sign_mask`` and ``weight_select`` exist only for PSC.
"""

import os

from amaranth.back import verilog
from amaranth.hdl import Shape
from amaranth.lib import data

from psc.config import PSCConfig
from psc.hw.dot_product import DotProduct, input_layout, output_layout
from psc.hw.pe import PSCMac
from psc.hw.sign_mask import SignMask
from psc.hw.weight_select import WeightSelect

__all__ = ["PRESETS", "TOPS", "LINT_WAIVERS", "build_top", "module_name", "file_names",
           "generate_verilog", "lint_waivers_vlt", "write_rtl", "regenerate_command"]


#: Shipped configurations. ``default`` is what ``rtl/`` holds.
PRESETS = {
    "default": PSCConfig(),
    # Small enough for fast simulation and lint in tests.
    "tiny": PSCConfig(lanes=2, rows=2),
    # iCE40 UP5K: 16 int8 MACs on its 8 SB_MAC16 (two signed 8x8 products
    # each, hand-instantiated), two registers in the adder tree (the fastest
    # and smallest of tree_stages 0..2 there). Synthesise without -dsp and
    # simulate with psc.hw.ice40_mul.sb_mac16_sim_model(); not in rtl/.
    "up5k": PSCConfig(lanes=8, rows=2, multiplier="ice40_dual8x8", tree_stages=2),
}

#: Tops ``psc generate --top`` knows, in the order ``all`` writes them.
TOPS = ("sign_mask", "weight_select", "pe", "dot_product")

PSC_ONLY = ("sign_mask", "weight_select")

#: Verilator ``--lint-only -Wall`` waivers for the generated Verilog; the only
#: place they live. Each is ``(rule, message glob or None, why)``;
#: :func:`lint_waivers_vlt` renders them as ``rtl/lint_waivers.vlt``. They cover
#: how Amaranth/Yosys write Verilog, not design issues; anything else fails lint.
LINT_WAIVERS = (
    ("DECLFILENAME", None,
     "Amaranth writes a top and its submodules (named top.sub) into one file per top."),
    ("PROCASSINIT", None,
     "Amaranth declares every register with its init value (reg r = 0) as the FPGA "
     "power-up state and also assigns it in the always block; that is intended."),
    ("UNUSEDSIGNAL", None,
     "Amaranth emits a named wire per field of each data.View (x[0], w[1][2], ...) and keeps "
     "named intermediates for waveforms; the accumulator sum's carry bit is dropped on "
     "purpose (PSCConfig sizes acc_width, the host rejects overflowing biases); "
     "pe_baseline keeps the mask port of the shared signature but ignores it."),
    ("WIDTHEXPAND", "*Operator ADD expects*",
     "Yosys writes the accumulator update as $signed(acc) + $signed(tree) with the tree "
     "narrower than acc, relying on Verilog's sign extension, which is the intended arithmetic."),
)


def lint_waivers_vlt():
    """:data:`LINT_WAIVERS` as a Verilator configuration file (text)."""
    lines = ["`verilator_config",
             "// Lint waivers for the Verilog that `psc generate` writes. Generated from",
             "// psc.flow.generate.LINT_WAIVERS (the single place they live); do not edit.",
             "// Use: verilator --lint-only -Wall rtl/lint_waivers.vlt rtl/<top>.v"]
    for rule, match, why in LINT_WAIVERS:
        lines.append("")
        lines += [f"// {rule}: {part}" if i == 0 else f"//   {part}"
                  for i, part in enumerate(_wrap(why))]
        lines.append(f'lint_off -rule {rule}' + (f' -file "*" -match "{match}"' if match else ""))
    return "\n".join(lines) + "\n"


def _wrap(text, width=88):
    out, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return out + [line]


def build_top(top, config):
    """The Amaranth component for ``top`` (one of :data:`TOPS`) built for ``config``."""
    if top == "sign_mask":
        return SignMask(config.lanes, config.act_width)
    if top == "weight_select":
        return WeightSelect(config.lanes, config.weight_width)
    if top == "pe":
        return PSCMac(config)
    if top == "dot_product":
        return DotProduct(config)
    raise ValueError(f"top must be one of {', '.join(TOPS)}, not {top!r}")


def module_name(top, config):
    """Module and file base name: ``top``, with ``_baseline`` for a ``psc=False`` build."""
    return top if config.psc else f"{top}_baseline"


def file_names(tops, config, *, baseline=True):
    """``[(top, config, name)]`` to write for ``tops`` under ``config``.

    With ``baseline`` and a PSC ``config``, ``pe`` and ``dot_product`` also get
    a ``psc=False`` twin. A plain (``psc=False``) config skips the PSC-only tops.
    """
    out = []
    for top in tops:
        if top in PSC_ONLY and not config.psc:
            continue
        out.append((top, config, module_name(top, config)))
    if baseline and config.psc:
        plain = config.replace(psc=False)
        out += [(top, plain, module_name(top, plain)) for top in tops if top not in PSC_ONLY]
    return out


def _preset_of(config):
    for name, preset in PRESETS.items():
        if preset == config:
            return name
    return None


_FLAGS = (("lanes", "--lanes"), ("rows", "--rows"), ("act_width", "--act-width"),
          ("weight_width", "--weight-width"), ("acc_width", "--acc-width"),
          ("mult_width", "--mult-width"), ("max_reduction", "--max-reduction"),
          ("multiplier", "--multiplier"), ("tree_stages", "--tree-stages"))


def regenerate_command(top, config):
    """Shortest ``psc generate`` command line that writes ``top`` for ``config``."""
    args = ["psc", "generate", "--top", top]
    base_name = _preset_of(config.replace(psc=True))
    if base_name is None:
        base_name = "default"
    if base_name != "default":
        args += ["--preset", base_name]
    base = PRESETS[base_name]
    for field, flag in _FLAGS:
        if getattr(config, field) != getattr(base, field):
            args += [flag, str(getattr(config, field))]
    if not config.psc:
        args.append("--no-psc")
    return " ".join(args)


def _describe(shape):
    if isinstance(shape, data.ArrayLayout):
        dims = []
        while isinstance(shape, data.ArrayLayout):
            dims.append(str(shape.length))
            shape = shape.elem_shape
        return f"{' x '.join(dims)} x {_describe(shape)}, index 0 lowest"
    s = Shape.cast(shape)
    return f"{'signed' if s.signed else 'unsigned'}({s.width})"


def _struct_lines(port, layout):
    return [f"  {port}[{field.offset + field.width - 1}:{field.offset}]  {name}: {_describe(field.shape)}"
            for name, field in layout]


def _header(top, config, name, component):
    lines = [
        f"{name}: {type(component).__module__}.{type(component).__name__} of the PSC accelerator.",
        "Generated by `psc generate` (gateware/psc/generate.py) with Amaranth; do not edit.",
        "Regenerate from the repository root with:",
        f"  {regenerate_command(top, config)}",
        "(writes rtl/; -o DIR writes elsewhere)",
        "",
        "Configuration (psc.config.PSCConfig):",
    ]
    lines += [f"  {k} = {v!r}" for k, v in config.to_dict().items()]
    if hasattr(component, "latency"):
        lines += ["", f"Latency: {component.latency} cycles (see the component's docstring)."]
    if top == "dot_product":
        ilayout, olayout = input_layout(config), output_layout(config)
        lines += ["", f"i__payload ({ilayout.size} bits), LSB first:"]
        lines += _struct_lines("i__payload", ilayout)
        w_base = ilayout["w"].offset
        lines += [f"  w[r][l] (row r, lane l) is i__payload[{w_base} + (r * {config.lanes} + l) * "
                  f"{config.word_width} +: {config.word_width}]"]
        lines += [f"o__payload ({olayout.size} bits): {_describe(olayout)}"]
        lines += ["Streams: valid/ready; clk rising edge; rst synchronous, active high."]
    elif top == "pe":
        lines += ["Ports as psc.hw.pe.PSCMac; clk rising edge; rst synchronous, active high."]
    else:
        lines += ["", "Combinational: no clock or reset."]
    return "".join(f"// {line}".rstrip() + "\n" for line in lines)


def generate_verilog(top, config):
    """Verilog text (header + module ``module_name(top, config)``) for ``top`` under ``config``."""
    name = module_name(top, config)
    if top in PSC_ONLY and not config.psc:
        raise ValueError(f"top {top!r} exists only for psc=True")
    component = build_top(top, config)
    header = _header(top, config, name, component)
    return header + "\n" + verilog.convert(component, name=name, emit_src=False)


def _write(path, text):
    # newline="\n": byte-identical files on every platform (stale check).
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def write_rtl(out_dir, config=None, tops=TOPS, *, baseline=True):
    """Write one ``<name>.v`` per top, and ``lint_waivers.vlt``, into ``out_dir``.

    Returns the written paths in order. ``config`` defaults to
    ``PRESETS["default"]``; see :func:`file_names` for what ``baseline`` adds.
    """
    config = PRESETS["default"] if config is None else config
    for top in tops:
        if top not in TOPS:
            raise ValueError(f"top must be one of {', '.join(TOPS)}, not {top!r}")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for top, cfg, name in file_names(tops, config, baseline=baseline):
        path = os.path.join(out_dir, f"{name}.v")
        _write(path, generate_verilog(top, cfg))
        paths.append(path)
    path = os.path.join(out_dir, "lint_waivers.vlt")
    _write(path, lint_waivers_vlt())
    paths.append(path)
    return paths
