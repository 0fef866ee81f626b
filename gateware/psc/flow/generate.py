"""Verilog export of the PSC components (``psc generate``) for every preset.

Each top is converted with :func:`amaranth.back.verilog.convert` into its own
file ``<module>.v``; a header comment records the configuration, the latency
where one applies, the ports with their payload bit maps and the command that
regenerates the file. Output is deterministic (no source locations, no
timestamps, no paths), so ``tests/test_rtl.py`` can check that ``rtl/`` is
not stale by regenerating it.

Configurations come only from :data:`psc.presets.PRESETS` (``--preset``, or
``--target`` for a synthesis target's preset), with optional field overrides.

Tops (:data:`TOPS`) and their modules:

* ``sign_mask``, ``weight_select``, ``pe``, ``dot_product``: the primitives,
  built for the preset's datapath ``preset.pe``. For the default preset that
  is ``PSCConfig(depthwise="pixels")``, the MAC array of the default core, so
  ``dot_product.v`` is exactly the dot product inside ``psc_core.v``.
  ``pe_baseline`` and ``dot_product_baseline`` are the same with
  ``psc=False`` (the plain convolution from the same source);
  ``sign_mask`` and ``weight_select`` exist only for PSC.
* ``core``: :class:`psc.hw.core.PSCConvCore` of the preset, module
  ``psc_core``.
* ``bridge``: :class:`psc.hw.link.bridge.Bridge`, the preset's core behind
  the UART bridge with the divisor of :data:`psc.presets.DEFAULT_BAUD` at the
  clock of the board that runs the preset (:func:`psc.flow.board.bridge_config`),
  module ``psc_bridge``; only presets a board runs have one. The board top
  itself (:class:`psc.hw.link.board_top.BoardTop`) is not exported: it adds
  only the platform's I/O buffers and pin constraints around the bridge, and
  those exist only inside an amaranth-boards platform build (``psc build``),
  whose toolchain-specific output is not a portable module.

Cores that hand-instantiate DSP cells (``multiplier="ice40_dual8x8"`` and
``requant_multiplier="ice40_mac16"``: SB_MAC16; ``multiplier="ecp5_mult18"``:
MULT18X18D) keep them as instances; the file then needs
the cell's simulation model (:func:`sim_models`) to be linted or simulated,
which its header says.

Layout of ``rtl/`` (:data:`SHIPPED`, written by a bare ``psc generate``): the
default preset's primitives, their baselines and its core in ``rtl/``; the
core of each synthesis target in ``rtl/<target>/psc_core.v``. Every
directory ``psc generate`` writes gets its own ``lint_waivers.vlt``.
"""

import os

from amaranth.back import verilog
from amaranth.hdl import Shape
from amaranth.lib import data

from psc.build_dir import check_dir
from psc.config import CoreConfig, PSCConfig
from psc.hw import core as hw_core
from psc.hw import hard_mul
from psc.hw.dot_product import DotProduct, input_layout, output_layout
from psc.hw.pe import PSCMac
from psc.hw.requantize import Requantizer
from psc.hw.sign_mask import SignMask
from psc.hw.weight_select import WeightSelect
from psc.presets import BOARDS, DEFAULT_BAUD, PRESETS, TARGETS

__all__ = ["TOPS", "PRIMITIVES", "PSC_ONLY", "SHIPPED", "LINT_WAIVERS", "build_top",
           "module_name", "file_names", "generate_verilog", "lint_waivers_vlt", "write_rtl",
           "write_shipped", "shipped_dir", "regenerate_command", "board_of", "sim_models",
           "OVERRIDES"]

#: Tops ``psc generate --top`` knows, in the order ``all`` writes them.
TOPS = ("sign_mask", "weight_select", "pe", "dot_product", "core", "bridge")
#: Tops built from the datapath alone (``preset.pe``).
PRIMITIVES = ("sign_mask", "weight_select", "pe", "dot_product")
PSC_ONLY = ("sign_mask", "weight_select")
# pe and dot_product are what psc compare sets against their plain twins;
# a plain core is a different build, asked for with --no-psc.
_BASELINE_TWINS = ("pe", "dot_product")
_MODULES = {"core": "psc_core", "bridge": "psc_bridge"}

