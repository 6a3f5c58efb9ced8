"""reward.kind=fn (and math): user reward functions in killable worker processes.

Calls run in `pebble.ProcessPool` workers, never on a thread of the reward actor, a chunk of
samples per process round trip (`reward.chunk_size`). The worker appends each sample's outcome
to a small progress file as it finishes, so that:
- a call past `timeout_s` (per sample, counted from that call's start) is ended by ending its
  worker (a watchdog thread in it; pebble's chunk timeout as the backstop); pebble starts a
  fresh one; no thread or CPU is leaked;
- a call that ends its process (`os._exit`, a segfault, the OOM killer) costs only that sample
  ("crash: ...");
- in both cases the chunk's finished samples keep their outcomes and its unstarted samples go
  to a new chunk: each sample is called exactly once;
- a `BaseException` (`SystemExit`, `KeyboardInterrupt`) is an error at once, not a timeout.
- a worker killed while idle (pebble then breaks the pool and fails the chunks queued on it)
  costs no sample: they are scored again on a fresh pool.
Workers run calls on their main thread, so libraries that time themselves out with signals
(math-verify) work. Each worker dies with the actor (PR_SET_PDEATHSIG), so a killed actor leaves
no worker behind.

This module stays light (no torch): a spawned worker imports only it and the user's module.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import itertools
import math
import multiprocessing
import os
import pickle
import shutil
import signal
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any

Outcome = tuple[Any, "str | None"]  # (value, None) or (None, error)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Worker initializer: the kernel SIGKILLs this worker when the reward actor dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the pool's own shutdown still stops workers
        pass


@functools.cache
def load_fn(fn: str, task_name: str) -> Callable[..., Any]:
    """The reward function named by `fn` ('task' or a dotted path), resolved in the worker."""
    if fn == "task":
        import rlhf.reward.math  # noqa: F401  (built-in math tasks score with math-verify)
        from rlhf.tasks import task_reward

        score = task_reward(task_name)
        return lambda prompt, completion, answer="", **fields: score(
            prompt, completion, answer, **fields
        )
    from rlhf.resolve import resolve_function

    return resolve_function(fn, key="reward.fn")


def describe(error: BaseException) -> str:
    return f"exception: {type(error).__name__}: {error}"[:200]


_LEN = struct.Struct("<I")
_TIMEOUT_EXIT = 124  # the code a worker ends with when its watchdog finds a call past timeout_s


def _write_record(fd: int, record: tuple[int, Any, str | None]) -> None:
    """Append one (index, value, error) record: length-prefixed pickle, one write() call."""
    try:
        data = pickle.dumps(record)
    except Exception:  # an unpicklable return value is a bad value, as a str would be
        data = pickle.dumps((record[0], None, f"bad type {type(record[1]).__name__}"))
    os.write(fd, _LEN.pack(len(data)) + data)


def _read_records(path: str) -> list[tuple[int, Any, str | None]]:
    """The complete records in `path`, in order (a record cut short by a dying worker is
    dropped: its sample counts as the one that was running)."""
    with open(path, "rb") as f:
        data = f.read()
    out, pos = [], 0
    while pos + _LEN.size <= len(data):
        (n,) = _LEN.unpack_from(data, pos)
        pos += _LEN.size
        if pos + n > len(data):
            break
        out.append(pickle.loads(data[pos : pos + n]))
        pos += n
    return out


def _score_chunk(
    fn: str, task_name: str, items: list[tuple[str, str, dict]], progress: str, timeout_s: float
) -> None:
    """Worker side: score `items` in order, appending each outcome to the file `progress` as
    it finishes, so that when this process dies the parent still knows what was scored and
    which call was running. An exception costs its own item only. A watchdog thread ends the
    process when one call runs past `timeout_s` (after recording "timeout" for it): the call
    is bounded per sample, as before chunking, not per chunk."""
    score = load_fn(fn, task_name)
    fd = os.open(progress, os.O_WRONLY | os.O_APPEND)
    lock = threading.Lock()
    current = [0, time.monotonic()]  # the running item and when it started
    finished = threading.Event()

    def watchdog() -> None:
        while True:
            with lock:
                i, started = current
                left = started + timeout_s - time.monotonic()
                if left <= 0:
                    _write_record(fd, (i, None, "timeout"))
                    os._exit(_TIMEOUT_EXIT)
            if finished.wait(left):
                return

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        for i, (prompt, completion, fields) in enumerate(items):
            try:
                record = (i, score(prompt, completion, **fields), None)
            except BaseException as e:  # SystemExit included: an error at once, not a timeout
                record = (i, None, describe(e))
            with lock:  # the record and the next deadline together: the watchdog sees both
                _write_record(fd, record)
                current[:] = [i + 1, time.monotonic()]
    finally:
        finished.set()
        os.close(fd)


PROGRESS_PREFIX = "rlhf-reward-"
MAX_POOL_BREAKS = 3  # per score() call: broken pools re-queued before samples are charged


def progress_dir(root: str | None = None) -> str:
    """A fresh folder for the progress files, in memory where possible (/dev/shm), named after
    this process (`rlhf-reward-<pid>-...`). Ray ends a reward actor without running its
    `close()` (at ray.shutdown, or a SIGKILL), so the folder outlives it: each new one first
    removes the folders of owners no longer alive (a run leaves at most its own last ones)."""
    if root is None:
        root = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    for name in os.listdir(root):
        owner = name.removeprefix(PROGRESS_PREFIX).split("-", 1)[0]
        if name.startswith(PROGRESS_PREFIX) and owner.isdigit() and not _alive(int(owner)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{PROGRESS_PREFIX}{os.getpid()}-", dir=root)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class FunctionScorer:
    """`score(samples)` -> one Outcome per sample. Samples go to the workers in chunks of up to
    `chunk_size` (and at most ceil(len / workers), so every worker gets some), one process
    round trip per chunk. Each call still has its own `timeout_s`; when a call hangs or ends its
    worker, that sample gets "timeout" / "crash: ...", the chunk's finished samples keep their
    outcomes, and its samples not yet started go to the pool again as a new chunk: every sample
    is called exactly once and a fault costs only the sample that caused it."""

    def __init__(
        self, fn: str, task_name: str, timeout_s: float, workers: int, chunk_size: int = 32
    ):
        self.fn, self.task_name, self.timeout_s = fn, task_name, timeout_s
        self.chunk_size = chunk_size
        # Import the function's module here, once: forked workers inherit it, so a worker's
        # first call does not spend its timeout importing (math-verify + sympy take ~1 s).
        load_fn(fn, task_name)
        self.workers = workers
        self._dir = progress_dir()
        self._files = itertools.count()
        self.pool = self._new_pool()

    def _new_pool(self):
        import pebble

        # fork: a replacement for a killed worker starts in milliseconds, and nothing re-runs
        # the actor's __main__ (spawn/forkserver would). The child only runs pebble's loop and
        # the user's function, never the actor's threads or Ray.
        return pebble.ProcessPool(
            max_workers=self.workers,
            initializer=_die_with_parent,
            context=multiprocessing.get_context("fork"),
        )

    def score(self, samples: list) -> list[Outcome]:
        items = [(s.prompt, s.response, {"answer": s.answer, **s.fields}) for s in samples]
        self._broken_pools: list = []  # pools that broke during this call; see _collect
        out: list[Outcome] = [(None, "crash: not scored")] * len(items)
        size = max(1, min(self.chunk_size, math.ceil(len(items) / self.workers)))
        queue = [list(range(j, min(j + size, len(items)))) for j in range(0, len(items), size)]
        inflight: dict[Any, tuple[list[int], str]] = {}
        while queue or inflight:
            while queue:
                try:
                    future, path = self._submit(items, queue[-1])
                except RuntimeError:
                    if inflight:  # the pool broke under running calls: let them end first
                        break
                    # pebble marks the whole pool broken when a worker dies outside a call
                    # (killed while idle, e.g. by the OOM killer): no sample was lost, so
                    # start a fresh pool and go on.
                    self.close_pool()
                    self.pool = self._new_pool()
                    continue
                inflight[future] = (queue.pop(), path)
            if not inflight:
                continue
            done, _ = concurrent.futures.wait(
                inflight, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in done:
                chunk, path = inflight.pop(future)
                rest = self._collect(future, chunk, path, out)
                if rest:
                    queue.append(rest)
        return out

    def _submit(self, items: list, chunk: list[int]) -> tuple[Any, str]:
        """Schedule one chunk; returns its future and its progress file."""
        path = os.path.join(self._dir, f"{next(self._files)}.rec")
        open(path, "wb").close()
        future = self.pool.schedule(
            _score_chunk,
            args=(
                self.fn,
                self.task_name,
                [items[i] for i in chunk],
                path,
                self.timeout_s,
            ),
            # A backstop only (a call stuck in C code holding the GIL starves the watchdog):
            # the chunk's calls together never need more than timeout_s each.
            timeout=self.timeout_s * (len(chunk) + 1),
        )
        return future, path

    def _collect(self, future, chunk: list[int], path: str, out: list[Outcome]) -> list[int]:
        """Fill `out` from a finished chunk; returns the chunk's samples that never started."""
        import pebble

        error, pool_broke = None, False
        try:
            future.result()
        except concurrent.futures.TimeoutError:
            error = "timeout"
        except pebble.ProcessExpired as e:
            error = f"crash: worker exited with code {e.exitcode}"
        except BrokenProcessPool as e:
            # A worker died outside any call (killed while idle) and pebble failed every
            # queued chunk with the pool: no sample caused it, so nothing is charged and the
            # unfinished samples go to a fresh pool -- unless pools keep breaking (a worker
            # that cannot even start), when the samples are charged as below so the call ends.
            if not any(p is self.pool for p in self._broken_pools):
                self._broken_pools.append(self.pool)  # one break fails all its chunks
            pool_broke = len(self._broken_pools) <= MAX_POOL_BREAKS
            error = None if pool_broke else describe(e)
        except BaseException as e:  # pebble could not run the call at all
            error = describe(e)
        records = _read_records(path)
        os.unlink(path)
        for i, value, err in records:
            out[chunk[i]] = (value, err)
        done = records[-1][0] + 1 if records else 0
        if done == len(chunk):
            return []
        if pool_broke:
            return chunk[done:]
        if records and records[-1][2] == "timeout":
            # Only the watchdog writes "timeout" (a function's errors read "exception: ..."):
            # it ended the worker on that call, so the rest never started.
            return chunk[done:]
        # The worker ended with no record for the running call: that call ended it (or hung
        # past the backstop, or pebble failed it).
        out[chunk[done]] = (None, error or "crash: worker ended without a result")
        return chunk[done + 1 :]

    def close_pool(self) -> None:
        self.pool.stop()
        self.pool.join(timeout=10)

    def close(self) -> None:
        self.close_pool()
        shutil.rmtree(self._dir, ignore_errors=True)
