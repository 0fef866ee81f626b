# amaranth: UnusedElaboratable=no
"""psc.flow.explore (``psc explore``): spaces, the Pareto front, and sweeps of the tiling
build's core (Yosys, no place and route) on Dask: a two-worker local cluster with a cache hit
on the second run; opt-in (``-m soak``), a scheduler and two workers started as processes
and a worker killed in the middle of a sweep."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from dask_processes import scheduler_and_workers
from psc import cli
from psc.config import CoreConfig, PSCConfig
from psc.flow import explore
from psc.flow.executor import Executor
from psc.presets import PRESETS

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "test_explore"        # not /tmp: YoWASP cannot see it
# small shapes of the tiling build: four fit the UP5K, one needs more LUTs than it has, one
# combination the configuration refuses
SPACE = {"base": "tiny", "vary": {"shape": [[2, 2], [2, 4], [2, 3]], "requantizers": [1, 2]}}
STATUS = ["ok", "ok", "ok", "does not fit", "ok", "invalid"]
SWEPT = {"base": "tiny", "vary": {"shape": [[4, 4], [2, 4]], "tree_stages": [0, 1]}}


def _build_root(name):
    return str(BUILD / os.environ.get("PYTEST_XDIST_WORKER", "main") / name)


def test_space_files(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text('base = "tiny"\n[vary]\nshape = [[4, 4], [2, 4]]\ntree_stages = [0, 1]\n')
    jsn = tmp_path / "s.json"
    jsn.write_text(json.dumps(SWEPT))
    assert explore.load_space(toml) == explore.load_space(jsn) == SWEPT
    bad = [({"vary": {"lanes": 4}}, "vary.lanes must be a non-empty list"),
           ({"vary": {"colour": [1]}}, "unknown field 'colour'"),
           ({"base": "nope", "vary": {"lanes": [4]}}, "base must be one of"),
           ({"vary": {"shape": [4, 4]}}, r"vary.shape must be a list of \[lanes, rows\] pairs"),
           ({"vary": {}}, "vary must map fields")]
    for space, msg in bad:
        with pytest.raises(ValueError, match=msg):
            explore.check_space(space)
    broken = tmp_path / "b.toml"
    broken.write_text("[vary\n")
    with pytest.raises(ValueError, match="is not valid TOML"):
        explore.load_space(broken)


def test_space_points_and_config_line():
    points = explore.space_points("ice40-up5k", SPACE)
    assert len(points) == 6
    invalid = [(c, why) for c, why in points if isinstance(why, str)]
    # requantizers must divide rows: 2 does not divide 3
    assert invalid == [({"shape": [2, 3], "requantizers": 2}, invalid[0][1])]
    assert invalid[0][1].startswith("invalid: ") and "requantizers" in invalid[0][1]
    for _, cfg in points:
        if not isinstance(cfg, str):
            assert eval(explore.config_line(cfg), {"CoreConfig": CoreConfig,
                                                   "PSCConfig": PSCConfig}) == cfg
    for name, cc in PRESETS.items():
        assert eval(explore.config_line(cc), {"CoreConfig": CoreConfig,
                                              "PSCConfig": PSCConfig}) == cc, name


def test_pareto_front():
    pts = [{"lut4": 100, "inf_per_s": 10}, {"lut4": 200, "inf_per_s": 30},
           {"lut4": 150, "inf_per_s": 5}, {"lut4": 300, "inf_per_s": 30},
           {"lut4": 250, "inf_per_s": None}, {"lut4": 120, "inf_per_s": 25}]
    assert explore.pareto_front(pts) == [0, 5, 1]


def _sweep(executor, name):
    return explore.explore("ice40-up5k", space=SPACE, pnr=False, build_root=_build_root(name),
                           executor=executor)


def _status(result):
    return [p["status"].split(":")[0] for p in result["points"]]


def _figures(result):
    return [{k: p[k] for k in ("label", "status", "lut4", "ff", "bram", "mult", "cycles")}
            for p in result["points"]]


def test_sweep_on_two_workers_then_from_the_cache(tmp_path):
    with Executor(workers=2, cache=tmp_path / "cache", progress=False) as ex:
        first = _sweep(ex, "local")
        assert ex.n_workers == 2
    pts = first["points"]
    assert _status(first) == STATUS
    assert "needs 5388 lut4" in pts[3]["status"] or "lut4 with the harness" in pts[3]["status"]
    assert all(p["lut4"] and p["cycles"] and p["mult"] for p in pts[:5])
    assert not any(p["cached"] for p in pts)
    # more rows, more MACs per cycle, fewer cycles; a second requantiser costs LUTs
    assert pts[2]["cycles"] < pts[0]["cycles"]
    assert pts[1]["lut4"] > pts[0]["lut4"]
    with Executor(workers=2, cache=tmp_path / "cache", progress=False) as ex:
        second = _sweep(ex, "local")
        assert ex.summary().cached == 5 and ex.summary().computed == 5   # elaborations
    assert all(p["cached"] for p in second["points"][:5])
    assert _figures(second) == _figures(first)
    out = explore.write_outputs(first, tmp_path / "out")
    assert sorted(p.name for p in out) == ["explore.csv", "explore.json", "explore.md"]
    assert "| 0 | shape=2x2, requantizers=1 | ok |" in (tmp_path / "out" / "explore.md").read_text()


@pytest.mark.soak      # minutes; the executor's own tests cover processes in the default suite
def test_sweep_on_a_scheduler_and_workers_started_as_processes(tmp_path):
    """``dask scheduler`` and two ``dask worker`` processes on localhost: the local results."""
    with scheduler_and_workers(tmp_path, 2) as address:
        with Executor(address, 2, cache=tmp_path / "remote", progress=False) as ex:
            remote = _sweep(ex, "remote")
    with Executor(workers=2, cache=tmp_path / "local", progress=False) as ex:
        local = _sweep(ex, "local-2")
    assert _figures(remote) == _figures(local)


@pytest.mark.soak      # minutes; the executor's own tests kill a worker in the default suite
def test_sweep_survives_a_worker_killed_in_the_middle(tmp_path):
    """SIGKILL to a worker while the sweep's tool runs go on: every point still has its result
    (the lost task reruns on another worker, the cluster restarts the dead one)."""
    from distributed import Client, LocalCluster
    import logging
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
    killed = []
    try:
        with Client(cluster, set_as_default=False) as client:
            pids = list(client.run(os.getpid).values())

        def kill_one():
            time.sleep(8)       # the elaborations are done, Yosys runs
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
        killer = threading.Thread(target=kill_one)
        with Executor(cluster.scheduler_address, 2, cache=False, progress=False) as ex:
            killer.start()
            result = _sweep(ex, "killed")
        killer.join()
    finally:
        cluster.close()
    assert killed
    assert _status(result) == STATUS
    assert all(p["lut4"] for p in result["points"][:5])


def test_cli_explore_refuses_bad_input(capsys, tmp_path):
    assert cli.main(["explore", "--target", "ice40-up5k", "--network", "resnet"]) == 2
    assert "--network: must be one of digits or mbv2 or an .onnx file, not 'resnet'" in \
        capsys.readouterr().err
    space = tmp_path / "s.json"
    space.write_text(json.dumps({"vary": {"lanes": 4}}))
    assert cli.main(["explore", "--target", "ice40-up5k", "--space", str(space)]) == 2
    assert "vary.lanes must be a non-empty list" in capsys.readouterr().err