#: What ``rtl/`` holds: ``(preset, tops)``; the default preset's files go in
#: ``rtl/``, the others in ``rtl/<preset>/`` (:func:`shipped_dir`).
SHIPPED = (("default", ("sign_mask", "weight_select", "pe", "dot_product", "core")),
           *((TARGETS[target], ("core",)) for target in TARGETS))

#: ``psc generate`` overrides: ``(field, flag, type)``. Datapath fields apply to
#: ``preset.pe``; ``psc`` has ``--no-psc`` and ``read_register`` its own pair.
OVERRIDES = (("lanes", "--lanes", int), ("rows", "--rows", int),
             ("act_width", "--act-width", int), ("weight_width", "--weight-width", int),
             ("acc_width", "--acc-width", int), ("mult_width", "--mult-width", int),
             ("max_reduction", "--max-reduction", int), ("multiplier", "--multiplier", str),
             ("requant_multiplier", "--requant-multiplier", str),
             ("tree_stages", "--tree-stages", int), ("requantizers", "--requantizers", int),
             ("requant_mult_bits", "--requant-mult-bits", int),
             ("depthwise", "--depthwise", str),
             ("fmap_depth", "--fmap-depth", int), ("weight_depth", "--weight-depth", int),
             ("param_depth", "--param-depth", int), ("psum_depth", "--psum-depth", int),
             ("psum_width", "--psum-width", int))
_CORE_FIELDS = ("fmap_depth", "weight_depth", "param_depth", "read_register", "psum_depth",
                "psum_width")

#: Verilator ``--lint-only -Wall`` waivers for the generated Verilog; the only
#: place they live. Each is ``(rule, file glob, message glob, why)``, ``None``
#: for "any"; :func:`lint_waivers_vlt` renders them as ``lint_waivers.vlt``.
#: They cover how Amaranth/Yosys write Verilog and the DSP cell models, which
#: are not ours; anything else fails lint.
LINT_WAIVERS = (
    ("DECLFILENAME", None, None,
     "Amaranth writes a top and its submodules (named top.sub) into one file per top."),
    ("PROCASSINIT", None, None,
     "Amaranth declares every register with its init value (reg r = 0) as the FPGA "
     "power-up state and also assigns it in the always block; that is intended."),
    ("UNUSEDSIGNAL", None, None,
     "Amaranth emits a named wire per field of each data.View (x[0], w[1][2], ...) and keeps "
     "named intermediates for waveforms; the accumulator sum's carry bit is dropped on "
     "purpose (PSCConfig sizes acc_width, the host rejects overflowing biases); "
     "pe_baseline keeps the mask port of the shared signature but ignores it; the core "
     "reads only the fields of a command word and of a buffer word each state needs."),
    ("WIDTHEXPAND", None, None,
     "Amaranth defines the width and signedness of every operation; Yosys writes the "
     "operands of additions and comparisons at their own widths (the accumulator update "
     "$signed(acc) + $signed(tree), a 16-bit field == 1'h1) and relies on Verilog's "
     "extension, which gives the same result."),
    ("WIDTHTRUNC", None, "*Logical operator LOGNOT expects 1 bit*",
     "Yosys writes Amaranth's test of a multi-bit value for zero (~x.any(), x == 0) as "
     "!x, which is that test in Verilog."),
    ("WIDTHTRUNC", None, "*Assign RHS's SHIFTR generates*",
     "Amaranth writes a part-select at a variable offset (word_select, the reply "
     "transmitter's byte of a frame) as a shift of the whole value assigned to a wire as "
     "wide as the part: the truncation is the select."),
    ("CASEINCOMPLETE", None, None,
     "Amaranth's Switch/FSM without a default case becomes a casez with no default: the "
     "signals it drives keep the value assigned before the case, as Amaranth specifies."),
    ("CMPCONST", None, "*Comparison is constant due to limited range*",
     "The core checks each command field against the build's limit; when the limit is the "
     "field's largest value (pad_top, pad_left < 8) the check cannot fail and synthesis "
     "removes it."),
    (None, "*_sim.v", None,
     "The DSP cell models (sb_mac16_sim.v from Yosys's cells_sim.v, mult18x18d_sim.v) are "
     "simulation stand-ins of vendor cells, not generated here; only our files are linted."),
)


