"""Formal proofs of the PSC primitives (tb.formal; Yosys's SAT solver from the YoWASP wheel).

(a) DotProduct (a 2 x 2 datapath) keeps the stream contract: assumed on ``i``,
    proven on ``o`` for every reachable state (k-induction); and ``o.valid``
    has no combinational path from ``o.ready``.
(b) SignMask + WeightSelect + multiply equals ``W+ * x if x >= 0 else W- * x``
    for every 8-bit activation and weight pair (combinational proof).

Each proof comes with a check that the harness can fail: a broken design, or
an assertion that must be falsified, has to produce a counterexample.
Work directories: build/formal/<name>/ (yosys.log, cex.vcd on failure).
"""

import pytest

from psc.config import PSCConfig
from psc.hw.dot_product import DotProduct
from psc.presets import PRESETS
from psc.hw.sign_mask import SignMask
from psc.hw.weight_select import WeightSelect
from tb.formal import (FormalError, SignSelectMiter, StreamContract, check_no_comb_path, prove,
                       run_sby, smt_solver)
from tb.standins import BrokenStreamRegister, StandinWeightSelect, StreamRegister

# small enough for quick proofs
TINY = PSCConfig(lanes=2, rows=2)


# --- (a) stream contract -----------------------------------------------------

@pytest.mark.parametrize("psc", [True, False], ids=["psc", "baseline"])
def test_dot_product_stream_contract(psc):
    result = prove(f"dot_product_contract_{'psc' if psc else 'baseline'}",
                   StreamContract(DotProduct(TINY.replace(psc=psc))))
    assert result.passed


def test_dot_product_contract_not_vacuous():
    # Under the same assumptions the design does produce output: "o.valid never
    # rises" must be refuted, so the assumptions do not exclude all traces.
    prove("dot_product_vacuity", StreamContract(DotProduct(TINY), vacuity=True),
          maxsteps=8, expect="fail")


def test_contract_harness_catches_broken_stream():
    prove("broken_register_contract", StreamContract(BrokenStreamRegister()), expect="fail")
    prove("stream_register_contract", StreamContract(StreamRegister()))


@pytest.mark.parametrize("name, config", [("2x2", TINY), ("default", PRESETS["default"].pe)])
def test_dot_product_valid_not_combinational_on_ready(name, config):
    check_no_comb_path(f"dot_product_comb_{name}", DotProduct(config), "o__ready", "o__valid")


def test_comb_path_check_finds_a_path():
    # i.ready = ~o.valid | o.ready by design, so this path exists and must be found.
    with pytest.raises(FormalError, match="depends combinationally"):
        check_no_comb_path("dot_product_comb_i_ready", DotProduct(TINY), "o__ready", "i__ready")


@pytest.mark.skipif(smt_solver() is None, reason="no SMT solver (yices-smt2/z3/boolector) on PATH")
def test_dot_product_stream_contract_sby():
    """Cross-check of (a) with SymbiYosys (smtbmc k-induction) where an SMT solver exists."""
    run_sby("dot_product_contract_sby", StreamContract(DotProduct(TINY)), depth=6)


# --- (b) sign mask + weight select + multiply ---------------------------------

def test_sign_select_all_inputs_sat():
    # mask == sign(x) and w == (W+ if x >= 0 else W-), lane by lane, by SAT alone.
    miter = SignSelectMiter(SignMask(3, 8), WeightSelect(3, 8), 3, 8, 8, products=False)
    assert prove("sign_select_sat", miter, sequential=False).passed


@pytest.mark.parametrize("lanes", [1, 3])
def test_sign_select_multiply_all_inputs(lanes):
    # The product identity as well, after Yosys's sound rewrites (opt_share
    # turns mux(c, a*x, b*x) into mux(c, a, b)*x); see tb.formal.prove.
    miter = SignSelectMiter(SignMask(lanes, 8), WeightSelect(lanes, 8), lanes, 8, 8)
    assert prove(f"sign_select_miter_{lanes}", miter, sequential=False, simplify=True).passed


@pytest.mark.parametrize("simplify", [False, True])
def test_sign_select_miter_catches_lane_mixup(simplify):
    miter = SignSelectMiter(SignMask(3, 8), StandinWeightSelect(3, 8, bug=True), 3, 8, 8,
                            products=simplify)
    prove(f"sign_select_bug_{simplify}", miter, sequential=False, simplify=simplify, expect="fail")
