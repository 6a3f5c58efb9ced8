"""Reward actors: score Samples in batches with the configured function.

A reward function is `fn(prompt, completion, **fields) -> float` (fields: `answer` plus any
other dataset columns), or 'task' for the built-in task's rule reward. A call that raises, runs
past `timeout_s`, or returns NaN/a non-number gives `fallback` for that sample, is recorded in
`sample.info["reward_error"]`, and never stops the run. Calls run on daemon threads so that a
hung call can be abandoned; code that must not be trusted belongs in a sandboxed process, not
here.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from typing import Any, Callable

from rlhf.batch import Sample
from rlhf.config import RewardConfig, resolve_function
from rlhf.placement import Slot, shard, spawn

RewardFn = Callable[..., float]


def load_reward_fn(cfg: RewardConfig, task_name: str) -> RewardFn:
    if cfg.fn == "task":
        from rlhf.tasks import task_reward

        score = task_reward(task_name)
        return lambda prompt, completion, answer="", **_: score(prompt, completion, answer)
    return resolve_function(cfg.fn, key="reward.fn")


class RewardActor:
    def __init__(self, cfg: RewardConfig, task_name: str):
        self.cfg = cfg
        self.fn = load_reward_fn(cfg, task_name)

    def score(self, samples: list[Sample]) -> list[Sample]:
        calls = [lambda s=s: self.fn(s.prompt, s.response, answer=s.answer, **s.fields)
                 for s in samples]
        for s, (value, error) in zip(samples, call_with_timeouts(calls, self.cfg.timeout_s,
                                                                 self.cfg.threads)):
            if error is None and not _is_number(value):
                error = "nan" if isinstance(value, float) else f"bad type {type(value).__name__}"
            if error is None:
                s.reward = float(value)
            else:
                s.reward = self.cfg.fallback
                s.info["reward_error"] = error
        return samples


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def call_with_timeouts(calls: list[Callable[[], Any]], timeout_s: float, threads: int
                       ) -> list[tuple[Any, str | None]]:
    """Run calls on up to `threads` daemon threads. Each result is (value, None) or
    (None, 'timeout' | 'exception: ...'). A call past its timeout is abandoned (Python cannot
    kill a thread) and a fresh thread takes its place, so one hang never starves the rest."""
    n = len(calls)
    results: list[tuple[Any, str | None] | None] = [None] * n
    started: dict[int, float] = {}
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in range(n):
        todo.put(i)
    lock = threading.Lock()

    def work():
        while True:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            with lock:
                started[i] = time.monotonic()
            try:
                out = (calls[i](), None)
            except Exception as e:  # the user's function failed: counted, not fatal
                out = (None, f"exception: {type(e).__name__}: {e}"[:200])
            with lock:
                if results[i] is None:
                    results[i] = out

    def start_thread():
        threading.Thread(target=work, daemon=True).start()

    for _ in range(min(threads, n)):
        start_thread()
    while True:
        with lock:
            now = time.monotonic()
            expired = [i for i, t0 in started.items() if results[i] is None and now - t0 > timeout_s]
            for i in expired:
                results[i] = (None, "timeout")
            done = all(r is not None for r in results)
        for _ in expired:
            start_thread()  # replaces the thread stuck in the abandoned call
        if done:
            return results  # type: ignore[return-value]
        time.sleep(0.002)


class RewardGroup:
    """The reward actors; `score` spreads samples over them and returns ObjectRefs."""

    def __init__(self, cfg: RewardConfig, task_name: str, slots: list[Slot],
                 runtime_env: dict | None = None):
        self.actors = spawn(RewardActor, slots, lambda i: ((cfg, task_name), {}), runtime_env)

    def score(self, samples: list[Sample]) -> list[Any]:
        return [a.score.remote(part) for a, part in zip(self.actors, shard(samples, len(self.actors)))
                if part]


def reward_metrics(samples: list[Sample]) -> dict[str, float]:
    """reward/mean, std, error counts, and the share of groups whose rewards are all equal
    (such groups carry no learning signal under group-relative advantages)."""
    rewards = [s.reward for s in samples]
    mean = sum(rewards) / len(rewards)
    groups: dict[int, set[float]] = {}
    for s in samples:
        groups.setdefault(s.group_id, set()).add(s.reward)
    errors = [s.info.get("reward_error", "") for s in samples]
    return {
        "reward/mean": mean,
        "reward/std": (sum((r - mean) ** 2 for r in rewards) / len(rewards)) ** 0.5,
        "reward/all_equal_group_frac": sum(len(v) == 1 for v in groups.values()) / len(groups),
        "reward/errors": float(sum(e.startswith("exception") or e.startswith("bad") for e in errors)),
        "reward/timeouts": float(sum(e == "timeout" for e in errors)),
        "reward/nans": float(sum(e == "nan" for e in errors)),
    }