def lint_waivers_vlt():
    """:data:`LINT_WAIVERS` as a Verilator configuration file (text)."""
    lines = ["`verilator_config",
             "// Lint waivers for the Verilog that `psc generate` writes. Generated from",
             "// psc.flow.generate.LINT_WAIVERS (the single place they live); do not edit.",
             "// Use: verilator --lint-only -Wall lint_waivers.vlt <top>.v [<cell>_sim.v]"]
    for rule, file, match, why in LINT_WAIVERS:
        lines.append("")
        lines += [f"// {rule or 'every rule'}: {part}" if i == 0 else f"//   {part}"
                  for i, part in enumerate(_wrap(why))]
        words = ["lint_off"]
        if rule:
            words.append(f"-rule {rule}")
        if file or match:
            words.append(f'-file "{file or "*"}"')
        if match:
            words.append(f'-match "{match}"')
        lines.append(" ".join(words))
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


def _core_config(config):
    """``config`` as a :class:`CoreConfig`; a bare :class:`PSCConfig` becomes the
    default core's buffers around it (only its ``pe`` matters for the primitives)."""
    if isinstance(config, CoreConfig):
        return config
    if isinstance(config, PSCConfig):
        return PRESETS["default"].replace(pe=config)
    raise TypeError(f"config must be a psc.config.CoreConfig or PSCConfig, not {config!r}")


def _check_top(top):
    if not isinstance(top, str) or top not in TOPS:
        raise ValueError(f"top must be one of {', '.join(TOPS)}, not {top!r}")


def board_of(preset_name):
    """The board (:data:`psc.presets.BOARDS`) that runs preset ``preset_name``, or ``None``."""
    boards = [b for b, target in BOARDS.items() if TARGETS[target] == preset_name]
    return boards[0] if boards else None


def _bridge_config(config, preset_name):
    from psc.flow.board import bridge_config
    board = board_of(preset_name)
    if board is None:
        runs = sorted(TARGETS[t] for t in BOARDS.values())
        raise ValueError(f"top 'bridge' needs a preset a board runs ({', '.join(runs)}) for "
                         f"its clock, not preset {preset_name!r}")
    return board, bridge_config(board, DEFAULT_BAUD, config)


def build_top(top, config, preset_name=None):
    """The Amaranth component for ``top`` (one of :data:`TOPS`) built for ``config``.

    ``config`` is a :class:`CoreConfig` (primitives use its ``pe``) or, for
    the primitives, a :class:`PSCConfig`. ``bridge`` needs ``preset_name``
    for its board's clock (default: the preset ``config`` equals).
    """
    _check_top(top)
    cc = _core_config(config)
    pe = cc.pe
    if top == "sign_mask":
        return SignMask(pe.lanes, pe.act_width)
    if top == "weight_select":
        return WeightSelect(pe.lanes, pe.weight_width)
    if top == "pe":
        return PSCMac(pe)
    if top == "dot_product":
        return DotProduct(pe)
    if top == "core":
        return hw_core.PSCConvCore(cc)
    from psc.hw.link.bridge import Bridge
    return Bridge(_bridge_config(cc, preset_name or _preset_of(cc, top) or "default")[1])


def module_name(top, config):
    """Module and file base name: ``top`` (``psc_core``/``psc_bridge`` for the
    core and the bridge), with ``_baseline`` for a ``psc=False`` build."""
    _check_top(top)
    name = _MODULES.get(top, top)
    return name if _core_config(config).pe.psc else f"{name}_baseline"


