"""Random soak of PSCConvCore against psc.model.golden, on both simulators (psc.flow.soak).

Random layer kinds, kernels, strides, paddings, channel counts (up to
reductions many times longer than one command holds, which the scheduler
splits) and sizes, with random stalls on every stream, on the ``tiny``
preset (small buffers: every layer is tiled) and on both synthesis targets'
cores. Every drawn layer is one the API promises to run: a refusal fails the
test. The default suite runs one small batch per build and simulator;
``psc soak`` (``scripts/soak.sh``) runs long ones on the executor.
``PSC_SOAK_LAYERS`` (default 2) sets the layers per build and simulator,
``PSC_SOAK_SEED`` (default 1) the seed and ``PSC_SOAK_MAX_CYCLES`` (default
4000) the largest layer drawn, in ideal cycles of the build's array. A
failure names the seed, build, batch and layer, so it can be replayed.
"""

import os

import numpy as np
import pytest

from psc.flow import soak
from psc.flow.executor import Executor


def _env_int(name, default, lo):
    text = os.environ.get(name, str(default))
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, not {text!r}")
    return value


@pytest.mark.parametrize("build", soak.BUILDS)
@pytest.mark.parametrize("target", soak.SIMULATORS)
def test_random_layers(build, target):
    n = _env_int("PSC_SOAK_LAYERS", 2, 1)
    seed = _env_int("PSC_SOAK_SEED", 1, 0)
    budget = _env_int("PSC_SOAK_MAX_CYCLES", 4000, 1)
    print(f"soak: seed {seed}, build {build}, {target}, {n} layers")
    res = soak.soak_batch(build, target, seed, n, budget)
    assert not res["failures"], "\n".join(res["failures"])


def test_a_broken_golden_output_fails_the_soak(monkeypatch):
    """The soak compares every output: a golden model off by one in one place is caught."""
    real = soak.golden_output

    def off_by_one(layer, act_width=8):
        y = real(layer, act_width).copy()
        y.flat[0] += 1
        return y
    monkeypatch.setattr(soak, "golden_output", off_by_one)
    res = soak.soak_batch("tiny", "verilator", 1, 1, 500)
    assert len(res["failures"]) == 1 and "outputs differ; first at (0, 0, 0)" in \
        res["failures"][0] and "seed 1, build tiny, verilator, batch 0" in res["failures"][0]


def test_soak_on_the_executor_in_batches(tmp_path):
    """Batches on two workers: the same layers and results as one after the other."""
    with Executor(workers=2, cache=False, progress=False) as ex:
        parallel = soak.soak(3, 5, 300, builds=("tiny",), simulators=("verilator",),
                             per_task=2, executor=ex)
    serial = soak.soak(3, 5, 300, builds=("tiny",), simulators=("verilator",), per_task=2)
    assert parallel == serial
    assert [(r["batch"], r["layers"]) for r in serial] == [(0, 2), (1, 1)]
    assert not any(r["failures"] for r in serial)
    assert "3 layers, seed 5: all bit-exact" in soak.format_soak(serial)
    with pytest.raises(ValueError, match="builds must be one of"):
        soak.soak(1, 1, 100, builds=("huge",))
    # a batch is drawn from (seed, build, batch) alone
    a = soak.draw("tiny", 5, 2, 300, batch=1)
    b = soak.draw("tiny", 5, 2, 300, batch=1)
    assert [p for p, _ in a] == [p for p, _ in b]
    assert all(np.array_equal(x["x"], y["x"]) for (_, x), (_, y) in zip(a, b))
