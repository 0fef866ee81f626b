"""A non-editable install of the package runs ``psc demo`` from outside the checkout.

The package is installed with ``pip install --no-deps --target`` (the
dependencies are this environment's) from a copy of the sources, so
setuptools' own build directory does not land in the checkout; ``psc demo``
then runs with that directory first on ``PYTHONPATH`` and its working
directory outside the checkout, so nothing resolves through the source tree:
the core's cocotb bench (``psc.host.core_bench``) is a package module, and
the simulation models are package data.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# one worker installs the package for both tests
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("install")]

ROOT = Path(__file__).resolve().parents[1]


def _run(args, **kw):
    res = subprocess.run(args, capture_output=True, text=True, **kw)
    assert res.returncode == 0, (f"{' '.join(map(str, args))} exited with {res.returncode}\n"
                                 f"stdout:\n{res.stdout[-4000:]}\nstderr:\n{res.stderr[-4000:]}")
    return res.stdout


@pytest.fixture(scope="session")   # built once per worker (see test_core_sim.named)
def installed(tmp_path_factory):
    """``(site, env, cwd)``: the installed package's directory, an environment that
    imports it first, and a working directory outside the checkout."""
    work = tmp_path_factory.mktemp("install")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "gateware" / "psc", src / "gateware" / "psc",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    site = work / "site"
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
          str(src)])
    env = {k: v for k, v in os.environ.items()
           if k not in ("PSC_BUILD_DIR", "PSC_WAVES", "PYTHONPATH")}
    env["PYTHONPATH"] = str(site)
    env["HOME"] = str(work / "home")
    cwd = work / "elsewhere"
    cwd.mkdir()
    return site, env, cwd


def test_installed_package_is_the_one_imported(installed):
    site, env, cwd = installed
    out = _run([sys.executable, "-c",
                "import psc, psc.build_dir, psc.hw.ecp5_mul as m; print(psc.__file__); "
                "print(psc.build_dir.build_root()); print(len(m.mult18x18d_sim_model()))"],
               env=env, cwd=cwd).splitlines()
    psc_file = Path(out[0]).resolve()
    assert psc_file.is_relative_to(site.resolve()), psc_file
    assert not psc_file.is_relative_to(ROOT), psc_file
    # outside a checkout, builds go to the user's cache
    assert Path(out[1]) == Path(env["HOME"]).resolve() / ".cache" / "psc"
    assert int(out[2]) > 0
    assert (site / "psc" / "hw" / "sim_models" / "mult18x18d_sim.v").is_file()


@pytest.mark.soak   # many minutes (a Verilator build of the core from the installed package)
def test_installed_psc_demo_runs_outside_the_checkout(installed, tmp_path):
    site, env, cwd = installed
    if shutil.which("verilator", path=env.get("PATH")) is None:
        pytest.skip("verilator is not on PATH (run through scripts/env.sh)")
    env = dict(env, PSC_BUILD_DIR=str(tmp_path / "build"))
    out = _run([sys.executable, "-m", "psc.cli", "demo"],
               env=env, cwd=cwd)
    assert "core output == golden model, all" in out and ": True" in out, out
    assert (tmp_path / "build" / "core").is_dir()
    assert not any(p.is_relative_to(ROOT) for p in (site, cwd, tmp_path))