def file_names(tops, config, *, baseline=True):
    """``[(top, config, name)]`` to write for ``tops`` under ``config``.

    With ``baseline`` and a PSC ``config``, ``pe`` and ``dot_product`` also get
    a ``psc=False`` twin. A plain (``psc=False``) config skips the PSC-only tops.
    """
    cc = _core_config(config)
    out = []
    for top in tops:
        _check_top(top)
        if top in PSC_ONLY and not cc.pe.psc:
            continue
        out.append((top, config, module_name(top, config)))
    if baseline and cc.pe.psc:
        plain = config.replace(psc=False)   # CoreConfig.replace passes it to pe
        out += [(top, plain, module_name(top, plain)) for top in tops if top in _BASELINE_TWINS]
    return out


def _fields(top):
    # The primitives depend on the datapath only; say nothing about buffers.
    pe_fields = [f for f, _, _ in OVERRIDES if f not in _CORE_FIELDS]
    return pe_fields if top in PRIMITIVES else pe_fields + list(_CORE_FIELDS)


def _value(cc, field):
    return getattr(cc if field in _CORE_FIELDS else cc.pe, field)


def _preset_of(config, top):
    """Name of the preset ``config`` is (for ``top``: datapath only for the primitives)."""
    cc = _core_config(config)
    cc = cc.replace(psc=True)
    for name, preset in PRESETS.items():
        if all(_value(cc, f) == _value(preset, f) for f in _fields(top)):
            return name
    return None


def _preset_args(name):
    if name == "default":
        return []
    target = [t for t, p in TARGETS.items() if p == name]
    return ["--target", target[0]] if target else ["--preset", name]


def regenerate_command(top, config, preset_name=None, *, output=None):
    """``psc generate`` command line that writes ``top`` for ``config``.

    ``preset_name`` is the preset the overrides apply to (default: the preset
    ``config`` is, else ``default``); ``output`` adds ``-o``.
    """
    cc = _core_config(config)
    base_name = preset_name or _preset_of(cc, top) or "default"
    base = PRESETS[base_name]
    args = ["psc", "generate", "--top", top, *_preset_args(base_name)]
    for field, flag, _ in OVERRIDES:
        if field in _fields(top) and _value(cc, field) != _value(base, field):
            value = _value(cc, field)
            if value is None:
                raise ValueError(f"{field}=None cannot be written as an override of preset "
                                 f"{base_name!r}; generate from a preset with {field}=None")
            args += [flag, str(value)]
    if "read_register" in _fields(top) and cc.read_register != base.read_register:
        args.append("--read-register" if cc.read_register else "--no-read-register")
    if not cc.pe.psc:
        args.append("--no-psc")
    if output is not None:
        args += ["-o", output]
    return " ".join(args)


def shipped_dir(preset_name, rtl_dir="rtl"):
    """Directory of ``preset_name``'s files under ``rtl_dir``: ``rtl_dir`` itself for
    the default preset, else ``rtl_dir/<preset_name>``."""
    return os.path.join(rtl_dir, "" if preset_name == "default" else preset_name)


def sim_models(config, top="core"):
    """``{file name: Verilog text}`` of the models of the cells (DSP, SPRAM) that ``top``
    under ``config`` instantiates (the primitive tops: the DSP cells alone)."""
    cc = _core_config(config)
    return hard_mul.sim_models(cc.pe if top in PRIMITIVES else cc)


_MODEL_SOURCES = {"sb_mac16_sim.v": "psc.hw.ice40_mul.sb_mac16_sim_model() (Yosys's "
                                    "share/ice40/cells_sim.v)",
                  "mult18x18d_sim.v": "psc.hw.ecp5_mul.mult18x18d_sim_model() (the "
                                      "project's behavioural stand-in)",
                  "sb_spram256ka_sim.v": "psc.hw.spram.sb_spram256ka_sim_model() (the "
                                         "project's model, checked against Yosys's)"}


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


def _stream_lines(port, direction, layout):
    lines = [f"{port}: stream {direction} ({port}__payload, {port}__valid, {port}__ready), "
             f"payload {Shape.cast(layout).width} bits"]
    if isinstance(layout, data.StructLayout):
        lines += _struct_lines(f"{port}__payload", layout)
    else:
        lines += [f"  {_describe(layout)}"]
    return lines


