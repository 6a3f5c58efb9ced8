"""reward.kind=fn (and math): user reward functions in killable worker processes.

A call runs in a `pebble.ProcessPool` worker, never on a thread of the reward actor, so that:
- a call past `timeout_s` is ended by killing its worker (pebble starts a fresh one); no thread
  or CPU is leaked;
- a call that ends its process (`os._exit`, a segfault, the OOM killer) costs only that sample
  ("crash: ...");
- a `BaseException` (`SystemExit`, `KeyboardInterrupt`) is an error at once, not a timeout.
Workers run calls on their main thread, so libraries that time themselves out with signals
(math-verify) work. Each worker dies with the actor (PR_SET_PDEATHSIG), so a killed actor leaves
no worker behind.

This module stays light (no torch): a spawned worker imports only it and the user's module.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import multiprocessing
import signal
from collections.abc import Callable
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


def _call(fn: str, task_name: str, prompt: str, completion: str, fields: dict[str, Any]) -> Any:
    return load_fn(fn, task_name)(prompt, completion, **fields)


def describe(error: BaseException) -> str:
    return f"exception: {type(error).__name__}: {error}"[:200]


class FunctionScorer:
    """`score(samples)` -> one Outcome per sample, each call in a worker with its own timeout."""

    def __init__(self, fn: str, task_name: str, timeout_s: float, workers: int):

        self.fn, self.task_name, self.timeout_s = fn, task_name, timeout_s
        # Import the function's module here, once: forked workers inherit it, so a worker's
        # first call does not spend its timeout importing (math-verify + sympy take ~1 s).
        load_fn(fn, task_name)
        self.workers = workers
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
        import pebble

        try:
            futures = self._schedule(samples)
        except RuntimeError:
            # pebble marks the whole pool broken when a worker dies outside a call (killed while
            # idle, e.g. by the OOM killer): no sample was lost, so start a fresh pool and go on.
            self.close()
            self.pool = self._new_pool()
            futures = self._schedule(samples)
        out: list[Outcome] = []
        for f in futures:
            try:
                out.append((f.result(), None))
            except concurrent.futures.TimeoutError:
                out.append((None, "timeout"))
            except pebble.ProcessExpired as e:
                out.append((None, f"crash: worker exited with code {e.exitcode}"))
            except BaseException as e:  # raised in the user's function, SystemExit included
                out.append((None, describe(e)))
        return out

    def _schedule(self, samples: list) -> list:
        return [
            self.pool.schedule(
                _call,
                args=(
                    self.fn,
                    self.task_name,
                    s.prompt,
                    s.response,
                    {"answer": s.answer, **s.fields},
                ),
                timeout=self.timeout_s,
            )
            for s in samples
        ]

    def close(self) -> None:
        self.pool.stop()
        self.pool.join(timeout=10)
