"""A Dask scheduler and workers started as separate processes with Dask's own commands."""

import contextlib
import json
import subprocess
import sys
import time


def _dask(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "distributed.cli." + args[0], *args[1:]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)


@contextlib.contextmanager
def scheduler_and_workers(tmp_path, workers=2, env=None):
    """``dask scheduler`` and ``workers`` ``dask worker`` processes on localhost; yields the
    scheduler's address, stops them all on exit."""
    file = tmp_path / "scheduler.json"
    procs = [_dask("dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                   "--scheduler-file", str(file), env=env)]
    try:
        deadline = time.monotonic() + 60
        while not file.exists() or not file.read_text().strip():
            assert procs[0].poll() is None, procs[0].stderr.read()
            assert time.monotonic() < deadline, "the scheduler wrote no address"
            time.sleep(0.2)
        address = json.loads(file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        for _ in range(workers):
            procs.append(_dask("dask_worker", address, "--nthreads", "1", "--no-dashboard",
                               "--host", "127.0.0.1", "--death-timeout", "30", env=env))
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