def _dot_product_ports(pe):
    ilayout, olayout = input_layout(pe), output_layout(pe)
    lines = ["", f"i__payload ({ilayout.size} bits), LSB first:"]
    lines += _struct_lines("i__payload", ilayout)
    w_base = ilayout["w"].offset
    lines += [f"  w[r][l] (row r, lane l) is i__payload[{w_base} + (r * {pe.lanes} + l) * "
              f"{pe.word_width} +: {pe.word_width}]"]
    lines += [f"o__payload ({olayout.size} bits): {_describe(olayout)}"]
    lines += ["Streams: valid/ready; clk rising edge; rst synchronous, active high."]
    return lines


def _core_ports(cc):
    pe = cc.pe
    lines = ["", "Ports (psc.hw.core.PSCConvCore; payloads LSB first):"]
    lines += _stream_lines("cfg", "in", hw_core.command_layout(cc))
    lines += _stream_lines("weights", "in", hw_core.weight_layout(cc))
    lines += [f"  word w[r][l] (row r, lane l) is weights__payload[(r * {pe.lanes} + l) * "
              f"{pe.word_width} +: {pe.word_width}]"
              + (", {W-, W+} with W+ low" if pe.psc else "")]
    lines += _stream_lines("params", "in", hw_core.param_layout(cc))
    lines += _stream_lines("act_in", "in", hw_core.act_in_layout(cc))
    lines += _stream_lines("act_out", "out", hw_core.act_out_layout(cc))
    lines += ["busy, done, error: out 1 bit each",
              f"cycles_total, cycles_compute, cycles_stall: out {hw_core.COUNTER_WIDTH} bits each",
              "Streams: valid/ready; clk rising edge; rst synchronous, active high."]
    return lines


def _unused(component):
    component._MustUse__silence = True   # built for its latency properties only
    return component


def _core_latency(cc):
    dp, rq = _unused(DotProduct(cc.pe)), _unused(Requantizer(cc.pe))
    lines = ["", f"Latency: MAC array (DotProduct) {dp.latency} cycles"
                 + (f", depthwise pixels mode {dp.dw_latency}" if cc.pe.depthwise == "pixels" else "")
                 + f"; requantiser {rq.latency} cycles, one beat per {rq.cycles_per_beat} cycles.",
             "The command's end-to-end timing is in the PSCConvCore docstring."]
    return lines


def _header(top, config, name, component, preset_name):
    cc = _core_config(config)
    what = f"{type(component).__module__}.{type(component).__name__}"
    lines = [
        f"{name}: {what} of the PSC accelerator.",
        "Generated by `psc generate` (gateware/psc/flow/generate.py) with Amaranth; do not edit.",
        "Regenerate from the repository root with:",
        f"  {regenerate_command(top, config, preset_name)}",
        "(without -o it writes only what rtl/ ships, into rtl/ or rtl/<preset>/; "
        "-o DIR writes into DIR)",
        "",
    ]
    if top in PRIMITIVES:
        pe = cc.pe
        lines += [f"Configuration (psc.config.PSCConfig): the datapath of preset "
                  f"{preset_name or _preset_of(cc, top) or 'default'!r} and the command's overrides"]
        lines += [f"  {k} = {v!r}" for k, v in pe.to_dict().items()]
    else:
        base = preset_name or _preset_of(cc, top) or "default"
        lines += [f"Configuration (psc.config.CoreConfig): preset {base!r} and the command's overrides"]
        for k, v in cc.to_dict().items():
            if k == "pe":
                lines += [f"  pe.{pk} = {pv!r}" for pk, pv in v.items()]
            else:
                lines += [f"  {k} = {v!r}"]
    if top == "dot_product":
        lines += ["", f"Latency: {component.latency} cycles (see the component's docstring)."]
        lines += _dot_product_ports(cc.pe)
    elif top == "pe":
        lines += ["", f"Latency: {component.latency} cycles (see the component's docstring)."]
        lines += ["Ports as psc.hw.pe.PSCMac; clk rising edge; rst synchronous, active high."]
    elif top == "core":
        lines += _core_latency(cc)
        lines += _core_ports(cc)
    elif top == "bridge":
        board, bc = _bridge_config(cc, base)
        lines += ["", f"UART: board {board}'s clock, {DEFAULT_BAUD} baud 8N1, divisor {bc.divisor} "
                      f"clocks per bit, frame_timeout {bc.frame_timeout} bit times.",
                  "Ports: rx (in, idle high), tx (out, idle high), busy and error (out, the "
                  "core's; for LEDs);",
                  "clk rising edge; rst synchronous, active high. Protocol: psc.hw.link.bridge.",
                  "Latency: set by the UART (10 * divisor cycles per byte each way)."]
    else:
        lines += ["", "Combinational: no clock or reset."]
    models = sim_models(cc, top) if top in ("pe", "dot_product", "core", "bridge") else {}
    for model in models:
        # a comment that starts with "verilator" would be read as a Verilator pragma
        lines += ["", f"Hand-instantiated cells; lint and simulate with the cell model {model},",
                  f"the text of {_MODEL_SOURCES[model]}."]
    if models:
        lines += [f"Lint: `verilator --lint-only -Wall lint_waivers.vlt {name}.v "
                  f"{' '.join(models)} --top-module {name}`"]
    return "".join(f"// {line}".rstrip() + "\n" for line in lines)


def generate_verilog(top, config, preset_name=None):
    """Verilog text (header + module ``module_name(top, config)``) for ``top`` under ``config``.

    ``preset_name`` names the preset ``config`` derives from (for the header's
    command and the bridge's board); by default the preset ``config`` equals.
    """
    _check_top(top)
    name = module_name(top, config)
    if top in PSC_ONLY and not _core_config(config).pe.psc:
        raise ValueError(f"top {top!r} exists only for psc=True")
    component = build_top(top, config, preset_name)
    header = _header(top, config, name, component, preset_name)
    return header + "\n" + verilog.convert(component, name=name, emit_src=False)


def _write(path, text):
    # newline="\n": byte-identical files on every platform (stale check).
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def write_rtl(out_dir, config=None, tops=PRIMITIVES, *, baseline=True, preset_name=None):
    """Write one ``<module>.v`` per top, and ``lint_waivers.vlt``, into ``out_dir``.

    Returns the written paths in order. ``config`` defaults to
    ``PRESETS["default"]``; see :func:`file_names` for what ``baseline`` adds
    and :func:`generate_verilog` for ``preset_name``.
    """
    check_dir("out_dir", out_dir)
    config = PRESETS["default"] if config is None else config
    if isinstance(tops, str) or not isinstance(tops, (list, tuple)):
        raise ValueError(f"tops must be a list of {', '.join(TOPS)}, not {tops!r}")
    names = file_names(tops, config, baseline=baseline)
    if "bridge" in tops:   # refuse before anything is written
        _bridge_config(_core_config(config), preset_name or _preset_of(config, "bridge") or "default")
    # Every file is generated before the first is written, so a failure leaves no
    # directory half updated.
    texts = [(os.path.join(out_dir, f"{name}.v"), generate_verilog(top, cfg, preset_name))
             for top, cfg, name in names]
    texts.append((os.path.join(out_dir, "lint_waivers.vlt"), lint_waivers_vlt()))
    os.makedirs(out_dir, exist_ok=True)
    for path, text in texts:
        _write(path, text)
    return [path for path, _ in texts]


def write_shipped(rtl_dir="rtl"):
    """Write everything ``rtl/`` ships (:data:`SHIPPED`) under ``rtl_dir``; the written paths."""
    check_dir("rtl_dir", rtl_dir)
    paths = []
    for name, tops in SHIPPED:
        paths += write_rtl(shipped_dir(name, rtl_dir), PRESETS[name], tops,
                           preset_name=name)
    return paths
